import path from 'node:path';
import { readFile, rm } from 'node:fs/promises';
import {
  BerthError,
  KeyedLock,
  parseWith,
  toBerthError,
  type CheckResult,
  type ConnectedDevice,
  type ConnectionInfo,
  type Connector,
  type Device,
  type DisconnectOptions,
  type PathRepair,
  type PluginContext,
  type TransportCallContext,
  type TransportDriver,
} from '@berth/core';
import { acquireFileLock, daemonStatus, LockTimeoutError, WaitTimeoutError } from '@berth/host';
import { ISCSI_SOURCE_KEYS, refuseIfHeld } from '@berth/iscsi';
import { listExports, loopInfo, removeUnusedNode, repointFilter, StorageDaemon, writeSecretFile, type QmpClient } from '@berth/qemu';
import { DaemonSupervisor } from './daemon-supervisor.js';
import { firstLivePortal, portalAnswers as answers } from './portal-probe.js';
import { exportRecords, userPaths, type ExportRecord } from './export-records.js';
import { checkUserHost, checkUserHostCached, kernelInitiatorUsable, userInitiatorName } from './host-check.js';
import { backsLun, buildChain, loginNode, loopsBacking, messageOf, mountpointOf, secretFile, teardownChain, type PlumbingDeps } from './lun-plumbing.js';
import { zIscsiUserOptions, type IscsiUserOptions } from './options.js';
import { exportNames, parseUserConnection, type ExportNames, type UserLun } from './user-connection.js';
import { ensureWatcher, watcherFiles, WatcherRestarts } from './watch-start.js';

/** The transport's registered name. */
export const NAME = 'iscsi-user';

/** The `driver_volume_type` it connects. */
export const PROTOCOLS = ['iscsi'] as const;

/** Above the kernel `iscsi` transport (0), below multipath (10): wins only where it `accepts`. */
export const PRIORITY = 5;

/** The `kind` of this transport's device identities. */
export const IDENTITY_KIND = 'iscsi-user';

/**
 * How long `upkeep` waits for the daemon lock: a holder is an operation working with the daemon
 * (a connect starts the watcher itself); the next round looks again.
 */
const UPKEEP_LOCK_MS = 5_000;

/** A watcher started again by `upkeep` sooner than this after the last one is logged at debug, not warn (one dying at start would warn every round). */
const WATCHER_RESTART_WARN_MS = 10 * 60_000;

/** One connected LUN's path, as `checkPaths` found it. */
export interface UserPathState {
  iqn: string;
  lun: number;
  device: string | undefined;
  /** The portal qemu's session uses, and whether it took a TCP connection within `portalProbeMs`. */
  portal: string;
  live: boolean;
  /** The LUN's other portals. */
  others: string[];
}

/** What `failover` did. */
export interface FailoverResult {
  /** The portal the LUN is served through now, and before the call. */
  portal: string;
  previous: string;
  /** False when nothing had to change (the path was live, or already on the asked portal). */
  switched: boolean;
  /** How long the switch itself took (login of the new path, re-point, removal of the old one), in ms. */
  ms: number;
}

/**
 * The `iscsi-user` transport, with its path operations: `repairPaths` (the contract's, which
 * reconcile and `berth agent` call) fails over through `failover`; `checkPaths` is the same probe
 * for callers that want every LUN's portals at once.
 */
export interface IscsiUserDriver extends TransportDriver {
  /** Every whole chain's LUN, with its paths' states (`active`/`failed` for the portal in use, `standby` for the others). */
  connected(): Promise<ConnectedDevice[]>;
  /** Fail a listed LUN whose portal in use is `failed` over to a live one (`failover` without a portal). */
  repairPaths(listed: ConnectedDevice, context: TransportCallContext): Promise<PathRepair>;
  /** Every connected LUN's path: its portal and whether it answers. A health check for reconcile or an agent; changes nothing. */
  checkPaths(signal?: AbortSignal): Promise<UserPathState[]>;
  /**
   * Move a connected LUN to another portal: to `portal` when given, else — only when its portal
   * does not answer — to the first live one of the others. Idempotent; also finishes a failover
   * that was cut short.
   */
  failover(connection: ConnectionInfo, options: { signal: AbortSignal; portal?: string }): Promise<FailoverResult>;
  /** Start the watcher again when it died while a LUN is connected on a running daemon (see the README, "watch"). */
  upkeep(signal: AbortSignal): Promise<void>;
}

/**
 * The `iscsi-user` transport: an iSCSI LUN as a real block device with no kernel initiator —
 * qemu-storage-daemon logs in (libiscsi), exports the LUN as a file through FUSE, and a loop device
 * (never with direct I/O) makes that file `/dev/loopN`. One supervised daemon per host.
 */
export function createIscsiUserDriver(context: PluginContext<Partial<IscsiUserOptions>>): IscsiUserDriver {
  const options = parseWith(zIscsiUserOptions, context.options ?? {}, 'iscsi-user transport options');
  const host = context.host;
  const paths = userPaths(context.dataDir);
  const logger = context.logger.child({ transport: NAME });
  const records = exportRecords(paths);
  const daemon = new StorageDaemon({ dir: paths.daemon, waiter: host.waiter, logger, binary: options.binary, startTimeoutMs: options.qmpTimeoutMs });
  const deps: PlumbingDeps = { host, paths, options, logger, ...(context.faults ? { faults: context.faults } : {}) };
  const supervisor = new DaemonSupervisor({ ...deps, daemon, records, afterRestore: () => watch() });
  const lunLocks = new KeyedLock();
  // Decided once per process by connectorProperties(), which the attach pipeline runs before it
  // selects a transport; `accepts` is synchronous and says no until then. The check's commands'
  // answers are kept in the data dir while the files they come from do not change.
  let autoSelected: Promise<boolean> | undefined;
  let autoSelectedNow = false;
  let initiator: Promise<string> | undefined;

  const ownInitiator = (): Promise<string> => (initiator ??= userInitiatorName(host, paths));

  function decideAutoSelect(): Promise<boolean> {
    autoSelected ??= (async () => {
      if (!options.autoSelect || (await kernelInitiatorUsable(host))) return false;
      return (await checkUserHostCached(host, options.binary, options.commandTimeoutMs, paths.hostCheck)).essential;
    })().then(
      (yes) => (autoSelectedNow = yes),
      () => (autoSelectedNow = false),
    );
    return autoSelected;
  }

  function deviceOf(record: ExportRecord, names: ExportNames): Device {
    return {
      path: record.loopDevice ?? '',
      type: 'block',
      identity: { kind: IDENTITY_KIND, rdev: record.rdev ?? '', export: names.exportId, node: names.node, mountpoint: mountpointOf(paths, names.key) },
      meta: { key: names.key, portal: record.portal },
    };
  }

  /** Whether a record's chain is whole: its export in the daemon, its loop device on the FUSE file. */
  async function healthy(qmp: QmpClient, record: ExportRecord, names: ExportNames): Promise<boolean> {
    if (record.status !== 'active' || record.loopDevice === undefined) return false;
    const exports = await listExports(qmp, { timeoutMs: options.qmpTimeoutMs });
    if (!exports.some((e) => e.id === names.exportId && !e['shutting-down'])) return false;
    const info = await loopInfo(host.fs, record.loopDevice);
    return info?.backingFile === mountpointOf(paths, names.key) && info.rdev === record.rdev;
  }

  /**
   * The data dir's watcher, started when it does not run (at every connect and after a restore,
   * under the daemon lock; `upkeep` too): without it, I/O on a dead target waits in D state until
   * the target returns. A watcher that cannot start fails no connect; `check()` says it is not running.
   */
  async function watch(): Promise<void> {
    const started = await ensureWatcher(host, context.dataDir, paths, options).catch((error: unknown) => {
      logger.warn({ err: messageOf(error) }, 'could not start the iscsi-user watcher: I/O on a dead target will wait until it returns');
      return undefined;
    });
    if (started?.started === true) logger.info({ pid: started.pid, log: watcherFiles(paths).logFile }, 'iscsi-user watcher started');
  }

  /**
   * Whether the watcher has work: a LUN recorded `active` on a running daemon. Reads the records
   * and the daemon's pid file only (no QMP, no lock): what `upkeep` asks every round.
   */
  async function watchWanted(): Promise<boolean> {
    if (!(await records.list()).some((record) => record.status === 'active')) return false;
    return (await daemon.status()).running;
  }

  /**
   * The transport's upkeep (`berth serve`, `berth agent`): a watcher that died (the OOM killer, an
   * admin's kill) while LUNs stay connected on a running daemon is started again, as a connect
   * would — under the daemon lock, so never two. Nothing connected, or no daemon running: nothing
   * is started (a daemon that died is the next operation's to restart and restore, and the restore
   * starts the watcher). Never starts qemu-storage-daemon. A busy lock skips the round. A watcher
   * that dies again before a round saw it running is started again with a growing wait
   * (`WatcherRestarts`: 10 s, doubled, up to 10 minutes).
   */
  let lastWatcherRestartMs = -Infinity;
  const watcherRestarts = new WatcherRestarts();
  async function upkeep(signal: AbortSignal): Promise<void> {
    if (options.noopIntervalS === 0) return;
    signal.throwIfAborted();
    // Cheap first, without the lock: nothing to watch, or the watcher runs (pid file + start time).
    if (!(await watchWanted())) return;
    if ((await daemonStatus(watcherFiles(paths).pidFile)).running) {
      watcherRestarts.running();
      return;
    }
    // One that died again since its last restart waits (backoff): it may die at start.
    if (!watcherRestarts.due(Date.now())) return;
    let release;
    try {
      release = await acquireFileLock(paths.lock, { timeoutMs: Math.min(options.lockTimeoutMs, UPKEEP_LOCK_MS), what: 'the user-space iSCSI daemon', signal });
    } catch (error) {
      if (!(error instanceof LockTimeoutError)) throw error;
      logger.debug({ lockPath: error.lockPath }, 'upkeep: the daemon lock is busy; looking at the watcher again at the next round');
      return;
    }
    try {
      // Decided again under the lock: a disconnect may have removed the last LUN meanwhile.
      if (!(await watchWanted())) return;
      const started = await ensureWatcher(host, context.dataDir, paths, options);
      if (started?.started === true) {
        const now = Date.now();
        watcherRestarts.restarted(now);
        const fields = { pid: started.pid, log: watcherFiles(paths).logFile, nextRestartAfterMs: watcherRestarts.nextWaitMs };
        if (now - lastWatcherRestartMs >= WATCHER_RESTART_WARN_MS) logger.warn(fields, 'the iscsi-user watcher was not running while LUNs are connected: started it again');
        else logger.debug(fields, 'the iscsi-user watcher was not running again: started it again (if it keeps dying, see its log)');
        lastWatcherRestartMs = now;
      }
    } finally {
      await release();
    }
  }

  async function removeSecrets(key: string): Promise<void> {
    await rm(secretFile(paths, key), { force: true });
    await rm(secretFile(paths, key, 'in'), { force: true });
  }

  async function connectLun(lun: UserLun, call: TransportCallContext, qmp: QmpClient): Promise<Device> {
    const names = exportNames(lun.iqn, lun.lun);
    const existing = await records.load(names.key);
    if (existing && (await healthy(qmp, existing, names))) {
      if (existing.readOnly !== lun.readOnly) {
        throw new BerthError('CONFLICT', `LUN ${lun.lun} of ${lun.iqn} is connected ${existing.readOnly ? 'read-only' : 'read-write'} at ${existing.loopDevice}`, {
          hint: 'detach it first, then attach it in the other mode',
          details: { device: existing.loopDevice },
        });
      }
      await watch();
      return deviceOf(existing, names);
    }
    // Whatever a cut-short connect or a failed restore left goes first; a new chain is built. A
    // connect records the LUN before it makes anything, so without a record there is nothing.
    // A record that is not `active` was handed to nobody or lost its export (failed by the watcher
    // or a restore: nothing written through its device can reach the target any more), so a flush
    // that fails there does not stop its removal; a dead FUSE mount left at its mount point is
    // unmounted (`teardownChain`).
    const cleanup = existing
      ? await teardownChain(deps, qmp, names, existing.status === 'active' ? existing.loopDevice : undefined, call.signal, { force: existing.status !== 'active' })
      : 'removed';
    if (cleanup === 'held-open') {
      throw new BerthError('CONFLICT', `an earlier loop device of LUN ${lun.lun} of ${lun.iqn} is still held open`, {
        hint: `close what holds it (losetup --list shows its backing file ${mountpointOf(paths, names.key)}), then connect again`,
      });
    }
    const who = call.connector?.initiator ?? (await ownInitiator());
    const portal = await firstLivePortal(lun.portals, options.portalProbeMs, call.signal);
    // The portal qemu logs in to is the one the target proves itself on (not the first listed:
    // with it dead, the check failed as a mutual CHAP failure; with it alive but another chosen
    // later, the session's target was never checked).
    if (lun.auth?.passwordIn !== undefined) await verifyTarget(lun.iqn, lun.lun, portal, who, lun.auth, call.signal);
    const record: ExportRecord = {
      volumeId: names.key,
      iqn: lun.iqn,
      lun: lun.lun,
      portal,
      portals: lun.portals,
      initiator: who,
      ...(lun.auth ? { username: lun.auth.username } : {}),
      ...(lun.auth?.usernameIn !== undefined && lun.auth.passwordIn !== undefined ? { usernameIn: lun.auth.usernameIn } : {}),
      readOnly: lun.readOnly,
      ...(call.volumeId === undefined ? {} : { berthVolumeId: call.volumeId }),
      status: 'connecting',
      ...(existing?.loopDevice === undefined ? {} : { loopDevice: existing.loopDevice }),
      updatedAt: new Date().toISOString(),
    };
    await records.save(record);
    try {
      if (lun.auth) await writeSecretFile(secretFile(paths, names.key), lun.auth.password);
      if (lun.auth?.usernameIn !== undefined && lun.auth.passwordIn !== undefined) await writeSecretFile(secretFile(paths, names.key, 'in'), lun.auth.passwordIn);
      // The device the volume had before (a failed restore, a reconnect) when it is free again.
      const previous = existing?.loopDevice;
      const reuse = previous !== undefined && (await loopInfo(host.fs, previous))?.backingFile === undefined && (await host.fs.exists(previous));
      const device = await buildChain(deps, qmp, {
        names,
        portal,
        iqn: lun.iqn,
        lun: lun.lun,
        initiator: who,
        ...(lun.auth ? { username: lun.auth.username } : {}),
        readOnly: lun.readOnly,
        ...(reuse ? { loopDevice: previous } : {}),
      }, call.signal);
      const info = await loopInfo(host.fs, device);
      if (!info || info.backingFile !== mountpointOf(paths, names.key) || info.directIo || info.sizeBytes === 0) {
        throw new BerthError('DRIVER_ERROR', `${device} is not the expected loop device on ${mountpointOf(paths, names.key)}`, { details: { device } });
      }
      const active: ExportRecord = { ...record, status: 'active', loopDevice: device, rdev: info.rdev, updatedAt: new Date().toISOString() };
      delete active.failure;
      await records.save(active);
      logger.info({ device, iqn: lun.iqn, lun: lun.lun, portal, sizeBytes: info.sizeBytes }, 'iSCSI LUN connected through qemu-storage-daemon');
      await watch();
      return deviceOf(active, names);
    } catch (error) {
      // An abort or a deadline can land anywhere: leave nothing, with a deadline of its own. The
      // chain was handed to nobody, so nothing written through it is lost: a failed flush does not stop the undo.
      const undo = AbortSignal.timeout(options.commandTimeoutMs + options.qmpTimeoutMs);
      const left = await teardownChain({ host, paths, options, logger }, qmp, names, undefined, undo, { force: true }).then(
        (outcome) => (outcome === 'held-open' ? `its loop device on ${mountpointOf(paths, names.key)} is held open by another process` : undefined),
        (e: unknown) => `undoing it failed: ${messageOf(e)}`,
      );
      if (left === undefined) {
        await removeSecrets(names.key);
        await records.remove(names.key);
        throw error;
      }
      // What is left stays recorded (and its secret with it), so that a disconnect or reconcile finds and removes it.
      logger.warn({ key: names.key, err: left }, 'could not undo a failed connect; its record is kept, failed');
      // The device it left (the chain's, on its FUSE file), so that a restore after a daemon death releases it too.
      const [leftDevice] = await loopsBacking({ host }, mountpointOf(paths, names.key)).catch(() => []);
      await records
        .save({
          ...record,
          ...(leftDevice === undefined ? {} : { loopDevice: leftDevice }),
          status: 'failed',
          failure: `a connect failed (${messageOf(error)}) and ${left}; detach it (--force) to remove what is left`,
          updatedAt: new Date().toISOString(),
        })
        .catch((e: unknown) => logger.warn({ key: names.key, err: messageOf(e) }, 'could not mark the record of a failed connect failed'));
      if (BerthError.is(error)) error.details.leftover = left;
      throw error;
    }
  }

  /**
   * Mutual CHAP: qemu's session cannot check the target, so a libiscsi login to the portal qemu
   * is about to log in to does, right before (at connect, and at a failover to another portal).
   */
  async function verifyTarget(iqn: string, lunNumber: number, portal: string, who: string, auth: NonNullable<UserLun['auth']>, signal: AbortSignal): Promise<void> {
    if (!auth.usernameIn || !auth.passwordIn) return;
    if (options.mutualChap === 'refuse') {
      throw new BerthError('UNPROCESSABLE', 'this connection asks for mutual CHAP, which qemu-storage-daemon\'s iSCSI driver cannot check', {
        hint: 'use the kernel iscsi transport (--transport iscsi) on a host that has it, or set the iscsi-user option mutualChap to verify-first',
      });
    }
    const result = await host.runner
      .run('iscsi-inq', ['-i', who, `iscsi://${portal}/${iqn}/${lunNumber}`], {
        timeoutMs: options.commandTimeoutMs,
        signal,
        reject: false,
        secrets: [auth.password, auth.passwordIn],
        env: {
          LIBISCSI_CHAP_USERNAME: auth.username,
          LIBISCSI_CHAP_PASSWORD: auth.password,
          LIBISCSI_CHAP_TARGET_USERNAME: auth.usernameIn,
          LIBISCSI_CHAP_TARGET_PASSWORD: auth.passwordIn,
        },
      })
      .catch((error: unknown) => error);
    if (result instanceof Error || (result as { notFound?: boolean }).notFound) {
      throw new BerthError('HOST_UNSUPPORTED', 'mutual CHAP needs iscsi-inq (libiscsi-bin) to check the target', {
        hint: 'apt-get install -y libiscsi-bin',
      });
    }
    const { exitCode, stdout, stderr } = result as { exitCode: number; stdout: string; stderr: string };
    if (exitCode !== 0) {
      const said = `${stdout}${stderr}`.trim().split('\n').slice(-1)[0] ?? '';
      throw new BerthError('AUTH_FAILED', `the target ${iqn} at ${portal} failed mutual CHAP (or refused the login): ${said.replaceAll(auth.password, '***').replaceAll(auth.passwordIn, '***')}`, {
        hint: 'check auth_username_in/auth_password_in (the target\'s own account) and auth_username/auth_password',
        details: { portal, iqn },
      });
    }
  }

  async function disconnectLun(lun: UserLun, device: Device | undefined, opts: DisconnectOptions, qmp: QmpClient): Promise<void> {
    const names = exportNames(lun.iqn, lun.lun);
    const mountpoint = mountpointOf(paths, names.key);
    const record = await records.load(names.key);
    const candidates = device?.path ? [device.path] : record?.loopDevice ? [record.loopDevice] : await loopsBacking(deps, mountpoint);
    // A device another attachment uses at a candidate's path is this volume's only while it backs
    // this export's FUSE file: the kernel may have reused the number for another volume's device.
    const backsThisExport = async (devicePath: string): Promise<boolean> => {
      try {
        return (await loopInfo(host.fs, devicePath))?.backingFile === mountpoint;
      } catch {
        return false;
      }
    };
    for (const used of opts.inUse ?? []) {
      // By its path only when the record names no export: one naming another export is that
      // volume's lost device, whose number the kernel gave to this one.
      const otherExport = typeof used.identity?.['export'] === 'string' && used.identity['export'] !== names.exportId;
      if (used.identity?.export === names.exportId || (!otherExport && candidates.includes(used.path) && (await backsThisExport(used.path)))) {
        logger.info({ key: names.key, device: used.path }, 'not disconnecting: another attachment on this host uses the device');
        return;
      }
    }
    // The recorded path may name another file now (the kernel reused the loop number after a
    // crash between detach and export removal): that device is never touched. This transport
    // finds its own chain by names only it uses (the FUSE file, the export and node ids), so that
    // chain is still removed; then the mismatch is reported (unless forced).
    let mismatch: BerthError | undefined;
    if (device?.path && device.identity?.kind === IDENTITY_KIND) {
      const info = await loopInfo(host.fs, device.path);
      // Its number bound to this LUN's placeholder (a restore that could not rebuild it) is still its own.
      const own = backsLun(paths, names.key, info?.backingFile);
      if (info?.backingFile !== undefined && (!own || info.rdev !== device.identity.rdev)) {
        mismatch = new BerthError('CONFLICT', `${device.path} is no longer the device of LUN ${lun.lun} of ${lun.iqn}: it backs ${info.backingFile}`, {
          hint: `berth left ${device.path} alone and removed its own export of this LUN; detach --force finishes the detach`,
          details: { reason: 'identity-mismatch', device: device.path, expected: mountpoint, found: info.backingFile },
        });
        candidates.splice(0, candidates.length, ...(await loopsBacking(deps, mountpoint)));
      }
    }
    const loop = candidates.find(() => true);
    const loopBacking = loop === undefined ? undefined : (await loopInfo(host.fs, loop))?.backingFile;
    // Its FUSE file's device, or its number held on its placeholder (a restore that could not rebuild it): either is checked for holders.
    const ownLoop = loop !== undefined && backsLun(paths, names.key, loopBacking) ? loop : undefined;
    // Before anything is removed: a held device is refused untouched (the detach rolls back into
    // attached), not found held halfway through the teardown.
    if (ownLoop !== undefined && !opts.force) {
      await refuseIfHeld(host, [{ node: ownLoop, sysName: path.basename(ownLoop) }], { graceMs: options.holderGraceMs, timeoutMs: options.commandTimeoutMs, signal: opts.signal });
    }
    const outcome = await teardownChain(deps, qmp, names, ownLoop, opts.signal, {
      force: opts.force,
    });
    if (outcome === 'held-open') {
      throw new BerthError('CONFLICT', `${loop ?? 'the loop device'} of LUN ${lun.lun} of ${lun.iqn} is still open: it was not disconnected`, {
        hint: `close what holds it (fuser -v ${loop ?? '/dev/loopN'}; unmount its filesystem), then detach again`,
        details: { device: loop },
      });
    }
    await removeSecrets(names.key);
    await records.remove(names.key);
    logger.info({ iqn: lun.iqn, lun: lun.lun, device: loop }, 'iSCSI LUN disconnected from qemu-storage-daemon');
    // No record: nothing of this LUN was left (a connect saves it first, a disconnect removes it
    // last) — a disconnect repeated after one that finished, the number since reused. Done.
    if (mismatch && !opts.force && record !== undefined) throw mismatch;
    if (mismatch) logger.warn({ device: device?.path, found: mismatch.details.found }, 'the recorded loop device now backs another file: left alone');
  }

  /**
   * The switch: log in through `portal` as the LUN's other protocol node, re-point the filter the
   * export names at it, delete the old node (its logout waits at most `requestTimeoutS` on a dead
   * path). The record names the new node before the re-point, so a cut-short failover is finished
   * (or undone) by the next call, and a restore after a daemon death logs in where it should.
   */
  async function failoverLun(lun: UserLun, wanted: string | undefined, signal: AbortSignal, qmp: QmpClient): Promise<FailoverResult> {
    const started = performance.now();
    const names = exportNames(lun.iqn, lun.lun);
    let record = await records.load(names.key);
    if (!record || record.status !== 'active' || !(await healthy(qmp, record, names))) {
      throw new BerthError('INVALID_STATE', `LUN ${lun.lun} of ${lun.iqn} is not connected through this transport`, {
        hint: 'attach the volume first; a LUN lost with its daemon is reconnected by berth reconcile',
      });
    }
    if (wanted !== undefined && !record.portals.includes(wanted)) {
      throw new BerthError('VALIDATION', `${wanted} is not a portal of ${lun.iqn} (${record.portals.join(', ')})`, { hint: 'name one of the portals the connection lists' });
    }
    const qmpOptions = { timeoutMs: options.qmpTimeoutMs, signal };
    // Deleting a node logs its session out, synchronously: on a dead path libiscsi gives up after requestTimeoutS.
    const logoutOptions = { timeoutMs: options.qmpTimeoutMs + options.requestTimeoutS * 1000, signal };
    // A failover cut short: the node it recorded is either the filter's child now (the re-point
    // finished after its caller gave up) or an unused leftover.
    const pending = record.failover;
    const current = record.node ?? names.node;
    const spare = current === names.node ? names.nodeB : names.node;
    if (pending) {
      const old = await removeUnusedNode(qmp, current, logoutOptions);
      if (old === 'removed') record = { ...record, portal: pending.portal, node: pending.node };
      else await removeUnusedNode(qmp, pending.node, logoutOptions);
      delete record.failover;
      await records.save({ ...record, updatedAt: new Date().toISOString() });
    } else if ((await removeUnusedNode(qmp, spare, logoutOptions)) === 'in-use') {
      throw new BerthError('INVALID_STATE', `LUN ${lun.lun} of ${lun.iqn} has two paths in use, which berth did not record`, { hint: 'detach the volume and attach it again' });
    }
    const previous = record.portal;
    const active = record.node ?? names.node;
    if (wanted === previous || (wanted === undefined && (await portalAnswers(previous, signal)))) {
      return { portal: previous, previous, switched: false, ms: performance.now() - started };
    }
    const portal = wanted ?? (await firstLivePortal(record.portals.filter((p) => p !== previous), options.portalProbeMs, signal));
    // Mutual CHAP: the new portal's target proves itself before qemu's session goes there.
    if (record.usernameIn !== undefined) await verifyTarget(record.iqn, record.lun, portal, record.initiator, await storedMutualAuth(record, names.key), signal);
    const next = active === names.node ? names.nodeB : names.node;
    await loginNode(deps, qmp, {
      names,
      portal,
      iqn: record.iqn,
      lun: record.lun,
      initiator: record.initiator,
      ...(record.username === undefined ? {} : { username: record.username }),
      readOnly: record.readOnly,
    }, next, signal, 'shared');
    await records.save({ ...record, failover: { node: next, portal }, updatedAt: new Date().toISOString() });
    await deps.faults?.hit('iscsi-user.failover.after-login');
    await repointFilter(qmp, { nodeName: names.filter, file: next, readOnly: record.readOnly }, qmpOptions);
    await deps.faults?.hit('iscsi-user.failover.after-repoint');
    const moved: ExportRecord = { ...record, portal, node: next, updatedAt: new Date().toISOString() };
    delete moved.failover;
    await records.save(moved);
    await removeUnusedNode(qmp, active, logoutOptions);
    logger.info({ iqn: lun.iqn, lun: lun.lun, portal, previous }, 'iSCSI LUN moved to another portal');
    return { portal, previous, switched: true, ms: performance.now() - started };
  }

  /** The CHAP accounts a mutual-CHAP connect stored for its LUN (`secrets/<key>`, `secrets/<key>.in`). */
  async function storedMutualAuth(record: ExportRecord, key: string): Promise<NonNullable<UserLun['auth']>> {
    const read = async (which?: 'in'): Promise<string | undefined> => (await readFile(secretFile(paths, key, which), 'utf8').catch(() => undefined)) || undefined;
    const [password, passwordIn] = await Promise.all([read(), read('in')]);
    if (record.username === undefined || record.usernameIn === undefined || password === undefined || passwordIn === undefined) {
      throw new BerthError('INVALID_STATE', `LUN ${record.lun} of ${record.iqn} was connected with mutual CHAP, but its stored secrets are gone; not failing over to a target nobody checked`, {
        hint: 'detach the volume and attach it again (the connect stores them again)',
      });
    }
    return { username: record.username, password, usernameIn: record.usernameIn, passwordIn };
  }

  /** See `IscsiUserDriver.failover`. */
  async function failover(connection: ConnectionInfo, opts: { signal: AbortSignal; portal?: string }): Promise<FailoverResult> {
    const lun = parseUserConnection(connection, 'locate');
    const key = exportNames(lun.iqn, lun.lun).key;
    try {
      return await lunLocks.withLock(key, () => supervisor.use(opts.signal, (qmp) => failoverLun(lun, opts.portal, opts.signal, qmp)), opts.signal);
    } catch (error) {
      const berthError = toBerthError(error, 'DRIVER_ERROR');
      // A QMP command without an answer, or a monitor that never greets (WaitTimeoutError); not a
      // portal that does not answer (TIMEOUT too, `portal-unreachable`: said as it is).
      const daemonSilent =
        (berthError.code === 'TIMEOUT' && berthError.details.lockPath === undefined && berthError.details.reason !== 'portal-unreachable') || error instanceof WaitTimeoutError;
      if (daemonSilent) {
        // qemu 7.2: a request parked on a dead path freezes QMP (the FUSE export serves it in
        // the main loop), and a re-open's drain waits for it: nothing moves until the path answers.
        throw new BerthError('TIMEOUT', `failing over LUN ${lun.lun} of ${lun.iqn}: qemu-storage-daemon did not answer within ${options.qmpTimeoutMs} ms — I/O is waiting on a dead path`, {
          hint: 'qemu 7.2 cannot move requests already in flight; they go on when the old path answers again — run the failover again then (it finishes or undoes this one)',
          details: berthError.details,
          cause: berthError,
        });
      }
      throw contextual(`failing over LUN ${lun.lun} of ${lun.iqn}`, error);
    }
  }

  async function portalAnswers(portal: string, signal: AbortSignal): Promise<boolean> {
    return answers(portal, options.portalProbeMs, signal);
  }

  return {
    name: NAME,
    protocols: PROTOCOLS,
    priority: PRIORITY,
    sourceKeys: ISCSI_SOURCE_KEYS,

    accepts(): boolean {
      return autoSelectedNow;
    },

    async connectorProperties(): Promise<Partial<Connector>> {
      await decideAutoSelect();
      return { initiator: await ownInitiator() };
    },

    async connect(connection: ConnectionInfo, call: TransportCallContext): Promise<Device> {
      const lun = parseUserConnection(connection, 'connect');
      call.signal.throwIfAborted();
      const key = exportNames(lun.iqn, lun.lun).key;
      try {
        return await lunLocks.withLock(key, () => supervisor.use(call.signal, (qmp) => connectLun(lun, call, qmp)), call.signal);
      } catch (error) {
        throw contextual(`connecting LUN ${lun.lun} of ${lun.iqn}`, error);
      }
    },

    async disconnect(connection: ConnectionInfo, device: Device | undefined, opts: DisconnectOptions): Promise<void> {
      const lun = parseUserConnection(connection, 'locate');
      const key = exportNames(lun.iqn, lun.lun).key;
      try {
        await lunLocks.withLock(key, () => supervisor.use(opts.signal, (qmp) => disconnectLun(lun, device, opts, qmp)), opts.signal);
      } catch (error) {
        throw contextual(`disconnecting LUN ${lun.lun} of ${lun.iqn}`, error);
      }
    },

    async connected(): Promise<ConnectedDevice[]> {
      const signal = AbortSignal.timeout(options.qmpTimeoutMs + options.lockTimeoutMs);
      // Nothing to list, and no daemon to start for it: a failed LUN is never listed (its chain is
      // gone until a reconnect or detach). The watcher's restore after an abort is this call: one
      // that started a daemon beside the failed LUN's detach left it running a moment after.
      if ((await records.list()).every((record) => record.status === 'failed')) return [];
      const whole = await supervisor.use(signal, async (qmp) => {
        const out: ExportRecord[] = [];
        for (const record of await records.list()) if (await healthy(qmp, record, exportNames(record.iqn, record.lun))) out.push(record);
        return out;
      });
      // Each LUN's paths with their state: the portal in use, probed (once per portal, outside the
      // daemon's monitor), and the others it could move to. qemu 7.2 sends no event when a path dies.
      const probe = AbortSignal.timeout(options.portalProbeMs * 2 + 1_000);
      const answers = new Map<string, Promise<boolean>>();
      const answering = (portal: string): Promise<boolean> => {
        if (!answers.has(portal)) answers.set(portal, portalAnswers(portal, probe).catch(() => false));
        return answers.get(portal)!;
      };
      return Promise.all(
        whole.map(async (record) => {
          const live = await answering(record.portal);
          const device = deviceOf(record, exportNames(record.iqn, record.lun));
          device.paths = [
            { portal: record.portal, state: live ? 'active' : 'failed' },
            ...record.portals.filter((p) => p !== record.portal).map((portal) => ({ portal, state: 'standby' })),
          ];
          return { device, source: { target_iqn: record.iqn, target_lun: record.lun, target_portal: record.portal } };
        }),
      );
    },

    async repairPaths(listed: ConnectedDevice, context: TransportCallContext): Promise<PathRepair> {
      const iqn = listed.source.target_iqn;
      const lunNumber = listed.source.target_lun;
      if (typeof iqn !== 'string' || typeof lunNumber !== 'number') {
        throw new BerthError('VALIDATION', 'repairPaths: the listed device names no target_iqn and target_lun', { hint: 'pass a device as connected() lists it' });
      }
      const names = exportNames(iqn, lunNumber);
      const record = await records.load(names.key);
      // The very device listed (identity: a LUN detached and attached again meanwhile is another device).
      if (!record || record.status !== 'active' || record.loopDevice !== listed.device.path || (record.rdev ?? '') !== (listed.device.identity?.rdev ?? '')) {
        return { changed: false, detail: `LUN ${lunNumber} of ${iqn} is no longer connected at ${listed.device.path}` };
      }
      const result = await failover({ driver_volume_type: 'iscsi', data: { target_iqn: iqn, target_lun: lunNumber, target_portal: record.portal } }, { signal: context.signal });
      return result.switched
        ? { changed: true, detail: `LUN ${lunNumber} of ${iqn} moved from ${result.previous} to ${result.portal} in ${Math.round(result.ms)} ms` }
        : { changed: false, detail: `LUN ${lunNumber} of ${iqn}: its portal ${result.portal} answers` };
    },

    async checkPaths(signal = AbortSignal.timeout(options.portalProbeMs * 4 + options.lockTimeoutMs)): Promise<UserPathState[]> {
      const out: UserPathState[] = [];
      for (const record of await records.list()) {
        if (record.status !== 'active') continue;
        out.push({
          iqn: record.iqn,
          lun: record.lun,
          device: record.loopDevice,
          portal: record.portal,
          live: await portalAnswers(record.portal, signal),
          others: record.portals.filter((p) => p !== record.portal),
        });
      }
      return out;
    },

    failover,

    upkeep,

    async check(): Promise<CheckResult> {
      const { checks, fixes, essential } = await checkUserHost(host, options.binary, options.commandTimeoutMs);
      const kernel = await kernelInitiatorUsable(host);
      checks.push({
        name: 'kernel iSCSI initiator',
        ok: true,
        detail: kernel ? 'present: the iscsi transport is preferred; force this one with --transport iscsi-user' : 'absent: iscsi volumes use this transport',
      });
      const failed = (await records.list()).filter((r) => r.status === 'failed');
      if (failed.length > 0) {
        checks.push({ name: 'exports lost when qemu-storage-daemon died', ok: false, detail: failed.map((r) => `${r.iqn} LUN ${r.lun}: ${r.failure ?? 'failed'}`).join('; ') });
        fixes.push('run berth reconcile: it reconnects the failed exports (a dead target once it answers again) or marks their attachments failed; what a failed connect left goes with berth detach --force of its volume (each entry says)');
      }
      const status = await daemon.status();
      checks.push({ name: 'qemu-storage-daemon', ok: true, detail: status.running ? `running as pid ${status.pid}` : 'not running (started on first use)' });
      const watcher = await daemonStatus(watcherFiles(paths).pidFile);
      // A watcher gone while LUNs are connected on a running daemon leaves their I/O to wait in
      // D state for as long as a target is dead: not ok (it was reported ok, an explorer's kill).
      const unwatched = options.noopIntervalS !== 0 && !watcher.running ? (await records.list()).filter((r) => r.status === 'active') : [];
      const watchOk = unwatched.length === 0 || !status.running;
      checks.push({
        name: 'dead-target watch',
        ok: watchOk,
        detail:
          options.noopIntervalS === 0
            ? 'off (noopIntervalS 0): I/O on a dead target waits until it returns'
            : watcher.running
              ? `running as pid ${watcher.pid}: a portal silent for ${options.replacementTimeoutS} s gets its LUN's I/O failed (EIO); log ${watcherFiles(paths).logFile}`
              : watchOk
                ? 'not running (started at the next connect, and by the upkeep of berth serve or berth agent within upkeep.intervalMs while a LUN is connected)'
                : `not running while ${unwatched.length} LUN(s) are connected (${unwatched.map((r) => `${r.iqn} LUN ${r.lun}`).join(', ')}): I/O on a dead target would wait until it returns; log ${watcherFiles(paths).logFile}`,
      });
      if (!watchOk) fixes.push('the watcher is started again by the next iscsi-user attach, or within upkeep.intervalMs by berth serve or berth agent; if it keeps dying, read its log');
      const ok = essential && failed.length === 0 && watchOk;
      return ok
        ? { ok, summary: `iscsi-user: usable (qemu-storage-daemon, FUSE, loop)${kernel ? '; the kernel initiator is preferred' : ''}`, checks }
        : {
            ok,
            summary: !essential
              ? `iscsi-user: not usable here (${checks.filter((c) => !c.ok).map((c) => c.name).join(', ')})`
              : failed.length > 0
                ? `iscsi-user: ${failed.length} export(s) lost (${failed.map((r) => `${r.iqn} LUN ${r.lun}`).join(', ')}; a dead qemu-storage-daemon, a dead target, or a failed connect)${watchOk ? '' : '; the dead-target watcher is not running'}`
                : `iscsi-user: the dead-target watcher is not running while ${unwatched.length} LUN(s) are connected`,
            checks,
            fix: fixes.join('; '),
          };
    },
  };
}

function contextual(what: string, error: unknown): BerthError {
  const berthError = toBerthError(error, 'DRIVER_ERROR');
  if (berthError.message.startsWith(what)) return berthError;
  return new BerthError(berthError.code, `${what}: ${berthError.message}`, {
    ...(berthError.hint === undefined ? {} : { hint: berthError.hint }),
    details: berthError.details,
    cause: berthError,
  });
}
