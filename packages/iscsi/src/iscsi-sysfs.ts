import type { HostFs } from '@berth/host';
import { samePortal, type Portal } from './portal.js';
import { toPortal } from './target.js';
import { checkIndex, readInteger, readTrimmed, realpathIfExists } from './sysfs-read.js';

/** An iSCSI session as sysfs shows it (`/sys/class/iscsi_session/sessionS`). */
export interface IscsiSession {
  /** The S of `sessionS`. */
  sid: number;
  /** The target's name (`targetname`). */
  iqn: string;
  /** The tag the target sent at login; `undefined` when unreadable. */
  tpgt: number | undefined;
  /** `LOGGED_IN`, `FAILED` (connection lost) or `FREE` (recovery timed out); `''` when unreadable. */
  state: string;
  /** The node record's portal (connection 0's `persistent_address`/`persistent_port`). */
  portal: Portal | undefined;
  /** The SCSI host number H of the session's own host; `undefined` when it cannot be found. */
  hostNumber: number | undefined;
}

const SESSION_DIR = /^session(\d+)$/;
const HOST_DIR = /^host(\d+)$/;

/** The session ids under `/sys/class/iscsi_session`, in numeric order. */
export async function listSessionIds(fs: HostFs): Promise<number[]> {
  const ids: number[] = [];
  for (const entry of await fs.readdir('/sys/class/iscsi_session')) {
    const match = SESSION_DIR.exec(entry);
    if (match) ids.push(Number(match[1]));
  }
  return ids.sort((a, b) => a - b);
}

/**
 * The SCSI host number of session `sid`: the `hostH` above `sessionS` in the session's device
 * path, or else (os-brick's way) the `hostH` whose `/sys/class/iscsi_host/hostH/device` holds
 * `sessionS`. `undefined` when the session is gone.
 */
export async function sessionHostNumber(fs: HostFs, sid: number): Promise<number | undefined> {
  checkIndex(sid, 'session id');
  const real = await realpathIfExists(fs, `/sys/class/iscsi_session/session${sid}`);
  if (real !== undefined) {
    const parts = real.split('/');
    const at = parts.indexOf(`session${sid}`);
    const match = at > 0 ? HOST_DIR.exec(parts[at - 1] ?? '') : null;
    if (match) return Number(match[1]);
  }
  for (const entry of await fs.readdir('/sys/class/iscsi_host')) {
    const match = HOST_DIR.exec(entry);
    if (match && (await fs.exists(`/sys/class/iscsi_host/${entry}/device/session${sid}`))) return Number(match[1]);
  }
  return undefined;
}

/** The connection of a session: `connectionS:0` (iscsi_tcp has one per session), else the lowest. */
async function connectionDir(fs: HostFs, sid: number): Promise<string | undefined> {
  const first = `/sys/class/iscsi_connection/connection${sid}:0`;
  if (await fs.exists(first)) return first;
  const prefix = `connection${sid}:`;
  const others = (await fs.readdir('/sys/class/iscsi_connection'))
    .filter((e) => e.startsWith(prefix) && /^\d+$/.test(e.slice(prefix.length)))
    .sort((a, b) => Number(a.slice(prefix.length)) - Number(b.slice(prefix.length)));
  return others[0] === undefined ? undefined : `/sys/class/iscsi_connection/${others[0]}`;
}

/** Session `sid` read from sysfs; `undefined` when it is gone (or going: no `targetname`). */
export async function readIscsiSession(fs: HostFs, sid: number): Promise<IscsiSession | undefined> {
  checkIndex(sid, 'session id');
  const dir = `/sys/class/iscsi_session/session${sid}`;
  const [target, tpgt, state, hostNumber] = await Promise.all([
    readSessionTarget(fs, sid),
    readInteger(fs, `${dir}/tpgt`),
    readTrimmed(fs, `${dir}/state`),
    sessionHostNumber(fs, sid),
  ]);
  if (target === undefined) return undefined;
  return { sid, iqn: target.iqn, tpgt, state: state ?? '', portal: target.portal, hostNumber };
}

/** Reads of `readSessionTarget` in flight, per host filesystem and session id. */
const targetReads = new WeakMap<HostFs, Map<number, Promise<IscsiSessionTarget | undefined>>>();

/** Which target and portal a session is to. */
export interface IscsiSessionTarget {
  iqn: string;
  portal: Portal | undefined;
}

/**
 * Which target and portal session `sid` is to (its `targetname`, connection 0's persistent
 * address and port), without the rest of `readIscsiSession`: whether a disk is a target's LUN
 * needs only these. `undefined` when the session is gone (or going: no `targetname`). Callers
 * that ask while a reading of the same session is under way share it (32 LUNs of one session
 * detached at once read it a few times, not 32): nothing is kept once it is done, and a
 * session's target and portal are fixed at login for as long as that session id exists.
 */
export function readSessionTarget(fs: HostFs, sid: number): Promise<IscsiSessionTarget | undefined> {
  checkIndex(sid, 'session id');
  let reads = targetReads.get(fs);
  if (reads === undefined) {
    reads = new Map();
    targetReads.set(fs, reads);
  }
  const running = reads.get(sid);
  if (running !== undefined) return running;
  const read = readSessionTargetNow(fs, sid).finally(() => reads.delete(sid));
  reads.set(sid, read);
  return read;
}

async function readSessionTargetNow(fs: HostFs, sid: number): Promise<IscsiSessionTarget | undefined> {
  // Connection 0 first (iscsi_tcp has one per session), read straight away; the lookup only without it.
  const first = `/sys/class/iscsi_connection/connection${sid}:0`;
  const [iqn, firstAddress, firstPort] = await Promise.all([
    readTrimmed(fs, `/sys/class/iscsi_session/session${sid}/targetname`),
    readTrimmed(fs, `${first}/persistent_address`),
    readInteger(fs, `${first}/persistent_port`),
  ]);
  if (iqn === undefined) return undefined;
  let address = firstAddress;
  let port = firstPort;
  if (address === undefined || port === undefined) {
    const conn = await connectionDir(fs, sid);
    if (conn !== undefined && conn !== first) {
      [address, port] = await Promise.all([readTrimmed(fs, `${conn}/persistent_address`), readInteger(fs, `${conn}/persistent_port`)]);
    }
  }
  // The kernel keeps the record's text; strip brackets should a tool have written them.
  const portal = address !== undefined && port !== undefined ? { host: address.replace(/^\[(.*)\]$/, '$1'), port } : undefined;
  return { iqn, portal };
}

/** Every iSCSI session in sysfs, in session-id order. */
export async function listIscsiSessions(fs: HostFs): Promise<IscsiSession[]> {
  const sessions = await Promise.all((await listSessionIds(fs)).map((sid) => readIscsiSession(fs, sid)));
  return sessions.filter((s): s is IscsiSession => s !== undefined);
}

/**
 * The session to `iqn` through `portal` (portals compared by address and port, brackets and IPv6
 * spelling ignored), whatever its state; the lowest sid when there are several.
 */
export async function findIscsiSession(
  fs: HostFs,
  target: { iqn: string; portal: string | Portal },
): Promise<IscsiSession | undefined> {
  const portal = toPortal(target.portal);
  for (const session of await listIscsiSessions(fs)) {
    if (session.iqn === target.iqn && session.portal !== undefined && samePortal(session.portal, portal)) return session;
  }
  return undefined;
}
