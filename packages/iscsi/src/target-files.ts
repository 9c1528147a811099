import { createHash, randomBytes } from 'node:crypto';
import { lstat } from 'node:fs/promises';
import { z } from '@berth/core/zod';
import { BerthError, lazySchema, type Logger } from '@berth/core';
import { acquireFileLock, commandsOutlive, LockTimeoutError, processRuns, processStartTicks, type HostFs, type ReleaseLock } from '@berth/host';
import { targetKey } from './lun-connection.js';
import type { LunTarget } from './lun-device.js';

/**
 * Where every berth process on the host keeps its iSCSI target files (a tmpfs on a real host:
 * nothing there outlives a reboot, and neither does a session). Resolved through the host's fs, so
 * a simulated host has its own. Under `/run`, which only root may write — not `/run/lock`, which
 * every user may (1777): another user could make `berth` there first, point a marker directory
 * at any directory for berth to clean, or plant locks that stall every attach.
 */
export const TARGET_FILES_DIR = '/run/berth/iscsi';

/** A marker's name: `<pid>-<12 hex>-<n>`. Nothing else in a marker directory is read or removed. */
const MARKER_NAME = /^\d+-[0-9a-f]{12}-\d+$/;

/** The name a target's files start with: a short hash of its key (an IQN is long and holds ':'). */
export function targetFileStem(target: { iqn: string; portal: LunTarget['portal'] }): string {
  return createHash('sha256').update(targetKey(target)).digest('hex').slice(0, 32);
}

/** The directory of `target`'s in-flight markers. */
function markerDir(target: LunTarget): string {
  return `${TARGET_FILES_DIR}/${targetFileStem(target)}.inflight`;
}

/** The note of a logout decision `target`'s connects in flight deferred (`TargetFiles.markKept`). */
function keptFile(target: LunTarget): string {
  return `${TARGET_FILES_DIR}/${targetFileStem(target)}.kept`;
}

/** What a marker holds: the process of the connect, named for good by its pid and start time. */
const zMarker = lazySchema(() => z.object({ pid: z.number().int().positive(), startTicks: z.string() }));

/**
 * What berth processes on one host share about a target (IQN + portal), beside what sysfs shows:
 * - a **lock file** each process takes around its session setup and logout decision, so that two
 *   processes (`berth serve` and a CLI `berth attach`, two CLI runs) never log in to and out of
 *   one target at once; one whose process died is broken by the next taker (`acquireFileLock`);
 * - a **marker** per connect past its session setup whose disk is not handed out yet, which
 *   sysfs cannot show: another process's logout decision must keep the session for it.
 */
export class TargetFiles {
  /** Begins the name of every marker this instance makes: its own connects are in its in-process count already. */
  private readonly ownPrefix = `${process.pid}-${randomBytes(6).toString('hex')}-`;
  private made = 0;
  private self: Promise<z.output<typeof zMarker>> | undefined;

  constructor(
    private readonly fs: HostFs,
    /** How long to wait for another process's hold, in ms. */
    private readonly timeoutMs: number,
    private readonly logger: Logger,
  ) {}

  /**
   * Take `target`'s lock file, waiting while another process holds it; a TIMEOUT BerthError
   * naming the target and the holder past `timeoutMs`, the signal's reason when it fires.
   */
  async lock(target: LunTarget, signal: AbortSignal | undefined): Promise<ReleaseLock> {
    await this.ensureDir(TARGET_FILES_DIR);
    const lockPath = this.fs.resolve(`${TARGET_FILES_DIR}/${targetFileStem(target)}.lock`);
    const what = `iSCSI target ${target.iqn} at ${target.portalText}`;
    return acquireFileLock(lockPath, { timeoutMs: this.timeoutMs, what, ...(signal === undefined ? {} : { signal }) }).catch((error: unknown) => {
      if (!(error instanceof LockTimeoutError)) throw error;
      const holder = error.holderPid === undefined ? 'a process still writing the lock' : `pid ${error.holderPid}`;
      throw new BerthError('TIMEOUT', `${what} stayed locked by another berth process on this host (${holder}) for more than ${error.timeoutMs} ms`, {
        hint: 'another berth process on this host is working on that target (a login or a logout); let it finish and try again, or raise the transport\'s targetLockTimeoutMs. A lock whose process is gone is broken by the next taker.',
        details: { iqn: target.iqn, portal: target.portalText, lockPath: error.lockPath, ...(error.holderPid === undefined ? {} : { holderPid: error.holderPid }) },
        cause: error,
      });
    });
  }
  /**
   * Mark a connect of `target` in flight: `<hash>.inflight/<pid>-<token>`, holding this process's
   * pid and start time. Call holding the target lock, as every reader does: a marker a reader sees
   * is whole, or its writer died writing it. Returns the marker's name, for `leave`.
   */
  async enter(target: LunTarget): Promise<string> {
    const dir = markerDir(target);
    await this.ensureDir(dir);
    this.made += 1;
    const name = `${this.ownPrefix}${this.made}`;
    this.self ??= processStartTicks(process.pid).then((ticks) => ({ pid: process.pid, startTicks: ticks ?? '' }));
    await this.fs.writeFile(`${dir}/${name}`, JSON.stringify(await this.self), { mode: 0o600 });
    return name;
  }

  /** `ensureOwnDir` on the top directory and on `dir` (an lstat each: cheap beside the lock file). */
  private async ensureDir(dir: string): Promise<void> {
    await ensureOwnDir(this.fs, TARGET_FILES_DIR);
    if (dir !== TARGET_FILES_DIR) await ensureOwnDir(this.fs, dir);
  }

  /** The connect marked `name` is over (its disk handed out, or undone). */
  async leave(target: LunTarget, name: string): Promise<void> {
    await this.fs.unlink(`${markerDir(target)}/${name}`);
  }

  /**
   * A logout decision kept `target`'s session `sid` for connects in flight (their markers, or
   * this process's count) and nothing else: `<hash>.kept` names the session. The last of those
   * connects to be undone without a disk of its own then closes it (`keptFor`); a logout of the
   * session removes it (`clearKept`). Call holding the target lock.
   */
  async markKept(target: LunTarget, sid: number): Promise<void> {
    await this.ensureDir(TARGET_FILES_DIR);
    await this.fs.writeFile(keptFile(target), String(sid), { mode: 0o600 });
  }

  /** The session was closed: no decision is deferred any more. Call holding the target lock. */
  async clearKept(target: LunTarget): Promise<void> {
    await this.fs.unlink(keptFile(target));
  }

  /**
   * Whether a logout decision kept session `sid` of `target` for connects in flight: only then may
   * an undo that merely reused the session close it — a session no berth decision kept (an
   * administrator's, one logged in at boot) is not berth's to close. The note stays until a logout
   * (`clearKept`). Call holding the target lock.
   */
  async keptFor(target: LunTarget, sid: number): Promise<boolean> {
    const text = await this.fs.readFileIfExists(keptFile(target)).catch(() => undefined);
    return text !== undefined && text.trim() === String(sid);
  }

  /**
   * How many connects of `target` other lifecycles have in flight (other processes, or another
   * instance in this one): one readdir, and each marker not this instance's counted while its
   * process lives (same pid, same start time: a reused pid is not it). A dead process's marker (a
   * killed CLI) is removed. Call holding the target lock.
   */
  async inflightElsewhere(target: LunTarget): Promise<number> {
    const dir = markerDir(target);
    let count = 0;
    for (const name of await this.fs.readdir(dir)) {
      if (name.startsWith(this.ownPrefix) || !MARKER_NAME.test(name)) continue;
      const text = await this.fs.readFileIfExists(`${dir}/${name}`);
      // Gone since the listing: its connect ended (a disk is handed out outside the lock).
      if (text === undefined) continue;
      if (await markerLives(text)) {
        count += 1;
        continue;
      }
      await this.fs.unlink(`${dir}/${name}`);
      this.logger.info({ iqn: target.iqn, portal: target.portalText, marker: name }, 'removed the in-flight marker of a berth process that is gone');
    }
    return count;
  }
}

/**
 * Make `dir` (and its parents) 0700 when missing, then refuse it unless it is a real directory
 * (not a link), owned by this process's user, that nobody else may write: berth removes files in
 * it and trusts the locks in it.
 */
async function ensureOwnDir(fs: HostFs, dir: string): Promise<void> {
  await fs.mkdir(dir, { mode: 0o700 });
  const real = fs.resolve(dir);
  const info = await lstat(real);
  const uid = process.getuid?.();
  if (!info.isDirectory() || (uid !== undefined && info.uid !== uid) || (info.mode & 0o022) !== 0) {
    throw new BerthError('PERMISSION_DENIED', `${real} is not a directory only berth's user may write (a link, another owner, or group/other write): not using it for iSCSI target locks`, {
      hint: `remove ${real} (berth makes it again, 0700) — and find out who made it`,
      details: { path: real },
    });
  }
}

/**
 * Whether the process a marker names still runs, or the commands it started do (its `iscsiadm
 * --login`, when it was killed; a torn marker's writer died: it wrote holding the lock).
 */
async function markerLives(text: string): Promise<boolean> {
  let holder;
  try {
    holder = zMarker.safeParse(JSON.parse(text));
  } catch {
    return false;
  }
  if (!holder.success) return false;
  return (await processRuns(holder.data.pid, holder.data.startTicks)) || commandsOutlive(holder.data.pid, holder.data.startTicks);
}
