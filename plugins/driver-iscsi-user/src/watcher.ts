import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from '@berth/core';
import { acquireFileLock, LockTimeoutError, stopDaemon, type HostServices } from '@berth/host';
import { pingPortal } from '@berth/iscsi';
import { abortFuseConnection, removeFuseExport, StorageDaemon } from '@berth/qemu';
import { exportRecords, userPaths, type ExportRecord } from './export-records.js';
import { messageOf, mountpointOf } from './lun-plumbing.js';
import { exportNames } from './user-connection.js';
import type { IscsiUserOptions } from './options.js';
import { exportsToFail, observePings, overdueExports, type WatchEntry, type WatchedExport } from './watch-decision.js';

/** What the watcher needs: the machine, the data dir, the transport's options, a logger. */
export interface WatcherDeps {
  host: HostServices;
  dataDir: string;
  options: IscsiUserOptions;
  logger: Logger;
  /**
   * Called after the watcher failed a LUN and qemu-storage-daemon died with it (qemu 7.2 does when a
   * request was parked on that export): rebuilds the daemon's other exports (the driver's restore).
   */
  restore?: () => Promise<void>;
}

/** The portal a record's session uses now: the failover's while one is under way. */
function currentPortal(record: ExportRecord): string {
  return record.failover?.portal ?? record.portal;
}

/**
 * The watch of one data dir's connected LUNs, standing in for the kernel initiator's NOP-Out and
 * `replacement_timeout`, which qemu-storage-daemon's libiscsi sessions lack (a request on a dead
 * target waits in D state for as long as it is dead): every `noopIntervalS` each `active`
 * record's portal is pinged (`pingPortal`, a discovery Login PDU); a portal silent for longer than
 * `replacementTimeoutS` gets its LUN's FUSE connection aborted — every queued and later request
 * on that export fails, so its loop device's I/O ends with EIO — and the record marked `failed`
 * with the reason, under the daemon lock every record is written under. Returns when the daemon
 * is gone and no record remains, or when `signal` fires.
 */
export async function runWatcher(deps: WatcherDeps, signal: AbortSignal): Promise<void> {
  const { host, options, logger } = deps;
  const paths = userPaths(deps.dataDir);
  const records = exportRecords(paths);
  const daemon = new StorageDaemon({ dir: paths.daemon, waiter: host.waiter, binary: options.binary });
  const intervalMs = options.noopIntervalS * 1000;
  const timeoutMs = options.replacementTimeoutS * 1000;
  let watch = new Map<string, WatchEntry>();
  const silent = new Set<string>();
  // The overdue LUNs left waiting beside healthy ones, said once per change.
  let held = '';
  logger.info({ noopIntervalS: options.noopIntervalS, replacementTimeoutS: options.replacementTimeoutS }, 'watching the connected LUNs\' portals');
  // `pingPortal` unrefs its socket and timer (a ping must not keep a CLI alive): here the watch is
  // the process's work, so this keeps it alive until the watch ends.
  const alive = setInterval(() => undefined, 1 << 30);
  try {
    await watchLoop();
  } finally {
    clearInterval(alive);
  }

  async function watchLoop(): Promise<void> {
    while (!signal.aborted) {
      // A round that fails (a record unreadable for a moment) is said and the next one runs.
      const ended = await round().catch((error: unknown) => {
        logger.error({ err: messageOf(error) }, 'a round of the watch failed');
        return false;
      });
      if (ended) return;
      await delay(intervalMs, undefined, { signal }).catch(() => undefined);
    }
  }

  /** One round: ping, decide, fail what is overdue. True when there is nothing left to watch. */
  async function round(): Promise<boolean> {
    const all = await records.list();
    if (all.length === 0 && !(await daemon.status()).running) {
      logger.info({}, 'qemu-storage-daemon is gone and no export is recorded: the watch ends');
      return true;
    }
    const active = all.filter((record) => record.status === 'active' && record.loopDevice !== undefined);
    const exports: WatchedExport[] = active.map((record) => ({ key: record.volumeId, portal: currentPortal(record) }));
    const initiatorOf = new Map(active.map((record) => [currentPortal(record), record.initiator]));
    const answers = new Map(
      await Promise.all([...initiatorOf].map(async ([portal, initiator]) => [portal, await pingPortal(portal, initiator, intervalMs)] as const)),
    );
    const now = Date.now();
    watch = observePings(watch, exports, (portal) => answers.get(portal) === true, now);
    // Said once per change, not at every ping.
    for (const [key, entry] of watch) {
      const answering = entry.lastAnswerMs === now;
      if (answering === silent.has(key)) logger[answering ? 'info' : 'warn']({ key, portal: entry.portal }, answering ? 'the portal answers again' : 'the portal did not answer a ping');
      if (answering) silent.delete(key);
      else silent.add(key);
    }
    // Every record not failed is a LUN the daemon serves (or is about to: a connect under way).
    const served = all.filter((record) => record.status !== 'failed').map((record) => record.volumeId);
    const { fail: overdue, spared } = exportsToFail(overdueExports(watch, now, timeoutMs), served);
    const waiting = spared > 0 ? overdueExports(watch, now, timeoutMs).sort().join(',') : '';
    if (waiting !== held) {
      held = waiting;
      if (waiting !== '') {
        logger.warn(
          { keys: waiting.split(','), healthy: spared },
          'LUNs whose target did not answer past replacementTimeoutS keep their I/O waiting: failing them would take qemu-storage-daemon down under the LUNs whose target answers (qemu 7.2)',
        );
      }
    }
    if (overdue.length > 0) {
      const done = await failExports(deps, overdue.map((key) => ({ key, entry: watch.get(key)! })), now).catch((error: unknown) => {
        logger.error({ keys: overdue, err: messageOf(error) }, 'could not fail the I/O of LUNs whose target did not answer; trying again');
        return [];
      });
      for (const key of done) watch.delete(key);
    }
    return false;
  }
}

/**
 * Fail the LUNs whose portal stayed silent, all under one hold of the daemon lock: each whose
 * record is still `active` on that portal and whose portal misses one more ping gets its export's
 * FUSE connection aborted and its record marked `failed`; then the daemon is dealt with once
 * (`settleDaemon`), and when it had to be restarted, its other exports are rebuilt. Resolves with
 * the LUNs done (or no longer to do); none when the lock was busy (tried again at the next round).
 */
async function failExports(deps: WatcherDeps, overdue: ReadonlyArray<{ key: string; entry: WatchEntry }>, now: number): Promise<string[]> {
  const { host, options, logger } = deps;
  const paths = userPaths(deps.dataDir);
  const records = exportRecords(paths);
  let release;
  try {
    release = await acquireFileLock(paths.lock, { timeoutMs: options.lockTimeoutMs, what: 'the user-space iSCSI daemon' });
  } catch (error) {
    if (!(error instanceof LockTimeoutError)) throw error;
    logger.warn({ keys: overdue.map((o) => o.key) }, 'the daemon lock is busy: failing the LUNs at the next round');
    return [];
  }
  const done: string[] = [];
  let daemonDied = false;
  try {
    const daemon = new StorageDaemon({ dir: paths.daemon, waiter: host.waiter, binary: options.binary });
    const before = await daemon.status();
    const aborted: ExportRecord[] = [];
    // Decided again under the lock: a connect that finished while the watcher waited for it (its
    // record `connecting` at the round's look) is a LUN the abort would take down too. Every record
    // not already failed is one the daemon serves, or is about to.
    const current = (await records.list()).filter((record) => record.status !== 'failed');
    const stillOverdue = overdue.filter(({ key, entry }) => current.some((r) => r.volumeId === key && r.status === 'active' && currentPortal(r) === entry.portal));
    for (const { key } of overdue) if (!stillOverdue.some((o) => o.key === key)) done.push(key);
    const { fail } = exportsToFail(stillOverdue.map((o) => o.key), current.map((r) => r.volumeId));
    if (fail.length === 0) return done;
    // One more ping of each portal, all at once (a partition dropping SYNs makes each wait its
    // whole bound, under the lock every attach and detach waits for): any answer, and nothing is failed.
    const portals = [...new Set(stillOverdue.map((o) => o.entry.portal))];
    const initiators = new Map(current.map((r) => [currentPortal(r), r.initiator]));
    const answers = await Promise.all(portals.map((portal) => pingPortal(portal, initiators.get(portal) ?? '', options.noopIntervalS * 1000)));
    if (answers.some(Boolean)) {
      logger.info({ portals: portals.filter((_, i) => answers[i]) }, 'a portal answered just before its LUNs\' I/O was to be failed: nothing done');
      return [...done, ...stillOverdue.map((o) => o.key)];
    }
    for (const { key, entry } of stillOverdue) {
      const record = current.find((r) => r.volumeId === key)!;
      const silentS = Math.round((Date.now() - entry.lastAnswerMs) / 1000);
      const connection = await abortFuseConnection(host, mountpointOf(paths, key), options.commandTimeoutMs);
      const how =
        connection === undefined
          ? 'its FUSE mount was not found (nothing to abort: its I/O fails already or has no path)'
          : 'its FUSE connection was aborted';
      const reason =
        `target ${record.iqn} at ${entry.portal} did not answer for ${silentS} s (replacementTimeoutS ${options.replacementTimeoutS}); its I/O was failed (EIO)` +
        `: ${how}, and it stays failed until berth reconcile reconnects it or a detach (--force) removes it`;
      await records.save({ ...record, status: 'failed', failure: reason, updatedAt: new Date().toISOString() });
      logger.warn({ key, iqn: record.iqn, lun: record.lun, portal: entry.portal, device: record.loopDevice, fuseConnection: connection, silentS, sinceMs: now - entry.lastAnswerMs }, 'a target did not answer: its LUN\'s I/O was failed (EIO)');
      aborted.push(record);
      done.push(key);
    }
    if (aborted.length > 0 && before.running) daemonDied = await settleDaemon(deps, daemon, aborted);
  } finally {
    await release();
  }
  if (daemonDied && deps.restore) {
    await deps.restore().catch((error: unknown) => logger.error({ err: messageOf(error) }, 'rebuilding the other exports failed; the next berth command tries again'));
  }
  return done;
}

// How long the watcher waits for the daemon's monitor after an abort: one stuck behind the dead target does not answer at all.
const MONITOR_WAIT_MS = 2_000;

/**
 * What qemu 7.2 does after an export's FUSE connection is aborted, and what is done about it.
 * libfuse reports the aborted connection as an empty read, and qemu serves that export's last
 * request again — in a loop that takes a core, or, with a request waiting on the dead target,
 * recursively until the stack overflows (a segfault; measured: 1.5–5 s after the abort) — and its
 * main loop, inside that request, answers no QMP. So: a monitor that answers gets the export
 * deleted (the loop stops; the chain's rest is the detach's); one that does not is a daemon that
 * will not serve the other exports' control, and may crash under their I/O at any moment: it is
 * killed now, and true is returned — the other exports are rebuilt on their loop devices (the
 * driver's restore) instead of failing at an unknown later time.
 */
async function settleDaemon(deps: WatcherDeps, daemon: StorageDaemon, aborted: readonly ExportRecord[]): Promise<boolean> {
  const { logger, options } = deps;
  const keys = aborted.map((record) => record.volumeId);
  const qmp = await daemon.connect({ timeoutMs: MONITOR_WAIT_MS }).catch(() => undefined);
  if (qmp) {
    try {
      for (const record of aborted) await removeFuseExport(qmp, exportNames(record.iqn, record.lun).exportId, { timeoutMs: options.qmpTimeoutMs });
      logger.info({ keys }, 'the aborted exports were deleted from qemu-storage-daemon; its other exports go on (the rest of their chains goes at detach or reconcile)');
      return false;
    } catch (error) {
      logger.warn({ keys, err: messageOf(error) }, 'qemu-storage-daemon answered but did not delete the aborted exports');
    } finally {
      qmp.close();
    }
  }
  if (!(await daemon.status()).running) {
    logger.warn({ keys }, 'qemu-storage-daemon died of the abort (qemu 7.2): restarting it and rebuilding its other exports');
    return true;
  }
  logger.warn({ keys }, 'qemu-storage-daemon no longer answers its monitor after the abort (qemu 7.2: its main loop is inside a request on the dead target): killing it, its other exports are rebuilt on their loop devices');
  await stopDaemon(daemon.pidFile, { timeoutMs: 0, signal: 'SIGKILL' });
  return true;
}
