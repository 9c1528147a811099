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
# The benchmarks measure device throughput with fio.
have fio || need+=(fio)
# What the iSCSI suites use (real target, user-space initiator, qemu-storage-daemon).
if [ "${BERTH_SKIP_ISCSI_DEPS:-}" != 1 ]; then
  have tgtd || need+=(tgt)
  have iscsi-ls || need+=(libiscsi-bin)
  have qemu-storage-daemon || need+=(qemu-system-common qemu-block-extra)
  # An unmodified os-brick is run against the simulated host to prove its layout is the kernel's.
  [ -e /usr/lib/python3/dist-packages/os_brick/initiator/connectors/iscsi.py ] || need+=(python3-os-brick)
  have unshare || need+=(util-linux)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# tgt's package starts a tgtd on 0.0.0.0:3260 where an init system runs; berth supervises its own.
