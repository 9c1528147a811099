/** The name of the virtio-serial port the guest agent listens on. */
export const AGENT_PORT_NAME = 'org.berth.agent';

/** What `/init` prints on the serial console once the agent is about to listen. */
export const READY_MARKER = 'BERTH-GUEST-READY';

/**
 * The guest's `/init` (busybox ash): mount the pseudo filesystems, insmod the virtio modules in
 * dependency order, find the agent's port by name, and run the agent forever. init must never
 * exit (the kernel panics), so the agent runs as a child and is restarted when it ends — which is
 * also what happens when the host closes the channel (reads then return end-of-file).
 */
export function initScript(modules: readonly string[]): string {
  return `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in ${modules.join(' ')}; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
# Keep kernel messages off the console: it is the boot log, not a channel.
dmesg -n 1
port=
for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name 2>/dev/null)" = ${AGENT_PORT_NAME} ] && port=/dev/\${p##*/}; done
echo ${READY_MARKER} $port
[ -n "$port" ] || { echo "no virtio port named ${AGENT_PORT_NAME}"; exec sh; }
while :; do /bin/sh /agent "$port"; sleep 0.2; done
`;
}

/**
 * The agent (busybox ash). Protocol, one line each way: the host sends `<id> <command>`; the
 * agent answers `@@<id> begin`, the command's output, then `@@<id> end <exit code>`. Commands run
 * in the agent's own shell so the framing costs no process (a fork is ~60 ms under TCG); the
 * helpers below use builtins only, so polling /sys/block is cheap. `nap` sleeps without a process:
 * a read with a timeout on a FIFO nobody writes.
 */
export const AGENT_SCRIPT = `exec 3<>"$1"
[ -p /tmp/.nap ] || mkfifo /tmp/.nap
exec 4<>/tmp/.nap
nap() { read -t "$1" -u 4 _ ; }
disks() {
  for d in /sys/block/vd*; do
    [ -e "$d/serial" ] || continue
    read -r s < "$d/serial"; read -r n < "$d/size"; read -r r < "$d/ro"
    echo "\${d##*/}|$s|$n|$r"
  done
}
devof() {
  for d in /sys/block/vd*; do
    [ -e "$d/serial" ] || continue
    read -r s < "$d/serial"
    [ "$s" = "$1" ] && { echo "\${d##*/}"; return 0; }
  done
  return 1
}
# A while loop's status is its body's last one (nap's timeout): say success explicitly.
waitdisk() { i=0; while ! devof "$1"; do i=$((i+1)); [ $i -gt "$2" ] && return 1; nap 0.005; done; return 0; }
waitgone() { i=0; while devof "$1" >/dev/null; do i=$((i+1)); [ $i -gt "$2" ] && return 1; nap 0.005; done; return 0; }
writeat() { d=$(devof "$1") || return 2; printf '%s' "$3" | dd of=/dev/$d bs=1 seek="$2" conv=notrunc,fsync 2>/dev/null; }
readat() { d=$(devof "$1") || return 2; dd if=/dev/$d bs=1 skip="$2" count="$3" 2>/dev/null; }
while read -r id cmd <&3; do
  echo "@@$id begin" >&3
  eval "$cmd" >&3 2>&1 </dev/null
  echo "@@$id end $?" >&3
done
`;
