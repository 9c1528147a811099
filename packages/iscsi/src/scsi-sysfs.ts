import { BerthError } from '@berth/core';
import type { HostFs } from '@berth/host';
import { sessionHostNumber } from './iscsi-sysfs.js';
import { blockName, checkIndex, realpathIfExists } from './sysfs-read.js';

/** A SCSI address: host, channel, target id, LUN (the kernel's `H:C:T:L`). */
export interface Hctl {
  host: number;
  channel: number;
  target: number;
  lun: number;
}

/** What a scan writes for channel and target: a number, or `-` for "any". */
export type ScanField = number | '-';

/** The scan that was requested: `scan` got `"<channel> <target> <lun>"`. */
export interface LunScan {
  host: number;
  channel: ScanField;
  target: ScanField;
  lun: number;
}

/** A LUN of a session, with its block device when it has one (tgtd's LUN 0 never does). */
export interface SessionLun {
  hctl: Hctl;
  /** The block device name (`sdb`), `undefined` while it has none. */
  device: string | undefined;
}

/** A SCSI disk found from its block device. */
export interface ScsiDevice {
  /** The block device name (`sdb`). */
  name: string;
  hctl: Hctl;
  /** The iSCSI session it belongs to; `undefined` for a SCSI disk that is not iSCSI. */
  sid: number | undefined;
  /** Its SCSI device directory (`/sys/devices/…/H:C:T:L`), where `/sys/block/<name>/device` led. */
  dir: string;
}

/** How a caller reads `scsiDeviceOf` (one call may share one reading per disk: `scsiDeviceReader`). */
export type ScsiDeviceRead = (name: string) => Promise<ScsiDevice | undefined>;

const HCTL = /^(\d+):(\d+):(\d+):(\d+)$/;
const TARGET_DIR = /^target(\d+):(\d+):(\d+)$/;

/** Parse `H:C:T:L`; `undefined` when the text is not one. */
export function parseHctl(text: string): Hctl | undefined {
  const match = HCTL.exec(text.trim());
  if (!match) return undefined;
  return { host: Number(match[1]), channel: Number(match[2]), target: Number(match[3]), lun: Number(match[4]) };
}

/** `H:C:T:L`. */
export function formatHctl(hctl: Hctl): string {
  return `${hctl.host}:${hctl.channel}:${hctl.target}:${hctl.lun}`;
}

/** The directory of session `sid` under its SCSI host, the way os-brick reaches it. */
function sessionDevicePath(host: number, sid: number): string {
  return `/sys/class/scsi_host/host${host}/device/session${sid}`;
}

/** The `targetH:C:T` directories of a session (present once a first scan found something). */
export async function sessionScsiTargets(fs: HostFs, host: number, sid: number): Promise<Array<{ host: number; channel: number; target: number }>> {
  checkIndex(host, 'SCSI host');
  checkIndex(sid, 'session id');
  const out: Array<{ host: number; channel: number; target: number }> = [];
  for (const entry of await fs.readdir(sessionDevicePath(host, sid))) {
    const match = TARGET_DIR.exec(entry);
    if (match && Number(match[1]) === host) out.push({ host, channel: Number(match[2]), target: Number(match[3]) });
  }
  return out.sort((a, b) => a.channel - b.channel || a.target - b.target);
}

/**
 * Ask the kernel to probe one LUN of session `sid`: write `C T L` to
 * `/sys/class/scsi_host/hostH/scan`, with the session's channel and target id once its
 * `targetH:C:T` directory exists and `- -` before (as os-brick does). `host` is looked up when not
 * given. Returns what was written; throws when the session (or its host) is gone.
 */
export async function scanLun(fs: HostFs, sid: number, lun: number, options: { host?: number } = {}): Promise<LunScan> {
  checkIndex(sid, 'session id');
  checkIndex(lun, 'LUN');
  const host = options.host ?? (await sessionHostNumber(fs, sid));
  if (host === undefined) {
    throw new BerthError('NOT_FOUND', `iSCSI session ${sid} has no SCSI host in sysfs: the session is gone`, {
      hint: 'the session ended (logout or lost connection): log in again',
      details: { sid },
    });
  }
  checkIndex(host, 'SCSI host');
  const [first] = await sessionScsiTargets(fs, host, sid);
  const scan: LunScan = first === undefined ? { host, channel: '-', target: '-', lun } : { host, channel: first.channel, target: first.target, lun };
  await fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, `${scan.channel} ${scan.target} ${scan.lun}`);
  return scan;
}

async function firstBlockDevice(fs: HostFs, lunDir: string): Promise<string | undefined> {
  // Sorted, and the first taken, as os-brick does: partitions never sit directly under block/.
  const [first] = (await fs.readdir(`${lunDir}/block`)).sort();
  return first;
}

/**
 * The block device (`sdb`) of LUN `lun` of session `sid` on SCSI host `host`, from
 * `/sys/class/scsi_host/hostH/device/session<S>/targetH:C:T/H:C:T:L/block/*`; `channel`/`target`
 * may be `-` (any). `undefined` until the kernel has made it: a probe for a device wait.
 */
export async function findBlockDeviceByHctl(
  fs: HostFs,
  sid: number,
  address: { host: number; channel: ScanField; target: ScanField; lun: number },
): Promise<string | undefined> {
  return (await findLunByHctl(fs, sid, address))?.device;
}

/**
 * `findBlockDeviceByHctl` with the full SCSI address the disk was found under and that address's
 * directory as the session reaches it (through `/sys/class/scsi_host`: `realpath` it to compare).
 */
export async function findLunByHctl(
  fs: HostFs,
  sid: number,
  address: { host: number; channel: ScanField; target: ScanField; lun: number },
): Promise<{ device: string; hctl: Hctl; dir: string } | undefined> {
  checkIndex(sid, 'session id');
  checkIndex(address.lun, 'LUN');
  for (const t of await sessionScsiTargets(fs, address.host, sid)) {
    if (address.channel !== '-' && address.channel !== t.channel) continue;
    if (address.target !== '-' && address.target !== t.target) continue;
    const hctl = { ...t, lun: address.lun };
    const dir = `${sessionDevicePath(address.host, sid)}/target${t.host}:${t.channel}:${t.target}/${formatHctl(hctl)}`;
    const device = await firstBlockDevice(fs, dir);
    if (device !== undefined) return { device, hctl, dir };
  }
  return undefined;
}

/** Every LUN the kernel has for session `sid`, in LUN order, each with its block device if any. */
export async function sessionLuns(fs: HostFs, sid: number, options: { host?: number } = {}): Promise<SessionLun[]> {
  const host = options.host ?? (await sessionHostNumber(fs, sid));
  if (host === undefined) return [];
  const out: SessionLun[] = [];
  for (const t of await sessionScsiTargets(fs, host, sid)) {
    const targetDir = `${sessionDevicePath(host, sid)}/target${t.host}:${t.channel}:${t.target}`;
    for (const entry of await fs.readdir(targetDir)) {
      const hctl = parseHctl(entry);
      if (hctl === undefined || hctl.host !== host) continue;
      out.push({ hctl, device: await firstBlockDevice(fs, `${targetDir}/${entry}`) });
    }
  }
  return out.sort((a, b) => a.hctl.channel - b.hctl.channel || a.hctl.target - b.hctl.target || a.hctl.lun - b.hctl.lun);
}

/** The LUNs of session `sid` that have a block device (is any other LUN of it still in use?). */
export async function sessionBlockDevices(fs: HostFs, sid: number, options: { host?: number } = {}): Promise<Array<{ hctl: Hctl; device: string }>> {
  return (await sessionLuns(fs, sid, options)).filter((l): l is { hctl: Hctl; device: string } => l.device !== undefined);
}

/**
 * The SCSI address and iSCSI session of a block device (`sdb` or `/dev/sdb`), from where
 * `/sys/block/sdX/device` leads; `undefined` when it is gone or is not a SCSI disk.
 */
export async function scsiDeviceOf(fs: HostFs, device: string): Promise<ScsiDevice | undefined> {
  const name = blockName(device);
  const real = await realpathIfExists(fs, `/sys/block/${name}/device`);
  if (real === undefined) return undefined;
  const parts = real.split('/');
  const hctl = parseHctl(parts[parts.length - 1] ?? '');
  if (hctl === undefined) return undefined;
  const session = parts.map((p) => /^session(\d+)$/.exec(p)).find((m) => m !== null);
  return { name, hctl, sid: session ? Number(session[1]) : undefined, dir: real };
}

/**
 * `scsiDeviceOf`, read once per disk name for as long as the reader is kept: for one call that
 * holds the disk's LUN lock and looks at the same disk several times back to back (identity, is
 * it the target's LUN, where to delete it). Each reading walks `/sys/block/<name>/device`'s links
 * again; a reader must not outlive that call, since the kernel may give the name to another disk.
 */
export function scsiDeviceReader(fs: HostFs): ScsiDeviceRead {
  const seen = new Map<string, Promise<ScsiDevice | undefined>>();
  return (name) => {
    let read = seen.get(name);
    if (read === undefined) {
      read = scsiDeviceOf(fs, name);
      seen.set(name, read);
    }
    return read;
  };
}

/**
 * Remove a SCSI disk from the kernel: write `1` to `/sys/block/sdX/device/delete`, or to the
 * `delete` of its SCSI device directory when the caller read it (`sdevDir`, from `scsiDeviceOf`:
 * that very SCSI device, even if the name went to another disk meanwhile). `absent` when it was
 * already gone. The caller flushes first and waits for `/dev/sdX` to go afterwards.
 */
export async function deleteScsiDevice(fs: HostFs, device: string, sdevDir?: string): Promise<'deleted' | 'absent'> {
  const name = blockName(device);
  const path = sdevDir === undefined ? `/sys/block/${name}/device/delete` : `${sdevDir}/delete`;
  if (!(await fs.exists(path))) return 'absent';
  try {
    await fs.writeFile(path, '1');
  } catch (error) {
    // Gone between the check and the write: another detach removed it.
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENODEV' || code === 'ENXIO') return 'absent';
    throw error;
  }
  return 'deleted';
}
