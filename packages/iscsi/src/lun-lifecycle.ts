import { KeyedLock, type FaultPoints, type Logger } from '@berth/core';
import type { CommandRunner, DeviceWaiter, HostFs } from '@berth/host';
import type { FailureList } from './failure-list.js';
import { FlushBatcher } from './flush-batcher.js';
import type { IscsiadmClient } from './iscsiadm-client.js';
import { findIscsiSession } from './iscsi-sysfs.js';
import { targetKey } from './lun-connection.js';
import {
  devPath,
  lunDeviceOf,
  scanAndWait,
  scsiWwnOf,
  sdevDirOf,
  waitForDeviceGone,
  type LunDevice,
  type LunDeviceHost,
  type LunTarget,
} from './lun-device.js';
import { closeSession, messageOf, openSession, type LeftLogin, type SessionHost, type SessionProgress, type SessionSettings, type SessionTarget, type UsableSession } from './node-session.js';
import { deleteScsiDevice, sessionBlockDevices } from './scsi-sysfs.js';
import { TargetFiles } from './target-files.js';
import { TargetUsage } from './target-usage.js';

/** How a transport runs the LUN lifecycle (its options). */
export interface LunLifecycleOptions extends SessionSettings {
  /** The transport's name, for the hints that tell which options to raise (`iscsi`, `iscsi-multipath`). */
  transport: string;
  /** How long a LUN's disk may take to appear after its scan (and to go after a delete), in ms. */
  deviceTimeoutMs: number;
  /** How many scans are written while waiting for the disk, the first included. */
  scanAttempts: number;
  /** Timeout of one command, in ms (cleanup runs on `commandTimeoutMs + deviceTimeoutMs`). */
  commandTimeoutMs: number;
  /** How long to wait for another berth process on the host that holds a target's lock file, in ms. */
  targetLockTimeoutMs: number;
}

/** What the lifecycle reaches the host through. */
export interface LunLifecycleDeps {
  fs: HostFs;
  waiter: DeviceWaiter;
  runner: CommandRunner;
  iscsiadm: IscsiadmClient;
  logger: Logger;
  /** Fault points between the commands; absent in production. */
  faults?: FaultPoints;
}

/** Everything one LUN connect did, so that a failure (or a path given up) undoes exactly that. */
export interface LunProgress extends SessionProgress {
  /** Counted in the target's connects in flight. */
  registered: boolean;
  /** Its in-flight marker, which other berth processes on the host count (`TargetFiles.enter`), while registered. */
  marker?: string;
  session?: UsableSession;
  /** A scan went out for a LUN that had no device before. */
  scanned: boolean;
}

/** A LUN connected through one session: its disk and WWN, and what the connect did. */
export interface ConnectedLun {
  session: UsableSession;
  device: LunDevice;
  /** os-brick's scsi_wwn of the disk, when it has a wwid. */
  wwn?: string;
  progress: LunProgress;
}

/** Options of one logout decision (`closeSessionIfUnused`). */
export interface CloseOptions {
  signal: AbortSignal | undefined;
  failures: FailureList;
  mark: number;
  keep?: readonly string[];
  faultPoints?: boolean;
  namePortal?: boolean;
  /** Whether a disk at the target's LUN that `ownDevices` does not name is the caller's all the same (absent: never). */
  lateOwn?: (device: string) => Promise<boolean>;
}

/** A logout decision waiting for its target's lock; `outcome` is set when one before it decided it. */
interface CloseRequest {
  /** The caller's LUN (`LunTarget.kernelLun`): a listed disk is its own only there. */
  kernelLun: number;
  ownDevices: readonly string[];
  keep: readonly string[];
  mark: number;
  /** The caller has a `lateOwn` predicate (a disk at its LUN may be its own). */
  lateOwn: boolean;
  outcome: 'kept' | 'already-closed' | undefined;
}

/** A session to a target and its disks, read from sysfs once, and the target's connects in flight when it was read. */
interface SessionView {
  /**
   * Connects of the target past session setup, in this instance and (their markers) in other berth
   * processes, counted before sysfs was read: one that ended meanwhile had its disk in sysfs before
   * the reading, so either the count or the reading has it.
   */
  inflight: number;
  session: Awaited<ReturnType<typeof findIscsiSession>>;
  devices: Array<{ hctl: { lun: number }; device: string }>;
}

/** Options of one LUN connect. */
export interface LunConnectOptions {
  /** The operation's signal (deadline, cancel). */
  signal: AbortSignal;
  /**
   * Fires to give this path up while it is still waiting for its session (the target lock, the
   * login: what hangs on a dead portal) — a multipath attach's grace window for stragglers
   * closed. Once the session is there, the path goes on to its disk.
   */
  cut?: AbortSignal;
  /** Told right before `--login` runs. */
  onLogin?: () => void;
  /** Told as soon as the connect has failed, before its undo runs. */
  onFailed?: (error: unknown) => void;
  /** Told when a killed login left no session yet: its record is kept for the caller to finish (see `SessionHooks.onLoginLeft`). */
  onLoginLeft?: (left: LeftLogin) => void;
  /**
   * Told when the session is there (the path is past what a dead portal can hang), with how long
   * this connect's `--login` took when it logged in (a session reused from sysfs took none).
   */
  onSession?: (loginMs: number | undefined) => void;
  /** A discovery made the node record for this connect: it is this connect's to delete on failure. */
  createdRecord?: boolean;
  /** Name the portal in a device timeout (a multipath attach has one wait per portal). */
  namePortal?: boolean;
}

/**
 * One LUN of one target through one portal, from node record to disk and back: the single-LUN
 * lifecycle both iSCSI transports run (the single-path transport once, the multipath transport
 * once per path). Locks: one queue per target (IQN + portal), held only for session setup and the
 * logout decision, and inside it the target's lock file, which other berth processes on the host
 * take too; a transport adds its own per-volume queue. Never a lock of the whole host.
 */
export class LunLifecycle {
  /** The session helpers' view of the host (for a transport's own discovery). */
  readonly sessionHost: SessionHost;
  private readonly deviceHost: LunDeviceHost;
  private readonly targetLocks = new KeyedLock();
  private readonly files: TargetFiles;
  private readonly usage = new TargetUsage();
  /** How many times this instance closed each target's session: a closer that started before one need not close again. */
  private readonly closes = new Map<string, number>();
  /** Logout decisions waiting for each target's lock, in arrival order. */
  private readonly closers = new Map<string, CloseRequest[]>();
  /** Flushes of disks removed together share one `blockdev` run. */
  readonly flusher: FlushBatcher;

  constructor(
    private readonly deps: LunLifecycleDeps,
    readonly options: LunLifecycleOptions,
  ) {
    this.sessionHost = { fs: deps.fs, waiter: deps.waiter, iscsiadm: deps.iscsiadm, settings: options, logger: deps.logger, ...(deps.faults ? { faults: deps.faults } : {}) };
    this.deviceHost = { fs: deps.fs, waiter: deps.waiter, runner: deps.runner, logger: deps.logger };
    this.flusher = new FlushBatcher(deps.runner, options.commandTimeoutMs);
    this.files = new TargetFiles(deps.fs, options.targetLockTimeoutMs, deps.logger);
  }

  /** A signal for cleanup, on its own clock: the operation's signal has often fired already. */
  cleanupSignal(): AbortSignal {
    return AbortSignal.timeout(this.options.commandTimeoutMs + this.options.deviceTimeoutMs);
  }

  /**
   * Connect `target`'s LUN: a session (reused, or node record + login under the target lock), a
   * targeted scan and a wait on `/dev` events for the disk (a disk already there is reused). On
   * failure everything this call did is undone, then the error is thrown.
   */
  async connect(target: SessionTarget, options: LunConnectOptions): Promise<ConnectedLun> {
    const { fs } = this.deps;
    const key = targetKey(target);
    const progress: LunProgress = { createdRecord: options.createdRecord === true, loggedIn: false, registered: false, scanned: false };
    const { signal } = options;
    const beforeSession = options.cut === undefined ? signal : AbortSignal.any([signal, options.cut]);
    try {
      const session = await this.withTargetLock(
        target,
        async () => {
          const opened = await openSession(this.sessionHost, target, options.signal, progress, () => this.cleanupSignal(), {
            ...(options.cut === undefined ? {} : { cut: options.cut }),
            ...(options.onLogin === undefined ? {} : { onLogin: options.onLogin }),
            ...(options.onFailed === undefined ? {} : { onFailed: options.onFailed }),
            ...(options.onLoginLeft === undefined ? {} : { onLoginLeft: options.onLoginLeft }),
          });
          this.usage.enter(key, progress.loggedIn ? { createdRecord: progress.createdRecord } : undefined);
          progress.registered = true;
          // Registered first: should the marker fail, the undo still ends the registration and the login.
          progress.marker = await this.files.enter(target);
          return opened;
        },
        beforeSession,
      );
      progress.session = session;
      options.onSession?.(progress.loggedIn ? progress.loginMs : undefined);
      let device = await lunDeviceOf(fs, session, target.kernelLun);
      if (device === undefined || !(await fs.exists(devPath(device.name)))) {
        // A device that was in sysfs before the scan is not this connect's to delete on failure.
        const scannedBefore = device !== undefined;
        device = await scanAndWait(this.deviceHost, target, session, {
          timeoutMs: this.options.deviceTimeoutMs,
          attempts: this.options.scanAttempts,
          signal,
          onScan: () => {
            if (!scannedBefore) progress.scanned = true;
          },
          transport: this.options.transport,
          ...(options.namePortal === true ? { namePortal: true } : {}),
        });
        await this.deps.faults?.hit('iscsi.connect.after-scan');
      } else {
        this.deps.logger.debug({ device: devPath(device.name), iqn: target.iqn, portal: target.portalText, lun: target.lun }, 'LUN already connected; reusing its device');
      }
      signal.throwIfAborted();
      // Found under the session's own directory: it is this session's LUN, at that address.
      const name = device.name;
      const wwn = await scsiWwnOf(fs, name);
      return { session, device, ...(wwn === undefined ? {} : { wwn }), progress };
    } catch (error) {
      options.onFailed?.(error);
      await this.release(target, progress);
      throw error;
    }
  }

  /** A connect whose disk is kept (handed out): the normal disconnect rules apply to its session from now on. Never throws. */
  async keep(target: LunTarget, progress: LunProgress): Promise<void> {
    if (!progress.registered) return;
    this.usage.leave(targetKey(target), true);
    progress.registered = false;
    await this.dropMarker(target, progress);
  }

  /** Remove the in-flight marker of a connect whose registration ended; a failure is logged (the marker goes with this process). */
  private async dropMarker(target: LunTarget, progress: LunProgress): Promise<void> {
    const name = progress.marker;
    if (name === undefined) return;
    delete progress.marker;
    await this.files.leave(target, name).catch((error: unknown) => {
      this.deps.logger.warn({ iqn: target.iqn, portal: target.portalText, marker: name, error: messageOf(error) }, 'could not remove the marker of a connect in flight: other berth processes keep the session until this one exits');
    });
  }

  /**
   * Undo what a connect did that is not kept: the disk its own scan made, then its login and
   * record when no other LUN or connect uses the session — and, for a connect that only reused the
   * session, the session when a logout decision kept it for the connects in flight and nothing
   * uses it now (`closeReusedSession`). Never throws.
   */
  async release(target: LunTarget, progress: LunProgress): Promise<void> {
    const { fs, logger } = this.deps;
    const signal = this.cleanupSignal();
    const key = targetKey(target);
    try {
      if (progress.scanned && progress.session !== undefined) {
        // The scan may have made the device after the wait gave up; it was never handed out.
        // Found at its SCSI address under the session and deleted there: not through
        // `/sys/block/<name>`, a name the kernel may have given to another disk since.
        const lun = await lunDeviceOf(fs, progress.session, target.kernelLun);
        if (lun !== undefined && (await deleteScsiDevice(fs, lun.name, lun.sdevDir)) === 'deleted') {
          await waitForDeviceGone(this.deviceHost, lun.name, lun.sdevDir, this.options.deviceTimeoutMs, signal);
          logger.info({ device: devPath(lun.name), portal: target.portalText }, 'undo: deleted the device this connect scanned');
        }
        progress.scanned = false;
      }
    } catch (error) {
      logger.warn({ iqn: target.iqn, portal: target.portalText, lun: target.lun, error: messageOf(error) }, 'undo: could not delete the scanned device');
    }
    if (!progress.registered) {
      // A failure before the session was registered was undone by openSession itself.
      return;
    }
    try {
      // The registration ends whatever happens next: a count left behind would keep the session for good.
      await this.targetLocks.withLock(key, async () => {
        this.usage.leave(key, false);
        progress.registered = false;
        await this.dropMarker(target, progress);
        const pending = this.usage.peek(key).pendingLogin;
        // No signal: an undo waits its turn (the lock file's own timeout bounds a wait for another process).
        await this.holdingLockFile(
          target,
          async () => {
            // A clock of its own from here: the wait for another process's hold may have used
            // up one started before it, and a logout cut short by it would leave the session.
            const signal = this.cleanupSignal();
            if (!progress.loggedIn && pending === undefined && !progress.createdRecord) {
              await this.closeReusedSession(target, signal);
              return;
            }
            if (await this.sessionStillNeeded(target, [])) return;
            const failures: Array<{ step: string; error: unknown }> = [];
            const attempt = async <T>(step: string, fn: () => Promise<T>): Promise<T | undefined> =>
              fn().catch((error: unknown) => {
                failures.push({ step, error });
                return undefined;
              });
            const ownRecord = progress.createdRecord || pending?.createdRecord === true;
            if (progress.loggedIn || pending !== undefined) {
              await this.closeTarget(target, { signal, deleteRecord: ownRecord }, attempt);
            } else if (ownRecord) {
              await attempt('delete the node record', () => this.deps.iscsiadm.nodeDelete(target, { signal }));
            }
            this.usage.clearLogin(key);
            if (failures.length > 0) logger.warn({ iqn: target.iqn, portal: target.portalText, errors: failures.map((f) => `${f.step}: ${messageOf(f.error)}`) }, 'undo: the session could not be closed completely');
          },
          undefined,
        );
      });
    } catch (error) {
      logger.warn({ iqn: target.iqn, portal: target.portalText, error: messageOf(error) }, 'undo: could not close the session');
    }
  }

  /**
   * The undo of a connect that only reused a session (no login, no record of its own) closes it
   * when a logout decision kept it for connects in flight (`TargetFiles.markKept`: the detach of
   * its last other LUN, in this process or another) and nothing uses it now: this undo is then the
   * last one to look, and logs out (deleting the record, as that disconnect would have). A session
   * no decision kept — an administrator's, one logged in at boot, whose LUNs berth never had — is
   * left alone, as is one with a disk or a connect in flight. Call holding the target's locks.
   */
  private async closeReusedSession(target: LunTarget, signal: AbortSignal): Promise<void> {
    const key = targetKey(target);
    const view = await this.readSession(target);
    if (view.session?.hostNumber === undefined || (await this.neededIn(view, target, [], [], undefined))) return;
    if (!(await this.files.keptFor(target, view.session.sid))) return;
    const failures: string[] = [];
    const attempt = async <T>(step: string, fn: () => Promise<T>): Promise<T | undefined> =>
      fn().catch((error: unknown) => {
        failures.push(`${step}: ${messageOf(error)}`);
        return undefined;
      });
    // The note goes with the logout (`closeTarget`): one that failed leaves it for the next undo.
    await this.closeTarget(target, { signal, deleteRecord: true }, attempt);
    this.usage.clearLogin(key);
    if (failures.length > 0) {
      this.deps.logger.warn({ iqn: target.iqn, portal: target.portalText, errors: failures }, 'undo: the session this connect reused could not be closed completely');
      return;
    }
    this.closes.set(key, (this.closes.get(key) ?? 0) + 1);
    this.deps.logger.info({ iqn: target.iqn, portal: target.portalText }, 'undo: closed the session this connect reused (a detach had kept it for the connects in flight; nothing uses it now)');
  }

  /**
   * Remove a LUN's disk: `blockdev --flushbufs` when `flush` (and the `/dev` node exists: without
   * it nothing could have written), `delete`, then a wait until the disk and its SCSI device are
   * gone. Each step goes through `failures` (recorded under force, thrown otherwise). `sdevDir`
   * is the disk's SCSI device directory when the caller's lookup read it under the same LUN lock
   * (`LunDevice.sdevDir`), else read here once: the delete goes there and the wait watches it, one
   * reading for both.
   */
  async removeDisk(name: string, options: { signal: AbortSignal | undefined; failures: FailureList; flush: boolean; label?: string; sdevDir?: string }): Promise<'deleted' | 'absent' | undefined> {
    const { fs } = this.deps;
    const { failures, signal } = options;
    const node = devPath(name);
    const label = options.label === undefined ? node : `${node} (${options.label})`;
    if (options.flush && (await fs.exists(node))) {
      await failures.attempt(`flush ${label}`, async () => {
        await this.flusher.flush(node, signal);
        return true;
      });
    }
    const sdevDir = options.sdevDir ?? (await sdevDirOf(fs, name));
    const deleted = await failures.attempt(`delete ${options.label === undefined ? name : label}`, () => deleteScsiDevice(fs, name, sdevDir));
    if (deleted !== undefined) {
      await failures.attempt(`wait for ${label} to go`, () => waitForDeviceGone(this.deviceHost, name, sdevDir, this.options.deviceTimeoutMs, signal));
    }
    return deleted;
  }

  /**
   * Finish a login the undo left to iscsid (`LunConnectOptions.onLoginLeft`), under the target
   * lock: `busy` while a connect of the target is in flight, in this process or another berth
   * process on the host (ask again later); `in-use` when its
   * session serves a LUN or attachment (a disk on it: another LUN's, one in `keep`, or one a later
   * connect adopted) — never touched; else its session, if any (with no disk: nobody's), is logged
   * out and the node record deleted: `closed`. Call once the session is up or iscsid's bound passed.
   */
  async finishLeftLogin(target: LunTarget, options: { signal: AbortSignal | undefined; failures: FailureList; keep?: readonly string[] }): Promise<'busy' | 'in-use' | 'closed'> {
    const key = targetKey(target);
    return this.withTargetLock(
      target,
      async () => {
        if (this.usage.peek(key).inflight > 0) return 'busy';
        const view = await this.readSession(target);
        if (view.inflight > 0) return 'busy';
        if (view.session !== undefined && (await this.neededIn(view, target, [], options.keep ?? [], undefined))) return 'in-use';
        const before = options.failures.size;
        await this.closeTarget(target, { signal: options.signal, deleteRecord: true, namePortal: true }, (step, fn) => options.failures.attempt(step, fn));
        if (options.failures.size === before) this.closes.set(key, (this.closes.get(key) ?? 0) + 1);
        return 'closed';
      },
      options.signal,
    );
  }

  /** A mark taken before a disconnect removes its disk; `closeSessionIfUnused` compares it. */
  closeMark(target: LunTarget): number {
    return this.closes.get(targetKey(target)) ?? 0;
  }

  /**
   * The logout decision, under the target lock (the only part of a disconnect that needs it): log
   * out and delete the node record unless a connect of the target is in flight (in any berth
   * process on the host), a LUN other than
   * `ownDevices` has a disk on the session, or a disk of the session is one of `keep` (devices
   * other attachments use). A disk at this target's own LUN that is not in `ownDevices` (it
   * appeared after the caller listed its paths: a scan an interrupted connect wrote) goes with the
   * session when `lateOwn` confirms it is the caller's. A disconnect whose `mark` predates a close
   * of this target that left no session skips its own: many LUNs of one target detached at once
   * log out once, not once each.
   */
  async closeSessionIfUnused(
    target: LunTarget,
    ownDevices: readonly string[],
    options: CloseOptions,
  ): Promise<'closed' | 'kept' | 'already-closed'> {
    const key = targetKey(target);
    const request: CloseRequest = { kernelLun: target.kernelLun, ownDevices, keep: options.keep ?? [], mark: options.mark, lateOwn: options.lateOwn !== undefined, outcome: undefined };
    const queued = this.closers.get(key) ?? [];
    queued.push(request);
    this.closers.set(key, queued);
    try {
      return await this.targetLocks.withLock(
        key,
        async () => {
          this.unqueue(key, request);
          // Decided, from the reading of a decision that held the lock before this one: no need of
          // the lock file either (a batch of queued decisions takes it once).
          if (request.outcome !== undefined) return request.outcome;
          return this.holdingLockFile(target, () => this.decideClose(target, ownDevices, options), options.signal);
        },
        options.signal,
      );
    } finally {
      this.unqueue(key, request);
    }
  }

  /** The logout decision of `closeSessionIfUnused`, made holding both locks. */
  private async decideClose(target: LunTarget, ownDevices: readonly string[], options: CloseOptions): Promise<'closed' | 'kept' | 'already-closed'> {
    const key = targetKey(target);
    // Only decisions already waiting when sysfs is read can be made from that reading: their
    // own disks were removed before it.
    const waiting = [...(this.closers.get(key) ?? [])];
    const view = await this.readSession(target);
    if ((this.closes.get(key) ?? 0) !== options.mark && view.session === undefined) {
      this.decideQueued(key, target, view, waiting);
      return 'already-closed';
    }
    if (await this.neededIn(view, target, ownDevices, options.keep ?? [], options.lateOwn)) {
      this.deps.logger.info({ iqn: target.iqn, portal: target.portalText }, 'keeping the session: another LUN of it is in use');
      await this.noteKept(target, view, ownDevices, options);
      this.decideQueued(key, target, view, waiting);
      return 'kept';
    }
    const before = options.failures.size;
    await this.closeTarget(
      target,
      { signal: options.signal, deleteRecord: true, ...(options.faultPoints === true ? { faultPoints: true } : {}), ...(options.namePortal === true ? { namePortal: true } : {}) },
      (step, fn) => options.failures.attempt(step, fn),
    );
    this.usage.clearLogin(key);
    if (options.failures.size === before) this.closes.set(key, (this.closes.get(key) ?? 0) + 1);
    return 'closed';
  }

  /**
   * A session kept only for connects in flight (without them the decision would have closed it):
   * `<hash>.kept` names it, so the last of those connects to be undone closes it. Kept for a disk:
   * no note (one left from before goes). Best effort: the decision stands either way.
   */
  private async noteKept(target: LunTarget, view: SessionView, ownDevices: readonly string[], options: CloseOptions): Promise<void> {
    try {
      if (view.session === undefined) return;
      const forDisks = view.inflight === 0 || (await this.neededIn({ ...view, inflight: 0 }, target, ownDevices, options.keep ?? [], options.lateOwn));
      if (forDisks) await this.files.clearKept(target);
      else await this.files.markKept(target, view.session.sid);
    } catch (error) {
      this.deps.logger.warn({ iqn: target.iqn, portal: target.portalText, error: messageOf(error) }, 'could not note why the session was kept: an undo of a connect that reused it leaves it');
    }
  }

  /** `closeSession`, and a logout that went through takes the session's `.kept` note with it. */
  private async closeTarget(
    target: LunTarget,
    options: Parameters<typeof closeSession>[2],
    attempt: Parameters<typeof closeSession>[3],
  ): Promise<boolean> {
    const loggedOut = await closeSession(this.sessionHost, target, options, attempt);
    if (loggedOut) await this.files.clearKept(target).catch(() => undefined);
    return loggedOut;
  }

  /**
   * The decisions that were queued behind the one holding the lock when it read the session
   * (`waiting`), made from that reading, in order, as they would be had each taken the lock right
   * then: a disconnect whose mark predates a close, with no session left, has nothing to close; one
   * for which a connect in flight, or a disk it does not own, keeps the session keeps it. Anything
   * else (a close, a late disk to confirm) stops there: it and the ones after it take their own
   * turn and read sysfs again. Settling only says "nothing to do", so a decision made here never
   * logs out a session serial ones would have kept; 32 LUNs detached at once read sysfs a few
   * times instead of 32 times in a row.
   */
  private decideQueued(key: string, target: LunTarget, view: SessionView, waiting: readonly CloseRequest[]): void {
    const queued = this.closers.get(key) ?? [];
    for (const request of waiting) {
      if (request.outcome !== undefined || !queued.includes(request)) continue;
      if ((this.closes.get(key) ?? 0) !== request.mark && view.session === undefined) {
        request.outcome = 'already-closed';
        continue;
      }
      // The reading is of the target's session; the LUN is the queued caller's own.
      if (this.surelyNeededIn(view, { ...target, kernelLun: request.kernelLun }, request.ownDevices, request.keep, request.lateOwn)) {
        this.deps.logger.info({ iqn: target.iqn, portal: target.portalText }, 'keeping the session: another LUN of it is in use');
        request.outcome = 'kept';
        continue;
      }
      // Queued decisions are made in order: one that cannot be settled here stops the others.
      return;
    }
  }

  /**
   * `fn` under `target`'s lock: this instance's queue first (its waiters queue without touching a
   * file), then the target's lock file, which other berth processes on the host take too.
   */
  private withTargetLock<T>(target: LunTarget, fn: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    return this.targetLocks.withLock(targetKey(target), () => this.holdingLockFile(target, fn, signal), signal);
  }

  /** `fn` holding `target`'s lock file; call holding its queue (`withTargetLock`). */
  private async holdingLockFile<T>(target: LunTarget, fn: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    const release = await this.files.lock(target, signal);
    try {
      return await fn();
    } finally {
      await release();
    }
  }

  private unqueue(key: string, request: CloseRequest): void {
    const queued = this.closers.get(key);
    if (queued === undefined) return;
    const at = queued.indexOf(request);
    if (at >= 0) queued.splice(at, 1);
    if (queued.length === 0) this.closers.delete(key);
  }

  /**
   * The session to `target` and its disks, as sysfs shows them now, with the connects in flight
   * counted first — this instance's and, from their markers, other processes' (one readdir): a
   * connect is kept (`keep`, outside the lock) once its disk is in sysfs, so a count read after
   * sysfs could miss one whose disk the reading missed too.
   */
  private async readSession(target: LunTarget): Promise<SessionView> {
    const here = this.usage.peek(targetKey(target)).inflight;
    const inflight = here + (await this.files.inflightElsewhere(target));
    const session = await findIscsiSession(this.deps.fs, target);
    if (session?.hostNumber === undefined) return { inflight, session, devices: [] };
    return { inflight, session, devices: await sessionBlockDevices(this.deps.fs, session.sid, { host: session.hostNumber }) };
  }

  /** `sessionStillNeeded` on a reading already made. */
  private async neededIn(
    view: SessionView,
    target: LunTarget,
    ownDevices: readonly string[],
    keep: readonly string[],
    lateOwn: ((device: string) => Promise<boolean>) | undefined,
  ): Promise<boolean> {
    if (view.inflight > 0) return true;
    if (view.session?.hostNumber === undefined) return false;
    if (view.devices.some((d) => keep.includes(d.device))) return true;
    for (const d of view.devices) {
      if (isOwn(d, target, ownDevices)) continue;
      // Only a disk of this LUN can be a late one of the caller's; the predicate checks its identity.
      if (d.hctl.lun !== target.kernelLun || lateOwn === undefined || !(await lateOwn(d.device))) return true;
      this.deps.logger.info(
        { device: devPath(d.device), iqn: target.iqn, portal: target.portalText },
        'a disk of this LUN appeared after the paths were listed (a scan the interrupted connect wrote); it goes with the session',
      );
    }
    return false;
  }

  /** Whether `neededIn` says true whatever the caller's `lateOwn` would answer (false: it cannot tell, or not needed). */
  private surelyNeededIn(view: SessionView, target: LunTarget, ownDevices: readonly string[], keep: readonly string[], lateOwn: boolean): boolean {
    if (view.inflight > 0) return true;
    if (view.session?.hostNumber === undefined) return false;
    if (view.devices.some((d) => keep.includes(d.device))) return true;
    return view.devices.some((d) => !isOwn(d, target, ownDevices) && (d.hctl.lun !== target.kernelLun || !lateOwn));
  }

  /**
   * Whether the session to `target` must stay: a connect of it is in flight (here, or in another
   * berth process on the host: its marker), one of its disks is in
   * `keep`, or a disk other than `ownDevices` is not the caller's — any disk of another LUN, and a
   * disk at the target's own LUN unless `lateOwn` confirms it (then it goes with the session).
   * Call holding the target lock.
   */
  async sessionStillNeeded(
    target: LunTarget,
    ownDevices: readonly string[],
    keep: readonly string[] = [],
    lateOwn?: (device: string) => Promise<boolean>,
  ): Promise<boolean> {
    if (this.usage.peek(targetKey(target)).inflight > 0) return true;
    return this.neededIn(await this.readSession(target), target, ownDevices, keep, lateOwn);
  }
}

/**
 * A disk of the session is the caller's when `ownDevices` names it *and* it sits at the caller's
 * LUN: the name alone is not enough — once the caller's disk was deleted, the sd driver gives its
 * name (the lowest free) to the next disk it adds, which may be another LUN's that a connect just
 * scanned in (`/dev/sda` was LUN 1's and is LUN 2's now: a decision taking it for the caller's
 * logged the session out under LUN 2's fresh attach).
 */
function isOwn(disk: { device: string; hctl: { lun: number } }, target: LunTarget, ownDevices: readonly string[]): boolean {
  return disk.hctl.lun === target.kernelLun && ownDevices.includes(disk.device);
}
