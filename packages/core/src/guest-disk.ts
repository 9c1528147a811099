/**
 * The guest's likely name for its n-th virtio disk (0 → `/dev/vda`, 25 → `/dev/vdz`, 26 →
 * `/dev/vdaa`), as Linux names them. Only a hint, like Nova's `mountpoint`: the guest names disks
 * in the order it probes them; the serial (the volume id) is what it can trust.
 */
export function virtioDiskName(index: number): string {
  let suffix = '';
  let n = index;
  do {
    suffix = String.fromCharCode(97 + (n % 26)) + suffix;
    n = Math.floor(n / 26) - 1;
  } while (n >= 0);
  return `/dev/vd${suffix}`;
}
