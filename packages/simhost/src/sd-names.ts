/** Block device naming of the sd driver (drivers/scsi/sd.c): names and device numbers. */

/** The name of sd disk `index`: sda … sdz, sdaa … (bijective base 26). */
export function sdName(index: number): string {
  let n = index;
  let suffix = '';
  do {
    suffix = String.fromCharCode(97 + (n % 26)) + suffix;
    n = Math.floor(n / 26) - 1;
  } while (n >= 0);
  return `sd${suffix}`;
}

/** `MAJOR:MINOR` of sd disk `index`: 8:16·i for the first 16, then majors 65–71 and 128–135. */
export function sdDevT(index: number): string {
  const majorIndex = (index >> 4) & 0xf;
  const major = majorIndex === 0 ? 8 : majorIndex < 8 ? 64 + majorIndex : 128 + majorIndex - 8;
  const minor = ((index & 0xf) << 4) | ((index & 0xfff00) << 12);
  return `${major}:${minor}`;
}

/** The kernel LUN of target LUN `lun` as tgtd reports it (flat addressing from 256: 16384 + n). */
export function kernelLunOf(targetLun: number): number {
  return targetLun >= 256 ? 16384 + targetLun : targetLun;
}

/** The target LUN of kernel LUN `lun`, or undefined when no tgtd LUN maps to it. */
export function targetLunOf(kernelLun: number): number | undefined {
  if (kernelLun < 256) return kernelLun;
  if (kernelLun >= 16384 + 256 && kernelLun < 16384 + 16384) return kernelLun - 16384;
  return undefined;
}

/** udev path_id's LUN text: the number below 256, else `0x%04x%04x00000000`. */
export function byPathLunText(kernelLun: number): string {
  if (kernelLun < 256) return String(kernelLun);
  const h = (n: number): string => n.toString(16).padStart(4, '0');
  return `0x${h(kernelLun & 0xffff)}${h((kernelLun >>> 16) & 0xffff)}00000000`;
}
