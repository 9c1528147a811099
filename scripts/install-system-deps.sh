#!/usr/bin/env bash
# Installs the Debian packages berth's tests use, only when something is missing.
# Needs root (apt-get). Never asks a question.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have losetup || need+=(mount)
have blockdev || need+=(util-linux)
# The simulated host's fake tools are a small C client compiled at build time (@berth/simhost).
have cc || need+=(gcc libc6-dev)
# The PostgreSQL store's tests start throwaway clusters (initdb + pg_ctl as the postgres user via
# runuser). Debian keeps the server programs in /usr/lib/postgresql/<major>/bin, off PATH.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
have runuser || need+=(util-linux)
# The benchmarks measure device throughput with fio.
have fio || need+=(fio)
# The many-hosts suites make a network namespace per host (ip netns, veth, a bridge) and enter it with nsenter.
have ip || need+=(iproute2)
have nsenter || need+=(util-linux)
# What the iSCSI suites use (real target, user-space initiator, qemu-storage-daemon).
if [ "${BERTH_SKIP_ISCSI_DEPS:-}" != 1 ]; then
  have tgtd || need+=(tgt)
  have iscsi-ls || need+=(libiscsi-bin)
  have qemu-storage-daemon || need+=(qemu-system-common qemu-block-extra)
  # An unmodified os-brick is run against the simulated host to prove its layout is the kernel's.
  [ -e /usr/lib/python3/dist-packages/os_brick/initiator/connectors/iscsi.py ] || need+=(python3-os-brick)
  have unshare || need+=(util-linux)
fi

# What the guest suites use (@berth/vmkit, consumer-qemu, consumer-libvirt): a real VM under QEMU
# TCG booting the Debian kernel with a busybox initramfs, plain and under libvirt.
if [ "${BERTH_SKIP_GUEST_DEPS:-}" != 1 ]; then
  have qemu-system-x86_64 || need+=(qemu-system-x86)
  ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
  # A dynamically linked busybox (package busybox) cannot run alone in an initramfs.
  dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
  have xz || need+=(xz-utils)
  have libvirtd || need+=(libvirt-daemon-system libvirt-daemon-driver-qemu)
  have virsh || need+=(libvirt-clients)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# tgt's package starts a tgtd on 0.0.0.0:3260 where an init system runs; berth supervises its own.
