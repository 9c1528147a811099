import type { HostFs } from '@berth/host';
import { blockName, readTrimmed } from './sysfs-read.js';

// The kernel's wwid prefix → the designator type digit udev's scsi_id puts first (os-brick's table).
const WWN_TYPES: Readonly<Record<string, string>> = { 't10.': '1', 'eui.': '2', 'naa.': '3' };

/** The kernel's wwid of a SCSI disk (`naa.6…`), from `/sys/block/sdX/device/wwid`; `undefined` when none. */
export async function readWwid(fs: HostFs, device: string): Promise<string | undefined> {
  return readTrimmed(fs, `/sys/block/${blockName(device)}/device/wwid`);
}

/**
 * os-brick's scsi_wwn from a kernel wwid: the 4-character prefix becomes udev's type digit
 * (`naa.` → `3`, `eui.` → `2`, `t10.` → `1`, anything else → `8`), so `naa.6000…0001` gives
 * `36000…0001`, the name of the `/dev/disk/by-id/scsi-…` link and of the multipath map.
 */
export function scsiWwnFromWwid(wwid: string): string {
  const value = wwid.trim();
  return (WWN_TYPES[value.slice(0, 4)] ?? '8') + value.slice(4);
}

/** The scsi_wwn of the first of `devices` that has a wwid (os-brick's get_sysfs_wwid); `undefined` when none has. */
export async function readScsiWwn(fs: HostFs, devices: readonly string[]): Promise<string | undefined> {
  for (const device of devices) {
    const wwid = await readWwid(fs, device);
    if (wwid !== undefined) return scsiWwnFromWwid(wwid);
  }
  return undefined;
}
