import type { HostFs } from '@berth/host';
import { blockName, readTrimmed } from './sysfs-read.js';

const DM = /^dm-\d+$/;

/** The device-mapper devices holding a disk (`/sys/block/sdX/holders/dm-N`), sorted. */
export async function holdersOf(fs: HostFs, device: string): Promise<string[]> {
  const entries = await fs.readdir(`/sys/block/${blockName(device)}/holders`);
  return entries.filter((e) => DM.test(e)).sort(byNumber);
}

/** The devices under a dm device (`/sys/block/dm-N/slaves/*`), sorted. */
export async function slavesOf(fs: HostFs, dm: string): Promise<string[]> {
  return (await fs.readdir(`/sys/block/${blockName(dm)}/slaves`)).sort();
}

/** A dm device's name (`/sys/block/dm-N/dm/name`; the wwid for multipath maps by default). */
export async function dmName(fs: HostFs, dm: string): Promise<string | undefined> {
  return readTrimmed(fs, `/sys/block/${blockName(dm)}/dm/name`);
}

/** A dm device's uuid (`/sys/block/dm-N/dm/uuid`; `mpath-<wwid>` for multipath maps). */
export async function dmUuid(fs: HostFs, dm: string): Promise<string | undefined> {
  return readTrimmed(fs, `/sys/block/${blockName(dm)}/dm/uuid`);
}

/** The multipath id (wwid) of a dm device: its uuid without `mpath-`; `undefined` when it is no multipath map. */
export async function multipathIdOf(fs: HostFs, dm: string): Promise<string | undefined> {
  const uuid = await dmUuid(fs, dm);
  return uuid !== undefined && uuid.startsWith('mpath-') && uuid.length > 6 ? uuid.slice(6) : undefined;
}

/** The first dm device holding any of `devices` (os-brick's find_sysfs_multipath_dm); `undefined` when none. */
export async function findHoldingDm(fs: HostFs, devices: readonly string[]): Promise<string | undefined> {
  for (const device of devices) {
    const [dm] = await holdersOf(fs, device);
    if (dm !== undefined) return dm;
  }
  return undefined;
}

function byNumber(a: string, b: string): number {
  return Number(a.slice(3)) - Number(b.slice(3));
}
