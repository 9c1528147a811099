import { BerthError, type Logger } from '@berth/core';
import type { CommandRunner, DeviceWaiter, HostFs } from '@berth/host';
import { findIscsiSession, readIscsiSession, readSessionTarget, type IscsiSession } from './iscsi-sysfs.js';
import { samePortal, type Portal } from './portal.js';
import { scanSlices } from './scan-schedule.js';
import { findBlockDeviceByHctl, findLunByHctl, scanLun, scsiDeviceOf, type Hctl, type ScsiDeviceRead } from './scsi-sysfs.js';
import { blockName } from './sysfs-read.js';
import { readWwid, scsiWwnFromWwid } from './wwid.js';

/** One LUN of one target through one portal, as a transport has parsed it from its connection_info. */
export interface LunTarget {
  iqn: string;
  portal: Portal;
  /** The portal as iscsiadm takes it (`host:port`, IPv6 in brackets). */
  portalText: string;
  /** The target's LUN number (`target_lun`). */
  lun: number;
  /** The LUN number the kernel uses for it (differs from `lun` under flat addressing). */
  kernelLun: number;
}

/** What the device helpers reach the host through. */
export interface LunDeviceHost {
  fs: HostFs;
  waiter: DeviceWaiter;
  runner: CommandRunner;
  logger: Logger;
}

/** A LUN's block device as found in sysfs. */
export interface LunDevice {
  /** The kernel name (`sdb`). */
  name: string;
  sid: number;
  hctl: Hctl;
  /** Its SCSI device directory, when the lookup read it (`deviceIsTargetLun`): where `removeDisk` deletes it. */
  sdevDir?: string;
}

/** `/dev/<name>`. */
export function devPath(name: string): string {
  return `/dev/${blockName(name)}`;
}

// devtmpfs sends inotify events for its nodes, sysfs sends none: waits watch /dev and read sysfs.
const DEV = '/dev';

function isWaitTimeout(error: unknown): boolean {
  return error instanceof Error && error.name === 'WaitTimeoutError';
}

/**
 * The block device of `target`'s LUN on session `session`, when sysfs has one (`/dev` node or
 * not): the probe of every wait below.
 */
export async function lunDeviceName(fs: HostFs, session: { sid: number; hostNumber: number }, kernelLun: number): Promise<string | undefined> {
  return findBlockDeviceByHctl(fs, session.sid, { host: session.hostNumber, channel: '-', target: '-', lun: kernelLun });
}

/**
 * `lunDeviceName` with the SCSI address the disk sits at under the session's own directory: by
 * where it was found, it is this session's LUN (no walk back from `/sys/block/<name>` needed).
 */
export async function lunDeviceOf(fs: HostFs, session: { sid: number; hostNumber: number }, kernelLun: number): Promise<LunDevice | undefined> {
  const found = await findLunByHctl(fs, session.sid, { host: session.hostNumber, channel: '-', target: '-', lun: kernelLun });
  return found === undefined ? undefined : { name: found.device, sid: session.sid, hctl: found.hctl, sdevDir: found.dir };
}

/** Options of `scanAndWait`. */
export interface ScanAndWaitOptions {
  /** The whole time the device may take, split over the scans (`scanSlices`). */
  timeoutMs: number;
  /** How many scans at most, the first included. */
  attempts: number;
  signal: AbortSignal;
  /** Told before each scan is written (the undo must know a scan went out). */
  onScan?: (attempt: number) => void;
  /** The transport whose `deviceTimeoutMs` the timeout's hint tells to raise (`iscsi`, `iscsi-multipath`). */
  transport: string;
  /** Name the portal in the timeout's message (a multipath attach has one wait per portal). */
  namePortal?: boolean;
}

/**
 * Targeted LUN scan (`- - L`, or `C T L` once the session's target dir exists), then a wait on
 * /dev events for the LUN's block device to be in sysfs with its /dev node; when a slice of the
 * time passes without it, the scan is written again (a lost scan is not waited out). Resolves
 * with the device (name and SCSI address); rejects with TIMEOUT after the last slice, or with the signal's reason.
 */
export async function scanAndWait(
  host: LunDeviceHost,
  target: LunTarget,
  session: { sid: number; hostNumber: number },
  options: ScanAndWaitOptions,
): Promise<LunDevice> {
  const { fs, waiter, logger } = host;
  const probe = async (): Promise<LunDevice | undefined> => {
    const lun = await lunDeviceOf(fs, session, target.kernelLun);
    return lun !== undefined && (await fs.exists(devPath(lun.name))) ? lun : undefined;
  };
  const slices = scanSlices(options.timeoutMs, options.attempts);
  for (const [index, slice] of slices.entries()) {
    options.signal.throwIfAborted();
    options.onScan?.(index + 1);
    const scan = await scanLun(fs, session.sid, target.kernelLun, { host: session.hostNumber });
    logger.debug({ sid: session.sid, host: scan.host, scan: `${scan.channel} ${scan.target} ${scan.lun}`, attempt: index + 1 }, 'LUN scan written');
    try {
      return await waiter.waitUntil(DEV, probe, {
        timeoutMs: slice,
        signal: options.signal,
        what: `LUN ${target.lun} of ${target.iqn} to appear as a block device`,
      });
    } catch (error) {
      if (!isWaitTimeout(error)) throw error;
      if (index < slices.length - 1) {
        logger.info({ iqn: target.iqn, lun: target.lun, sid: session.sid, waitedMs: slice }, 'device not there yet; scanning the LUN again');
      }
    }
  }
  const what = `LUN ${target.lun} of ${target.iqn}${options.namePortal === true ? ` at ${target.portalText}` : ''} did not appear as a block device within ${options.timeoutMs} ms (${slices.length} scan(s) of session ${session.sid})`;
  const details = { sid: session.sid, lun: target.lun, kernelLun: target.kernelLun, timeoutMs: options.timeoutMs, scans: slices.length };
  // A scan needs the session up: when the target stopped answering meanwhile (tgtd killed, the
  // portal unreachable) the wait was lost to that, and saying "not exported" would send the user
  // to the wrong place. The state is read once, at the end (a session that comes back later is
  // iscsid's recovery, not this attach's).
  const state = await sessionStateOf(fs, session.sid);
  if (state !== 'LOGGED_IN') {
    const why = state === 'gone' ? 'the session is gone (logged out, or removed by the initiator)' : state === 'FAILED' ? 'the session lost its connection to the target (state FAILED: the target stopped answering)' : state === 'FREE' ? 'the session lost its connection to the target and its recovery timed out (state FREE)' : `the session is in state ${state}`;
    throw new BerthError('TIMEOUT', `${what}: ${why}`, {
      hint: `check that the target at ${target.portalText} is running and reachable (\`iscsiadm -m session -P 3\` shows the session's state), then run the command again`,
      details: { ...details, sessionState: state },
    });
  }
  throw new BerthError('TIMEOUT', what, {
    hint:
      'check that the target exports this LUN to this host\'s initiator (the backend\'s ACL and LUN number), ' +
      `look at \`iscsiadm -m session -P 3\` and the kernel log; on a slow host raise the ${options.transport} transport's deviceTimeoutMs`,
    details,
  });
}

/**
 * The sysfs `state` of session `sid` as `readIscsiSession` reads it (`LOGGED_IN`, `FAILED`,
 * `FREE`); `gone` when the session is; `LOGGED_IN` when it cannot be read (the plain timeout is
 * then the honest message).
 */
async function sessionStateOf(fs: HostFs, sid: number): Promise<string> {
  const read = await readIscsiSession(fs, sid).catch(() => null);
  if (read === undefined) return 'gone';
  return read === null || read.state === '' ? 'LOGGED_IN' : read.state;
}

/**
 * The SCSI device directory of a disk (`/sys/devices/…/H:C:T:L`), read before a delete so the
 * wait can see all of it go; `undefined` when the disk is gone already.
 */
export async function sdevDirOf(fs: HostFs, name: string): Promise<string | undefined> {
  try {
    return await fs.realpath(`/sys/block/${blockName(name)}/device`);
  } catch {
    return undefined;
  }
}

/**
 * Resolve when the disk is gone: `/sys/block/<name>`, `/dev/<name>` and its SCSI device
 * directory (`sdevDir`, read before the delete; a kernel may drop the block device before the
 * SCSI device, and a logout decision must not see the half-removed LUN). With `sdevDir`, a name
 * that comes back under another SCSI device is another disk's: once the disk is gone the sd driver
 * gives its name to the next disk it adds (a connect running beside this removal), so the disk
 * counts as gone then — not still there until the deadline. TIMEOUT error at the deadline.
 */
export async function waitForDeviceGone(
  host: LunDeviceHost,
  name: string,
  sdevDir: string | undefined,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const { fs, waiter } = host;
  try {
    await waiter.waitUntil(
      DEV,
      async () => ((await diskStillThere(fs, name, sdevDir)) ? undefined : true),
      { timeoutMs, ...(signal === undefined ? {} : { signal }), what: `${devPath(name)} to go away` },
    );
  } catch (error) {
    if (!isWaitTimeout(error)) throw error;
    throw new BerthError('TIMEOUT', `${devPath(name)} was deleted but is still there after ${timeoutMs} ms`, {
      cause: error,
      hint: `look at the kernel log for ${name}; a device stays while I/O to it is stuck (a lost path): restore the path or log out of the session`,
      details: { device: devPath(name) },
    });
  }
}

/** The probe of `waitForDeviceGone`: whether any of the disk (its SCSI device, its block device, its node) is left. */
async function diskStillThere(fs: HostFs, name: string, sdevDir: string | undefined): Promise<boolean> {
  if (sdevDir === undefined) {
    for (const p of [`/sys/block/${name}`, devPath(name)]) if (await fs.exists(p)) return true;
    return false;
  }
  if (await fs.exists(sdevDir)) return true;
  if (await fs.exists(`/sys/block/${name}`)) {
    // The disk's own SCSI device is gone: a block device of that name that leads to a SCSI
    // device is another disk's (the name was given again); one that leads nowhere is ours, going.
    return (await sdevDirOf(fs, name)) === undefined;
  }
  return fs.exists(devPath(name));
}

/**
 * Whether block device `name` is `target`'s LUN now: its SCSI address leads to a session to the
 * same IQN and portal, and to the same LUN. A name from an old record can belong to another disk
 * after a reboot or a re-scan, and deleting that one would take someone else's volume. `read`
 * is how the disk's SCSI device is read (a `scsiDeviceReader` the caller shares within one call).
 */
export async function deviceIsTargetLun(fs: HostFs, name: string, target: LunTarget, read: ScsiDeviceRead = (n) => scsiDeviceOf(fs, n)): Promise<LunDevice | undefined> {
  let sd;
  try {
    sd = await read(name);
  } catch {
    return undefined;
  }
  if (sd?.sid === undefined || sd.hctl.lun !== target.kernelLun) return undefined;
  const session = await readSessionTarget(fs, sd.sid);
  if (session?.iqn !== target.iqn || session.portal === undefined || !samePortal(session.portal, target.portal)) return undefined;
  return { name: sd.name, sid: sd.sid, hctl: sd.hctl, sdevDir: sd.dir };
}

/** The LUN's device found from the session in sysfs, with the session; `{}` parts missing when absent. */
export async function findLunDevice(
  fs: HostFs,
  target: LunTarget,
): Promise<{ session?: IscsiSession; device?: LunDevice }> {
  const session = await findIscsiSession(fs, target);
  if (session === undefined || session.hostNumber === undefined) return session === undefined ? {} : { session };
  const name = await lunDeviceName(fs, { sid: session.sid, hostNumber: session.hostNumber }, target.kernelLun);
  if (name === undefined) return { session };
  const sd = await scsiDeviceOf(fs, name);
  return { session, device: { name, sid: session.sid, hctl: sd?.hctl ?? { host: session.hostNumber, channel: 0, target: 0, lun: target.kernelLun } } };
}

/** The scsi_wwn of a disk (os-brick's: the wwid with its prefix turned into udev's type digit). */
export async function scsiWwnOf(fs: HostFs, name: string): Promise<string | undefined> {
  const wwid = await readWwid(fs, name);
  return wwid === undefined ? undefined : scsiWwnFromWwid(wwid);
}
