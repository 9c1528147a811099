import { z } from '@berth/core/zod';
import { BerthError, lazySchema, type Device, type DeviceIdentity } from '@berth/core';
import type { HostFs } from '@berth/host';
import { dmUuid } from './dm-sysfs.js';
import { formatHctl, scsiDeviceOf, type ScsiDeviceRead } from './scsi-sysfs.js';
import { blockName } from './sysfs-read.js';
import { readWwid, scsiWwnFromWwid } from './wwid.js';

/** An iSCSI disk's identity: the session it came through, its SCSI address and the LUN's WWN. */
export const zScsiIdentity = lazySchema(() => z.object({
  kind: z.literal('scsi'),
  sessionId: z.number().int().nonnegative(),
  hctl: z.string(),
  wwn: z.string().optional(),
}));

/** A multipath map's identity: its dm uuid (`mpath-<wwid>`) and the volume's WWN. */
export const zDmIdentity = lazySchema(() => z.object({
  kind: z.literal('dm'),
  uuid: z.string(),
  wwn: z.string().optional(),
}));

/** The identity of an iSCSI disk (`kind: 'scsi'`). */
export type ScsiIdentity = z.output<typeof zScsiIdentity>;

/** The identity of a multipath map (`kind: 'dm'`). */
export type DmIdentity = z.output<typeof zDmIdentity>;

/**
 * The identity of an iSCSI disk or map as sysfs shows it now; `undefined` when nothing is there.
 * `read` is how a disk's SCSI device is read (a `scsiDeviceReader` shared within one call).
 */
export async function identityAt(fs: HostFs, name: string, read: ScsiDeviceRead = (n) => scsiDeviceOf(fs, n)): Promise<ScsiIdentity | DmIdentity | undefined> {
  const block = blockName(name);
  if (/^dm-\d+$/.test(block)) {
    const uuid = await dmUuid(fs, block);
    if (uuid === undefined) return undefined;
    return { kind: 'dm', uuid, ...(uuid.startsWith('mpath-') ? { wwn: uuid.slice('mpath-'.length) } : {}) };
  }
  const sd = await read(block).catch(() => undefined);
  if (sd?.sid === undefined) {
    // A disk that is there but is no iSCSI disk (or not readable): something, but not ours.
    return (await fs.exists(`/sys/block/${block}`)) ? { kind: 'scsi', sessionId: 0, hctl: sd === undefined ? '?' : formatHctl(sd.hctl) } : undefined;
  }
  const wwid = await readWwid(fs, block);
  return { kind: 'scsi', sessionId: sd.sid, hctl: formatHctl(sd.hctl), ...(wwid === undefined ? {} : { wwn: scsiWwnFromWwid(wwid) }) };
}

/** The identity of a disk found in sysfs, as `connect` records it. */
export function scsiIdentity(sid: number, hctl: string, wwn: string | undefined): ScsiIdentity {
  return { kind: 'scsi', sessionId: sid, hctl, ...(wwn === undefined ? {} : { wwn }) };
}

/** Whether `now` is the very device `recorded` describes (every fact recorded must agree). */
export function sameIdentity(recorded: DeviceIdentity, now: ScsiIdentity | DmIdentity): boolean {
  if (recorded['kind'] !== now.kind) return false;
  for (const [key, value] of Object.entries(now)) {
    const was = recorded[key];
    if (was !== undefined && was !== value) return false;
  }
  return true;
}

/** What is at a device's path now, against the identity it was handed out with. */
export type IdentityCheck =
  /** The device recorded no identity (an older record, a hand-made device): the caller's lookup rules apply. */
  | { status: 'unknown' }
  /** Nothing is at the path: the device is gone. */
  | { status: 'gone' }
  /** The path still names that very device. */
  | { status: 'same'; now: ScsiIdentity | DmIdentity };

/**
 * Compare what is at `device.path` with `device.identity`. Throws a CONFLICT BerthError with
 * `details.reason = 'identity-mismatch'` when the kernel gave the name to another device (a reused
 * sdX or dm-N): the caller must touch nothing.
 */
export async function checkIdentity(
  fs: HostFs,
  device: Device,
  what: string,
  read: (name: string) => Promise<ScsiIdentity | DmIdentity | undefined> = (name) => identityAt(fs, name),
): Promise<IdentityCheck> {
  if (device.identity === undefined) return { status: 'unknown' };
  const name = device.path.startsWith('/dev/') ? device.path.slice('/dev/'.length) : device.path;
  if (!/^[A-Za-z0-9][A-Za-z0-9_:.+-]*$/.test(name)) return { status: 'gone' };
  const now = await read(name);
  if (now === undefined) return { status: 'gone' };
  if (sameIdentity(device.identity, now)) return { status: 'same', now };
  throw new BerthError('CONFLICT', `${what}: ${device.path} is now another device (${describeIdentity(now)}, not ${describeIdentity(device.identity)}): the kernel reused the name, so nothing was touched`, {
    hint: 'the volume\'s own device is gone (deleted or logged out behind berth\'s back); run `berth reconcile` to see what is connected, and detach with --force once you checked nothing else uses this name',
    details: { reason: 'identity-mismatch', device: device.path, expected: device.identity, found: now },
  });
}

/**
 * Whether a disk or map in `inUse` (another attachment's device) is this one: the same identity,
 * or the same name — unless both sides' WWNs are known and differ. A record of another volume
 * naming `name` with another LUN's WWN is that volume's lost disk, whose name the kernel gave to
 * this one: keeping this device for it would leave it, its map and its session behind a detach
 * that says it is done. The same WWN at another SCSI address (a session logged in again by hand)
 * still counts: it may be the same LUN's data.
 */
export function inUseBy(inUse: readonly Device[] | undefined, name: string, identity?: ScsiIdentity | DmIdentity): boolean {
  for (const other of inUse ?? []) {
    if (identity !== undefined && other.identity !== undefined && sameIdentity(other.identity, identity)) return true;
    if (other.path !== `/dev/${blockName(name)}`) continue;
    const recordedWwn = other.identity?.['wwn'];
    if (typeof recordedWwn === 'string' && identity?.wwn !== undefined && recordedWwn !== identity.wwn) continue;
    return true;
  }
  return false;
}

function describeIdentity(identity: DeviceIdentity): string {
  if (identity['kind'] === 'dm') return `map ${String(identity['uuid'])}`;
  return `session ${String(identity['sessionId'])}, ${String(identity['hctl'])}${identity['wwn'] === undefined ? '' : `, WWN ${String(identity['wwn'])}`}`;
}
