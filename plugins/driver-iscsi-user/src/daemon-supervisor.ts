import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { BerthError } from '@berth/core';
import { acquireFileLock, LockTimeoutError, type ReleaseLock } from '@berth/host';
import { detachFuseLoop, fuseMountsUnder, listExports, loopInfo, unmountFuseUnder, type QmpClient, type StorageDaemon } from '@berth/qemu';
import type { AttachStateFileStore } from '@berth/iscsi';
import type { ExportRecord } from './export-records.js';
import { backsLun, buildChain, holdNumber, loopsBacking, messageOf, mountpointOf, secretFile, teardownChain, type PlumbingDeps } from './lun-plumbing.js';
import { portalAnswers } from './portal-probe.js';
import { exportNames } from './user-connection.js';

interface Session {
  qmp: QmpClient;
  release: ReleaseLock;
}

/** What a restore after a daemon death did. */
export interface RestoreReport {
  restored: string[];
  failed: Array<{ key: string; reason: string }>;
}

/**
 * The one qemu-storage-daemon of this host, shared by every operation of every berth process.
 * An operation runs inside `use`: the first user in this process takes the cross-process lock
 * (`daemon.lock`), makes sure the daemon runs — starting it, and when it had died, rebuilding every
 * recorded export on the new one — and opens the QMP connection, which the operations running at
 * the same time in this process share; the last user closes it, stops an idle daemon and releases
 * the lock. A QMP monitor serves one client at a time, so other processes wait for the lock.
 */
export class DaemonSupervisor {
  private users = 0;
  private session: Session | undefined;
  private opening: Promise<void> | undefined;
  private closing: Promise<void> = Promise.resolve();
  /** What the last restore did (for `check()` and tests). */
  lastRestore: RestoreReport | undefined;

  constructor(
    private readonly deps: PlumbingDeps & {
      daemon: StorageDaemon;
      records: AttachStateFileStore<ExportRecord>;
      /** After a restore that rebuilt exports (under the daemon lock): the driver starts its watcher there. */
      afterRestore?: () => Promise<void>;
    },
  ) {}

  /** Run `fn` with a QMP connection to the running daemon. */
  async use<T>(signal: AbortSignal, fn: (qmp: QmpClient) => Promise<T>): Promise<T> {
    this.users += 1;
    try {
      return await fn(await this.acquire(signal));
    } finally {
      this.users -= 1;
      if (this.users === 0) {
        this.closing = this.closeSession();
        await this.closing;
      }
    }
  }

  private async acquire(signal: AbortSignal): Promise<QmpClient> {
    for (;;) {
      if (this.session && !this.session.qmp.isClosed) return this.session.qmp;
      this.opening ??= this.open(signal).finally(() => {
        this.opening = undefined;
      });
      await this.opening;
    }
  }

  private async open(signal: AbortSignal): Promise<void> {
    await this.closing;
    const { options } = this.deps;
    // A session whose connection broke (the daemon died under it) keeps its lock and reconnects.
    let release = this.session?.release;
    this.session?.qmp.close();
    this.session = undefined;
    if (!release) {
      await mkdir(this.deps.paths.root, { recursive: true, mode: 0o700 });
      release = await acquireFileLock(this.deps.paths.lock, { timeoutMs: options.lockTimeoutMs, what: 'the user-space iSCSI daemon', signal }).catch((error: unknown) => {
        if (!(error instanceof LockTimeoutError)) throw error;
        throw new BerthError('TIMEOUT', error.message, {
          hint: 'another berth command is still working with qemu-storage-daemon; wait for it (or remove the lock file if that process is gone)',
          details: { lockPath: error.lockPath, ...(error.holderPid === undefined ? {} : { holderPid: error.holderPid }) },
          cause: error,
        });
      });
    }
    try {
      // A daemon that dies as it starts is started again (`ensureConnected`: qemu 7.2 segfaulted so once in CI).
      const { started, qmp } = await this.deps.daemon.ensureConnected({
        timeoutMs: options.qmpTimeoutMs,
        signal,
        afterStart: () => this.deps.faults?.hit('iscsi-user.daemon.after-start') ?? Promise.resolve(),
      });
      qmp.unref();
      this.session = { qmp, release };
      if (started) await this.restore(qmp, signal);
      else await this.restoreOrphans(qmp, signal);
    } catch (error) {
      this.session?.qmp.close();
      this.session = undefined;
      await release();
      throw error;
    }
  }

  private async closeSession(): Promise<void> {
    const session = this.session;
    if (!session) return;
    this.session = undefined;
    try {
      if (this.deps.options.stopWhenIdle && (await this.deps.records.list()).length === 0) {
        session.qmp.close();
        await this.deps.daemon.stop();
        await unmountFuseUnder(this.deps.host, this.deps.paths.mounts, this.deps.options.commandTimeoutMs);
      }
    } catch (error) {
      this.deps.logger.warn({ err: messageOf(error) }, 'could not stop the idle qemu-storage-daemon');
    } finally {
      session.qmp.close();
      await session.release();
    }
  }

  /**
   * A daemon this process found running (not started) may still lack exports its records call
   * active while their loop devices still back the dead FUSE files: the process that restarted it
   * was killed before its restore ended (or during it). Those are rebuilt here — only those:
   * holding the daemon's lock, they are nobody's work in progress. One `query-block-exports` when
   * every export is there.
   */
  private async restoreOrphans(qmp: QmpClient, signal: AbortSignal): Promise<void> {
    const active = (await this.deps.records.list()).filter((record) => record.status === 'active');
    if (active.length === 0) return;
    const exported = new Set((await listExports(qmp, { signal })).map((e) => e.id));
    const orphans = new Set<string>();
    for (const record of active) {
      if (exported.has(exportNames(record.iqn, record.lun).exportId)) continue;
      // Only one whose loop device still backs its dead FUSE file, or that a restore had released
      // and not rebuilt (`restoring`): a disconnect killed between its teardown (the device goes
      // first, then the export) and the record's removal left one with neither, which is not to be
      // rebuilt — its detach finishes it.
      if (record.restoring === true || (await loopsBacking({ host: this.deps.host }, mountpointOf(this.deps.paths, record.volumeId))).length > 0) orphans.add(record.volumeId);
    }
    if (orphans.size === 0) return;
    this.deps.logger.warn({ volumes: [...orphans] }, 'qemu-storage-daemon runs without exports its records call active (a restart whose restore was cut short): rebuilding them');
    await this.restore(qmp, signal, orphans);
  }

  /**
   * The daemon was (re)started while exports are recorded: it died under them. Each loop device
   * still points at a dead FUSE file: one record after another, its device is detached (unless
   * something holds it open), its dead mount unmounted, and its chain built again on the same loop
   * device — the device path the attachment recorded and its stable link lead to. One at a time,
   * so that a device is free only while its own chain is rebuilt: another process's `losetup
   * --find` can take a free loop number, and with every device detached first, each one stayed
   * free for the whole restore. What cannot be rebuilt is marked `failed` with the reason:
   * `connected()` leaves it out, so `berth reconcile` reconnects it (fresh credentials from the
   * backend) or marks the attachment failed.
   */
  private async restore(qmp: QmpClient, signal: AbortSignal, only?: ReadonlySet<string>): Promise<void> {
    const { host, paths, records, logger, options } = this.deps;
    const all = (await records.list()).filter((record) => only === undefined || only.has(record.volumeId));
    if (all.length === 0) return;
    const report: RestoreReport = { restored: [], failed: [] };
    // Restores run without the connect's fault points: a crash test arms those for connects only.
    const quiet = { host, paths, options, logger };
    /**
     * Detach the record's device from its dead FUSE file and unmount that file, with a deadline of
     * its own (the operation's may pass mid-restore; a device is never left half released):
     * 'held-open' when something holds the device, 'mounted' when the dead mount would not go.
     */
    const release = async (record: ExportRecord): Promise<'held-open' | 'mounted' | 'released'> => {
      const mountpoint = mountpointOf(paths, record.volumeId);
      const step = { timeoutMs: options.commandTimeoutMs, signal: AbortSignal.timeout(options.commandTimeoutMs) };
      let held = false;
      // The export is dead: nothing written through its device can reach the target. A device
      // still held goes at its last close (the kernel's autoclear) rather than staying pinned to
      // the dead FUSE file after the lazy unmount below; the record says it failed, and a number
      // the kernel reuses later is dropped from what was published for it by the next attach's
      // connect (core's `dropStaleNames`). A failed connect's record may name no device: the
      // devices on its FUSE file are found from sysfs.
      const devices = record.loopDevice !== undefined ? [record.loopDevice] : await loopsBacking({ host }, mountpoint);
      for (const device of devices) {
        if ((await loopInfo(host.fs, device))?.backingFile !== mountpoint) continue;
        if ((await detachFuseLoop(host, device, mountpoint, { ...step, whenHeld: 'defer' })) === 'held-open') held = true;
      }
      await unmountFuseUnder(host, mountpoint, options.commandTimeoutMs);
      if (held) return 'held-open';
      return (await fuseMountsUnder(host.fs, mountpoint)).length > 0 ? 'mounted' : 'released';
    };
    const backingOf = async (device: string | undefined): Promise<string | undefined> => (device === undefined ? undefined : (await loopInfo(host.fs, device))?.backingFile);
    const takenMessage = (device: string, backing: string): string => `its loop device ${device} now backs another file (${backing}); reconnect it (berth reconcile) on a new device`;
    // Failed records whose loop devices were left bound to their dead FUSE files: their dead mounts
    // stay (an unmount would take the path their devices are found by).
    const kept = new Set<string>();
    /** Whether `record`'s device still backs its (dead) FUSE file: kept so, the number is not free while berth's links may name it. */
    const stillBound = async (record: ExportRecord): Promise<boolean> => {
      if (record.loopDevice === undefined) return false;
      const backing = (await loopInfo(host.fs, record.loopDevice).catch(() => undefined))?.backingFile;
      return backsLun(paths, record.volumeId, backing);
    };
    /**
     * After a release, a LUN that is not rebuilt: its number, free now, is bound to its placeholder
     * (read-only, zero length) so that no other program gets it while the links name it. Says what was done.
     */
    const hold = async (device: string | undefined, key: string): Promise<string> => {
      if (device === undefined) return '';
      const held = await holdNumber(quiet, device, key, AbortSignal.timeout(options.commandTimeoutMs)).catch(() => false);
      return held
        ? `; its device ${device} is bound to an empty read-only placeholder until then (I/O through it fails)`
        : `; its device ${device} could not be kept (another program may have it now: do not use its stable links)`;
    };
    try {
      // Records that are not active get no chain. A failed one keeps its device bound to its dead
      // FUSE file (I/O through it fails; its number is not given back while core's links may still
      // name it) for its detach or reconnect to remove; what a cut-short connect left (handed to
      // nobody, no link names it) is cleared.
      for (const record of all) {
        if (record.status === 'active') continue;
        if (record.status === 'failed' && (await stillBound(record))) kept.add(mountpointOf(paths, record.volumeId));
        else await release(record).catch(() => undefined);
      }
      for (const record of all) {
        if (record.status !== 'active') continue;
        const names = exportNames(record.iqn, record.lun);
        const fail = async (reason: string): Promise<void> => {
          report.failed.push({ key: record.volumeId, reason });
          const { restoring: _restoring, ...rest } = record;
          await records.save({ ...rest, status: 'failed', failure: reason, updatedAt: new Date().toISOString() });
        };
        /** A failure found before the device is released: it stays bound to its dead FUSE file (I/O through it fails, its number is not free). */
        const failBound = async (reason: string): Promise<void> => {
          const bound = await stillBound(record);
          if (bound) kept.add(mountpointOf(paths, record.volumeId));
          await fail(bound ? `${reason}; its device ${record.loopDevice} stays bound to its dead FUSE file until then (I/O through it fails)` : reason);
        };
        const wanted = record.loopDevice;
        try {
          // What needs no release is checked first: a LUN that cannot be rebuilt keeps its device
          // bound to the dead FUSE file rather than giving its number back while the attachment's
          // links still name it (another program's losetup could take it and get their writes).
          // The operation that found the daemon dead may pass its deadline mid-restore: what is not
          // rebuilt by then is failed clearly, never left on a free number.
          if (signal.aborted) {
            await failBound('the operation that found qemu-storage-daemon dead ran out of time before this export was rebuilt; reconnect it (berth reconcile)');
            continue;
          }
          if (record.username !== undefined && !existsSync(secretFile(paths, record.volumeId))) {
            await failBound('its CHAP password is no longer on this host; reconnect it (berth reconcile) to get it from the backend');
            continue;
          }
          // qemu's login blocks its main loop — every export on the daemon, and the rebuilds after
          // this one — while a portal does not answer: a dead one is found out first, and the LUN
          // left to reconcile, whose connect takes a live portal (and checks its target).
          if (!(await portalAnswers(record.portal, options.portalProbeMs, signal))) {
            await failBound(`its portal ${record.portal} did not answer when qemu-storage-daemon was restarted, so it was not rebuilt there (a login to it would stall the daemon); reconnect it (berth reconcile) through a portal that answers`);
            continue;
          }
          // Released from here on until rebuilt: a process killed in between leaves the record
          // saying so, for the next one's `restoreOrphans`.
          if (record.restoring !== true) await records.save({ ...record, restoring: true, updatedAt: new Date().toISOString() });
          const released = await release(record);
          if (released === 'held-open') {
            await fail(`${wanted} was open when qemu-storage-daemon died, so it could not be rebuilt; close it, then detach (--force) and attach again`);
            continue;
          }
          if (released === 'mounted') {
            await fail(`the dead FUSE mount ${mountpointOf(paths, record.volumeId)} would not unmount; unmount it (umount -l), then reconnect it (berth reconcile)${await hold(wanted, record.volumeId)}`);
            continue;
          }
          const backing = await backingOf(wanted);
          if (wanted !== undefined && backing !== undefined) {
            await fail(backing === mountpointOf(paths, record.volumeId) ? `${wanted} could not be let go of its dead FUSE file; detach it (losetup -d), then reconnect it (berth reconcile)` : takenMessage(wanted, backing));
            continue;
          }
          const device = await buildChain(quiet, qmp, {
            names,
            portal: record.portal,
            iqn: record.iqn,
            lun: record.lun,
            initiator: record.initiator,
            ...(record.username === undefined ? {} : { username: record.username }),
            readOnly: record.readOnly,
            ...(wanted === undefined ? {} : { loopDevice: wanted }),
            ...(record.node === undefined ? {} : { node: record.node }),
          }, signal);
          const info = await loopInfo(host.fs, device);
          const { restoring: _restoring, ...rebuilt } = record;
          await records.save({ ...rebuilt, loopDevice: device, ...(info ? { rdev: info.rdev } : {}), updatedAt: new Date().toISOString() });
          report.restored.push(record.volumeId);
        } catch (error) {
          await teardownChain(quiet, qmp, names, undefined, AbortSignal.timeout(options.commandTimeoutMs)).catch(() => undefined);
          // Another program may take the loop number between the check above and losetup.
          const backing = await backingOf(wanted).catch(() => undefined);
          const taken = wanted !== undefined && backing !== undefined && backing !== mountpointOf(paths, record.volumeId);
          const held = !taken && backing === undefined ? await hold(wanted, record.volumeId) : '';
          await fail(taken ? takenMessage(wanted, backing) : `rebuilding it on the restarted qemu-storage-daemon failed: ${messageOf(error)}; reconnect it (berth reconcile)${held}`);
        }
      }
    } finally {
      // A dead mount no record names (a record removed by hand) goes too; the rebuilt ones are live.
      // Rebuilding `only` some (the others' exports are up): only their dead mounts go.
      const live = new Set(report.restored.map((key) => mountpointOf(paths, key)));
      const mine = only === undefined ? undefined : new Set([...only].map((key) => mountpointOf(paths, key)));
      for (const mount of await fuseMountsUnder(host.fs, paths.mounts).catch(() => [])) {
        if (!live.has(mount.target) && !kept.has(mount.target) && (mine === undefined || mine.has(mount.target))) await unmountFuseUnder(host, mount.target, options.commandTimeoutMs).catch(() => undefined);
      }
      this.lastRestore = report;
      logger.warn(
        { restored: report.restored.length, failed: report.failed.map((f) => `${f.key}: ${f.reason}`) },
        'qemu-storage-daemon had died with exports on it; it was restarted and its exports rebuilt',
      );
      // Rebuilt LUNs are watched again at once (a reboot or a killed watcher left them unwatched
      // until the next connect; a review).
      if (report.restored.length > 0) await this.deps.afterRestore?.().catch(() => undefined);
    }
  }
}
