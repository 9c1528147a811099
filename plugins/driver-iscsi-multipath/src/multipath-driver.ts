import path from 'node:path';
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
  type DevicePath,
  type DisconnectOptions,
  type PluginContext,
  type TransportCallContext,
  type TransportDriver,
} from '@berth/core';
import {
  FailureList,
  IscsiadmClient,
  MultipathClient,
  TargetUsage,
  deleteScsiDevice,
  devPath,
  deviceIsTargetLun,
  lunDeviceName,
  scanAndWait,
  scsiWwnOf,
  sdevDirOf,
  waitForDeviceGone,
  zStateVolumeId,
  type LunDevice,
  type LunDeviceHost,
  findIscsiSession,
  formatHctl,
  formatPortal,
  holdersOf,
  readInitiatorName,
  readIscsiSession,
  scsiDeviceOf,
  sessionBlockDevices,
  slavesOf,
  toPortal,
  withRetry,
  type RetryPolicy,
} from '@berth/iscsi';
import { AttachStateStore, type AttachPath, type AttachState } from './attach-state.js';
import { discoverPaths } from './discovery.js';
import { checkMultipathHost } from './host-check.js';
import { lunKey, parseMultipathConnection, targetKey, volumeKey, type ChapCredentials, type MultipathVolume, type PathTarget } from './multipath-connection.js';
import { ensureMap, readMap, removeMap, waitForSlaves, waitUntilUsable, type MapHost, type MultipathMap } from './multipath-map.js';
import { zMultipathDriverOptions, type MultipathDriverOptions } from './options.js';
import { locatePaths, pathsOfDevice, pathsOfState, type LocatedPath } from './path-locate.js';
import { closeSession, messageOf, openSession, portalBudget, type PortalSessionHost, type SessionProgress, type UsableSession } from './portal-session.js';

/** The transport's registered name. */
export const NAME = 'iscsi-multipath';

/** The `driver_volume_type` values it connects. */
export const PROTOCOLS = ['iscsi'] as const;

/** Above the single-path `iscsi` transport (0): core picks this one whenever it `accepts`. */
export const PRIORITY = 10;

/** Where attach states live under berth's data directory. */
export const STATE_SUBDIR = path.join('driver-iscsi-multipath', 'attachments');

/** Backoff of retried iscsiadm runs: 250 ms doubling, at most 4 s, with jitter. */
const BACKOFF = { baseDelayMs: 250, maxDelayMs: 4_000 } as const;

/** What became of one path in a connect. */
export type PathState = 'active' | 'failed' | 'refused' | 'not-in-map' | 'unused';

/** Everything one path of a connect did, so that a failure undoes exactly that. */
interface PathProgress extends SessionProgress {
  /** Counted in `TargetUsage.inflight`. */
  registered: boolean;
  session?: UsableSession;
  /** A scan went out for a LUN that had no device before. */
  scanned: boolean;
}

/** One path's outcome. */
interface PathOutcome {
  target: PathTarget;
  /** `up`: session and device are there; the rest did not make it. */
  status: 'up' | 'failed' | 'refused' | 'unused';
  device?: LunDevice;
  wwn?: string;
  error?: BerthError;
  progress: PathProgress;
}

/** The enforce flag of the connector core passes in the call context. */
function enforceOf(call: TransportCallContext): boolean {
  return call.connector?.enforce_multipath === true;
}

/**
 * The `iscsi-multipath` transport: every portal of an iSCSI volume logged in in parallel, one
 * dm-multipath device over all its paths. Locks: one queue per volume (its connects and
 * disconnects take turns) and one per target and portal (session setup and logout decisions);
 * never one for the whole host, so a dead portal delays only what goes through it.
 */
export function createMultipathDriver(context: PluginContext<Partial<MultipathDriverOptions>>): TransportDriver {
  const options = parseWith(zMultipathDriverOptions, context.options ?? {}, 'iscsi-multipath transport options');
  const { runner, fs, waiter } = context.host;
  const logger = context.logger.child({ transport: NAME });
  const retry: RetryPolicy = { attempts: options.loginRetries + 1, ...BACKOFF };
  const iscsiadm = new IscsiadmClient({
    runner,
    timeoutMs: options.commandTimeoutMs,
    retry,
    onRetry: (event) => logger.warn({ op: event.op, attempt: event.attempt, delayMs: Math.round(event.delayMs), error: messageOf(event.error) }, 'iscsiadm failed; retrying'),
  });
  const probeClient = new IscsiadmClient({ runner, timeoutMs: options.commandTimeoutMs, retry: { attempts: 1, ...BACKOFF } });
  const multipath = new MultipathClient({ runner, timeoutMs: options.commandTimeoutMs });
  const states = new AttachStateStore(path.join(context.dataDir, STATE_SUBDIR));
  const volumeLocks = new KeyedLock();
  const targetLocks = new KeyedLock();
  const usage = new TargetUsage();
  const sessionHost: PortalSessionHost = { fs, runner, waiter, iscsiadm, options, retry, logger };
  const deviceHost: LunDeviceHost = { fs, waiter, runner, logger };
  const mapHost: MapHost = { fs, waiter, multipath, logger, commandTimeoutMs: options.commandTimeoutMs };

  /** Cleanup runs on its own clock: the operation's signal has often fired already. */
  const cleanupSignal = (): AbortSignal => AbortSignal.timeout(options.commandTimeoutMs + options.deviceTimeoutMs);

  // ---------------------------------------------------------------------------------------------
  // connect

  /**
   * One path: session (its login within `portalTimeoutMs`), targeted scan, device, WWN. Never
   * throws: a failed path is undone and reported in its outcome.
   */
  async function connectPath(target: PathTarget, auth: ChapCredentials | undefined, signal: AbortSignal, recordByDiscovery: boolean): Promise<PathOutcome> {
    const key = targetKey(target);
    const progress: PathProgress = { createdRecord: recordByDiscovery, loggedIn: false, registered: false, scanned: false };
    try {
      const session = await targetLocks.withLock(
        key,
        async () => {
          const opened = await openSession(sessionHost, target, auth, signal, progress, cleanupSignal);
          usage.enter(key, progress.loggedIn ? { createdRecord: progress.createdRecord } : undefined);
          progress.registered = true;
          return opened;
        },
        signal,
      );
      progress.session = session;
      let name = await lunDeviceName(fs, session, target.kernelLun);
      if (name === undefined || !(await fs.exists(devPath(name)))) {
        // A device that was in sysfs before the scan is not this connect's to delete on failure.
        const scannedBefore = name !== undefined;
        name = await scanAndWait(deviceHost, target, session, {
          timeoutMs: options.deviceTimeoutMs,
          attempts: options.scanAttempts,
          signal,
          onScan: () => {
            if (!scannedBefore) progress.scanned = true;
          },
          transport: NAME,
          namePortal: true,
        });
      }
      signal.throwIfAborted();
      const device: LunDevice = (await deviceIsTargetLun(fs, name, target)) ?? {
        name,
        sid: session.sid,
        hctl: { host: session.hostNumber, channel: 0, target: 0, lun: target.kernelLun },
      };
      const wwn = await scsiWwnOf(fs, name);
      logger.info({ iqn: target.iqn, portal: target.portalText, lun: target.lun, device: devPath(name), wwn }, 'path up');
      return { target, status: 'up', device, ...(wwn === undefined ? {} : { wwn }), progress };
    } catch (error) {
      const failure = pathError(target, error);
      logger.warn({ iqn: target.iqn, portal: target.portalText, lun: target.lun, error: failure.message }, 'path failed');
      await releasePath(target, progress);
      return { target, status: 'failed', error: failure, progress };
    }
  }

  /**
   * Undo what a path of a connect did that is not kept: the device its own scan made, then its
   * login and record when no other LUN or connect uses the session. Never throws.
   */
  async function releasePath(target: PathTarget, progress: PathProgress): Promise<void> {
    const signal = cleanupSignal();
    const key = targetKey(target);
    try {
      if (progress.scanned && progress.session !== undefined) {
        // The scan may have made the device after the wait gave up; it was never handed out.
        const name = await lunDeviceName(fs, progress.session, target.kernelLun);
        const sdevDir = name === undefined ? undefined : await sdevDirOf(fs, name);
        if (name !== undefined && (await deleteScsiDevice(fs, name)) === 'deleted') {
          await waitForDeviceGone(deviceHost, name, sdevDir, options.deviceTimeoutMs, signal);
          logger.info({ device: devPath(name), portal: target.portalText }, 'undo: deleted the device this connect scanned');
        }
        progress.scanned = false;
      }
    } catch (error) {
      logger.warn({ iqn: target.iqn, portal: target.portalText, error: messageOf(error) }, 'undo: could not delete the scanned device');
    }
    if (!progress.registered) return;
    try {
      await targetLocks.withLock(key, async () => {
        usage.leave(key, false);
        progress.registered = false;
        const pending = usage.peek(key).pendingLogin;
        if (!progress.loggedIn && pending === undefined && !progress.createdRecord) return;
        if (await sessionStillNeeded(target, [])) return;
        const failures = new FailureList(true);
        const ownRecord = progress.createdRecord || pending?.createdRecord === true;
        if (progress.loggedIn || pending !== undefined) {
          await closeSession(sessionHost, target, { signal, deleteRecord: ownRecord }, (step, fn) => failures.attempt(step, fn));
        } else if (ownRecord) {
          await failures.attempt('delete the node record', () => iscsiadm.nodeDelete(target, { signal }));
        }
        usage.clearLogin(key);
        if (failures.size > 0) logger.warn({ iqn: target.iqn, portal: target.portalText }, 'undo: the session could not be closed completely');
      });
    } catch (error) {
      logger.warn({ iqn: target.iqn, portal: target.portalText, error: messageOf(error) }, 'undo: could not close the session');
    }
  }

  /** A kept path's connect is over: the normal disconnect rules apply to its session from now on. */
  function keepPath(outcome: PathOutcome): void {
    if (!outcome.progress.registered) return;
    usage.leave(targetKey(outcome.target), true);
    outcome.progress.registered = false;
  }

  /**
   * Whether the session to `target` must stay: a connect of it is in flight, or a LUN other than
   * `ownDevices` has a block device. Call holding the target lock.
   */
  async function sessionStillNeeded(target: PathTarget, ownDevices: readonly string[]): Promise<boolean> {
    if (usage.peek(targetKey(target)).inflight > 0) return true;
    const session = await findIscsiSession(fs, target);
    if (session?.hostNumber === undefined) return false;
    const devices = await sessionBlockDevices(fs, session.sid, { host: session.hostNumber });
    return devices.some((d) => !ownDevices.includes(d.device));
  }

  async function connectVolume(volume: MultipathVolume, call: TransportCallContext, volumeId: string | undefined): Promise<Device> {
    const { signal } = call;
    const enforce = options.enforceMultipath || enforceOf(call);
    const timings: Record<string, number> = {};
    const warnings: string[] = [];
    let t = performance.now();
    const lap = (step: string): void => {
      const now = performance.now();
      timings[step] = Math.round((now - t) * 10) / 10;
      t = now;
    };

    const daemon = await multipath.daemonState({ signal, timeoutMs: options.commandTimeoutMs });
    lap('multipathd');
    const degraded = daemon.state !== 'running';
    if (degraded) {
      const why = daemon.detail;
      if (enforce) {
        throw new BerthError('HOST_UNSUPPORTED', `multipathd is not running on this host (${why}), and enforce_multipath is set`, {
          hint:
            daemon.state === 'not-installed'
              ? 'install multipath-tools: apt-get install -y multipath-tools, then systemctl enable --now multipathd; or attach without --multipath'
              : 'start multipathd: systemctl enable --now multipathd (check with `multipathd show status`), then attach again; or attach without --multipath',
          details: { multipathd: daemon.state },
        });
      }
      warnings.push(`multipathd is not running (${why}): connected through one path only, without a multipath device`);
      logger.warn({ multipathd: daemon.state, detail: why }, 'multipathd is not running: degrading to one path');
    }

    let targets: PathTarget[];
    let byDiscovery = new Set<string>();
    if (volume.listed !== undefined) {
      targets = volume.listed;
    } else {
      const budget = portalBudget(options.portalTimeoutMs, signal, volume.primary.portalText);
      try {
        const found = await discoverPaths({ runner, iscsiadm, options, retry, logger }, volume, budget.signal, cleanupSignal);
        targets = found.paths;
        byDiscovery = found.createdRecords;
      } catch (error) {
        throw pathError(volume.primary, budget.overran() ? budget.reason(error) : error);
      } finally {
        budget.dispose();
      }
      lap('discovery');
    }

    let outcomes: PathOutcome[];
    if (degraded) {
      // One path, in the order given: the first that comes up is the device.
      outcomes = [];
      for (const target of targets) {
        if (outcomes.some((o) => o.status === 'up')) {
          outcomes.push({ target, status: 'unused', progress: emptyProgress() });
          continue;
        }
        outcomes.push(await connectPath(target, volume.auth, signal, byDiscovery.has(targetKey(target))));
      }
    } else {
      outcomes = await Promise.all(targets.map((target) => connectPath(target, volume.auth, signal, byDiscovery.has(targetKey(target)))));
    }
    lap('paths');

    let map: MultipathMap | undefined;
    const notInMap = new Set<string>();
    try {
      const up = outcomes.filter((o) => o.status === 'up');
      if (up.length === 0) throw noPathError(volume, outcomes, signal);
      const wwn = chooseWwn(volume, up);
      for (const o of up) {
        if (o.wwn === wwn) continue;
        o.status = 'refused';
        o.error = new BerthError('CONFLICT', `the LUN at ${o.target.portalText} (${o.target.iqn} LUN ${o.target.lun}) is ${o.wwn === undefined ? 'of unknown WWN' : `WWN ${o.wwn}`}, not ${wwn}: it is another LUN, not a path of this volume`, {
          hint: 'the backend returned a portal, IQN or LUN that leads to another volume: check target_portals/target_iqns/target_luns',
          details: { portal: o.target.portalText, iqn: o.target.iqn, lun: o.target.lun, wwn: o.wwn, expected: wwn },
        });
        warnings.push(o.error.message);
        logger.error({ portal: o.target.portalText, iqn: o.target.iqn, wwn: o.wwn, expected: wwn }, 'path refused: its LUN has another WWN');
        await releasePath(o.target, o.progress);
      }
      const good = outcomes.filter((o) => o.status === 'up');

      if (!degraded) {
        const mapBudget = AbortSignal.any([signal, AbortSignal.timeout(options.mapTimeoutMs)]);
        try {
          map = await ensureMap(mapHost, good.map((o) => o.device?.name ?? ''), wwn, { timeoutMs: options.mapTimeoutMs, signal });
          lap('map');
          const notIn = await waitForSlaves(mapHost, map, good.map((o) => o.device?.name ?? ''), { timeoutMs: options.mapTimeoutMs, signal: mapBudget });
          for (const o of good) {
            if (o.device !== undefined && notIn.includes(o.device.name)) {
              notInMap.add(o.device.name);
              warnings.push(`${devPath(o.device.name)} (${o.target.portalText}) has not joined ${map.dm}`);
            }
          }
          const readiness = await waitUntilUsable(mapHost, map, { timeoutMs: options.mapTimeoutMs, signal });
          lap('ready');
          logger.debug({ dm: map.dm, readiness }, 'multipath map usable');
        } catch (error) {
          if (signal.aborted || enforce) throw error;
          // No map within its budget (blacklisted, a policy that will not map it): one path, as
          // os-brick falls back to a single device.
          const why = toBerthError(error, 'DRIVER_ERROR').message;
          warnings.push(`no usable multipath map (${why}): connected through one path only`);
          logger.warn({ wwn, error: why }, 'no usable multipath map: degrading to one path');
          if (map !== undefined) {
            await removeMap(mapHost, map, { signal: cleanupSignal(), timeoutMs: options.deviceTimeoutMs, attempts: 2, retryDelayMs: options.flushRetryDelayMs }).catch((e: unknown) =>
              logger.warn({ dm: map?.dm, error: messageOf(e) }, 'could not remove the half-made map'),
            );
            map = undefined;
          }
          await dropAllButFirst(good);
          lap('map');
        }
      } else {
        await dropAllButFirst(good);
      }

      const kept = outcomes.filter((o) => o.status === 'up');
      const first = kept[0];
      if (first?.device === undefined) throw noPathError(volume, outcomes, signal);
      const stateOfOutcome = (o: PathOutcome): PathState =>
        o.status === 'up' ? (map !== undefined && o.device !== undefined && notInMap.has(o.device.name) ? 'not-in-map' : 'active') : o.status;
      const device: Device = {
        path: map === undefined ? devPath(first.device.name) : `/dev/${map.dm}`,
        type: 'block',
        scsi_wwn: wwn,
        ...(map === undefined ? {} : { multipath_id: map.multipathId }),
        paths: outcomes.map((o) => ({
          portal: o.target.portalText,
          ...(o.status === 'up' && o.device !== undefined ? { device: devPath(o.device.name) } : {}),
          state: stateOfOutcome(o),
        })),
        meta: {
          mode: map === undefined ? 'single' : 'multipath',
          ...(map === undefined ? {} : { dm: map.dm, mapName: map.name, mapper: `/dev/mapper/${map.name}` }),
          iqn: volume.primary.iqn,
          portal: volume.primary.portalText,
          lun: volume.primary.lun,
          discovered: volume.listed === undefined,
          paths: outcomes.map((o) => ({
            iqn: o.target.iqn,
            portal: o.target.portalText,
            lun: o.target.lun,
            kernelLun: o.target.kernelLun,
            state: stateOfOutcome(o),
            ...(o.status === 'up' && o.device !== undefined ? { device: devPath(o.device.name), sid: o.device.sid, hctl: formatHctl(o.device.hctl) } : {}),
            ...(o.error === undefined ? {} : { error: o.error.message }),
          })),
          ...(warnings.length === 0 ? {} : { warnings }),
          timings,
        },
      };
      if (volumeId !== undefined) await states.save(stateOf(volumeId, volume, device, map, outcomes, stateOfOutcome));
      for (const o of kept) keepPath(o);
      logger.info(
        { device: device.path, wwn, paths: device.paths?.map((p) => `${p.portal}=${p.state}`), mode: device.meta?.['mode'] },
        map === undefined ? 'volume connected through one path (degraded)' : 'volume connected through multipath',
      );
      return device;
    } catch (error) {
      await undoConnect(outcomes, map);
      throw error;
    }
  }

  /** Keep the first path (in the order given) that is up; release the others. */
  async function dropAllButFirst(up: PathOutcome[]): Promise<void> {
    for (const o of up.slice(1)) {
      o.status = 'unused';
      await releasePath(o.target, o.progress);
      delete o.device;
    }
  }

  /** Undo a failed connect: the map it made, then every path it brought up. Never throws. */
  async function undoConnect(outcomes: PathOutcome[], map: MultipathMap | undefined): Promise<void> {
    if (map !== undefined) {
      await removeMap(mapHost, map, { signal: cleanupSignal(), timeoutMs: options.deviceTimeoutMs, attempts: 2, retryDelayMs: options.flushRetryDelayMs }).catch((error: unknown) =>
        logger.warn({ dm: map.dm, error: messageOf(error) }, 'undo: could not remove the map'),
      );
    }
    await Promise.all(outcomes.filter((o) => o.status === 'up').map((o) => releasePath(o.target, o.progress)));
  }

  function stateOf(
    volumeId: string,
    volume: MultipathVolume,
    device: Device,
    map: MultipathMap | undefined,
    outcomes: PathOutcome[],
    stateOfOutcome: (o: PathOutcome) => PathState,
  ): AttachState {
    const paths: AttachPath[] = outcomes.map((o) => {
      const s = stateOfOutcome(o);
      return {
        target_iqn: o.target.iqn,
        target_portal: o.target.portalText,
        target_lun: o.target.lun,
        kernel_lun: o.target.kernelLun,
        state: s === 'not-in-map' ? 'active' : s,
        ...(o.status === 'up' && o.device !== undefined ? { sid: o.device.sid, hctl: formatHctl(o.device.hctl), device: devPath(o.device.name) } : {}),
      };
    });
    return {
      version: 1,
      volumeId,
      mode: map === undefined ? 'single' : 'multipath',
      device: device.path,
      ...(map === undefined ? {} : { dm: map.dm, mapName: map.name }),
      scsi_wwn: device.scsi_wwn ?? '',
      target_iqn: volume.primary.iqn,
      target_portal: volume.primary.portalText,
      target_lun: volume.primary.lun,
      paths,
      connectedAt: new Date().toISOString(),
    };
  }

  // ---------------------------------------------------------------------------------------------
  // disconnect

  async function disconnectVolume(volume: MultipathVolume, device: Device | undefined, opts: DisconnectOptions, volumeId: string | undefined, what: string): Promise<void> {
    const { signal, force } = opts;
    const state = volumeId === undefined ? undefined : await states.load(volumeId).catch(() => undefined);
    const fromDevice = pathsOfDevice(device);
    const known = [...pathsOfState(state), ...fromDevice.map((p) => p.target)];
    const wwn = state?.scsi_wwn || device?.scsi_wwn || device?.multipath_id || undefined;
    const located = await locatePaths(fs, volume, known, wwn, logger);
    const ownDevices = located.flatMap((p) => (p.device === undefined ? [] : [p.device.name]));
    const map = await locateMap(device, state, ownDevices, wwn);
    const failures = new FailureList(true);

    if (map !== undefined) {
      const node = `/dev/${map.dm}`;
      if (await fs.exists(node)) {
        await failures.attempt(`flush ${node}`, () => runner.run('blockdev', ['--flushbufs', node], { timeoutMs: options.commandTimeoutMs, signal }));
      }
      if (failures.size === 0 || force) {
        await failures.attempt(`remove multipath map ${map.name} (${map.dm})`, () =>
          removeMap(mapHost, map, { signal, timeoutMs: options.deviceTimeoutMs, attempts: options.flushAttempts, retryDelayMs: options.flushRetryDelayMs }),
        );
      }
      if (failures.size > 0 && !force) {
        // A map that will not flush may still hold writes: its paths stay, so nothing is lost.
        failures.throwIfAny(`${what}: nothing was removed`);
      }
    } else if (state?.mode === 'single' || device?.meta?.['mode'] === 'single') {
      const single = located.find((p) => p.device !== undefined && devPath(p.device.name) === (state?.device ?? device?.path));
      if (single?.device !== undefined && (await fs.exists(devPath(single.device.name)))) {
        const node = devPath(single.device.name);
        await failures.attempt(`flush ${node}`, () => runner.run('blockdev', ['--flushbufs', node], { timeoutMs: options.commandTimeoutMs, signal }));
        if (failures.size > 0 && !force) failures.throwIfAny(`${what}: nothing was removed`);
      }
    }

    // The map is gone (or force): every path's device goes, each on its own, so one dead path
    // does not keep the others.
    await Promise.all(
      located.map(async (p) => {
        if (p.device === undefined) return;
        const name = p.device.name;
        const sdevDir = await sdevDirOf(fs, name);
        const deleted = await failures.attempt(`delete ${devPath(name)} (${p.target.portalText})`, () => deleteScsiDevice(fs, name));
        if (deleted !== undefined) {
          await failures.attempt(`wait for ${devPath(name)} (${p.target.portalText}) to go`, () => waitForDeviceGone(deviceHost, name, sdevDir, options.deviceTimeoutMs, signal));
        }
      }),
    );

    // os-brick waits until multipathd forgot the deleted disks, so that a new disk taking one of
    // their names is not mistaken for the old path. Best effort: it only warns.
    if (map !== undefined && ownDevices.length > 0) await waitUntilForgotten(ownDevices, signal);

    // A map whose flush failed under force: multipathd's own removal, os-brick's last resort.
    if (map !== undefined && (await fs.exists(`/sys/block/${map.dm}`))) {
      const outcome = await failures.attempt(`ask multipathd to delete map ${map.name}`, () => multipath.delMap(map.name, { signal, timeoutMs: options.commandTimeoutMs }));
      if (outcome === 'failed') failures.add(`delete map ${map.name}`, new BerthError('DRIVER_ERROR', `multipathd could not delete map ${map.name}: it is still open`, { hint: `close whatever holds ${map.name} (\`dmsetup info ${map.name}\`), then \`multipath -f ${map.name}\`` }));
    }

    // One logout per portal, and only where no other LUN uses the session.
    const byTarget = new Map<string, PathTarget>();
    for (const p of located) if (!byTarget.has(targetKey(p.target))) byTarget.set(targetKey(p.target), p.target);
    await Promise.all(
      [...byTarget.values()].map((target) =>
        targetLocks
          .withLock(
            targetKey(target),
            async () => {
              if (await sessionStillNeeded(target, ownDevices)) {
                logger.info({ iqn: target.iqn, portal: target.portalText }, 'keeping the session: another LUN of it is in use');
                return;
              }
              await closeSession(sessionHost, target, { signal, deleteRecord: true }, (step, fn) => failures.attempt(step, fn));
              usage.clearLogin(targetKey(target));
            },
            signal,
          )
          .catch((error: unknown) => failures.add(`close the session to ${target.portalText}`, error)),
      ),
    );

    if (failures.size === 0) await forgetStates(volume, volumeId);
    failures.throwIfAny(what);
    logger.info({ iqn: volume.primary.iqn, lun: volume.primary.lun, dm: map?.dm, paths: located.length }, 'volume disconnected');
  }

  /** Wait (bounded, backing off) until `multipathd show paths` lists none of `devices`; warns when it still does. */
  async function waitUntilForgotten(devices: readonly string[], signal: AbortSignal): Promise<void> {
    const budget = AbortSignal.any([signal, AbortSignal.timeout(Math.min(options.deviceTimeoutMs, 5_000))]);
    let listed: string[] = [];
    try {
      await withRetry(
        async () => {
          listed = (await multipath.pathDevices({ signal: budget, timeoutMs: options.commandTimeoutMs })).filter((d) => devices.includes(d));
          if (listed.length > 0) throw new StillListed();
        },
        { attempts: 20, baseDelayMs: 50, maxDelayMs: 500, signal: budget, isRetryable: (error) => error instanceof StillListed },
      );
    } catch (error) {
      // multipathd not answering, or still listing them: neither keeps the detach from finishing.
      logger.warn({ devices: listed.length > 0 ? listed : devices, error: messageOf(error) }, 'multipathd may still list the deleted paths');
    }
  }

  /**
   * The volume's multipath map now: the one the caller's device names, the persisted one, the one
   * holding one of its paths, or `/dev/mapper/<wwid>`; each only when its uuid is the volume's wwid
   * (when known) or it holds one of the volume's paths.
   */
  async function locateMap(device: Device | undefined, state: AttachState | undefined, ownDevices: readonly string[], wwn: string | undefined): Promise<MultipathMap | undefined> {
    const candidates: string[] = [];
    if (device?.path !== undefined && /^\/dev\/dm-\d+$/.test(device.path)) candidates.push(device.path.slice('/dev/'.length));
    if (state?.dm !== undefined) candidates.push(state.dm);
    for (const d of ownDevices) candidates.push(...(await holdersOf(fs, d)));
    if (wwn !== undefined) {
      try {
        const real = await fs.realpath(`/dev/mapper/${wwn}`);
        const name = real.split('/').pop();
        if (name !== undefined && /^dm-\d+$/.test(name)) candidates.push(name);
      } catch {
        // No map under that name.
      }
    }
    for (const dm of new Set(candidates)) {
      const map = await readMap(fs, dm);
      if (map === undefined) continue;
      if (wwn !== undefined ? map.multipathId === wwn : (await slavesOf(fs, dm)).some((s) => ownDevices.includes(s))) return map;
    }
    return undefined;
  }

  async function forgetStates(volume: MultipathVolume, volumeId: string | undefined): Promise<void> {
    if (volumeId !== undefined) {
      await states.remove(volumeId);
      return;
    }
    for (const state of await states.list()) {
      if (state.target_iqn === volume.primary.iqn && state.target_lun === volume.primary.lun && state.target_portal === volume.primary.portalText) {
        await states.remove(state.volumeId);
      }
    }
  }

  function checkVolumeId(volumeId: string | undefined): string | undefined {
    return volumeId === undefined ? undefined : parseWith(zStateVolumeId, volumeId, 'volume id');
  }

  // ---------------------------------------------------------------------------------------------
  // paths and connected

  async function pathStates(volume: MultipathVolume, device: Device): Promise<DevicePath[]> {
    const fromDevice = pathsOfDevice(device);
    const wwn = device.scsi_wwn ?? device.multipath_id;
    const located = await locatePaths(fs, volume, fromDevice.map((p) => p.target), wwn, logger);
    const dm = /^\/dev\/dm-\d+$/.test(device.path) ? device.path.slice('/dev/'.length) : undefined;
    const out: DevicePath[] = [];
    for (const p of located) out.push(await pathState(p, dm, device.path));
    return out;
  }

  async function pathState(p: LocatedPath, dm: string | undefined, devicePath: string): Promise<DevicePath> {
    const portal = p.target.portalText;
    if (p.session === undefined) return { portal, state: 'missing' };
    const session = await readIscsiSession(fs, p.session.sid);
    const sessionState = session?.state ?? 'unknown';
    if (p.device === undefined) return { portal, state: sessionState === 'LOGGED_IN' ? 'no-device' : `${sessionState.toLowerCase()}/no-device` };
    const node = devPath(p.device.name);
    const sdevState = (await fs.readFileIfExists(`/sys/block/${p.device.name}/device/state`))?.trim() ?? 'unknown';
    if (sessionState !== 'LOGGED_IN' || sdevState !== 'running') return { portal, device: node, state: `${sessionState.toLowerCase()}/${sdevState}` };
    if (dm !== undefined) return { portal, device: node, state: (await holdersOf(fs, p.device.name)).includes(dm) ? 'active' : 'not-in-map' };
    return { portal, device: node, state: node === devicePath ? 'active' : 'unused' };
  }

  async function connectedDevices(): Promise<ConnectedDevice[]> {
    const saved = await states.list();
    const out: ConnectedDevice[] = [];
    const seen = new Set<string>();
    for (const entry of await fs.readdir('/sys/block')) {
      if (!/^dm-\d+$/.test(entry)) continue;
      const map = await readMap(fs, entry);
      if (map === undefined) continue;
      const slaves = await slavesOf(fs, entry);
      const paths: DevicePath[] = [];
      let first: { iqn: string; lun: number } | undefined;
      for (const slave of slaves) {
        const sd = await scsiDeviceOf(fs, slave).catch(() => undefined);
        if (sd?.sid === undefined) continue;
        const session = await readIscsiSession(fs, sd.sid);
        if (session === undefined) continue;
        first ??= { iqn: session.iqn, lun: sd.hctl.lun };
        paths.push({ ...(session.portal === undefined ? {} : { portal: formatPortal(session.portal) }), device: devPath(slave), state: session.state === 'LOGGED_IN' ? 'active' : session.state.toLowerCase() });
      }
      if (first === undefined) continue;
      const state = saved.find((s) => s.dm === map.dm && s.scsi_wwn === map.multipathId);
      seen.add(`/dev/${map.dm}`);
      out.push({
        device: {
          path: `/dev/${map.dm}`,
          type: 'block',
          scsi_wwn: map.multipathId,
          multipath_id: map.multipathId,
          paths,
          meta: { mode: 'multipath', dm: map.dm, mapName: map.name, ...(state === undefined ? {} : { volumeId: state.volumeId }) },
        },
        // Without a state the portal that was `target_portal` is unknown: IQN and LUN name the volume.
        source: state !== undefined
          ? { target_iqn: state.target_iqn, target_portal: state.target_portal, target_lun: state.target_lun }
          : { target_iqn: first.iqn, ...(first.lun < 256 ? { target_lun: first.lun } : {}) },
      });
    }
    for (const state of saved) {
      if (state.mode !== 'single' || seen.has(state.device)) continue;
      const name = state.device.slice('/dev/'.length);
      const path0 = state.paths.find((p) => p.device === state.device);
      if (path0 === undefined) continue;
      let portal;
      try {
        portal = toPortal(path0.target_portal);
      } catch {
        continue;
      }
      const lun = await deviceIsTargetLun(fs, name, {
        iqn: path0.target_iqn,
        portal,
        portalText: path0.target_portal,
        lun: path0.target_lun,
        kernelLun: path0.kernel_lun,
      });
      if (lun === undefined) continue;
      out.push({
        device: { path: state.device, type: 'block', scsi_wwn: state.scsi_wwn, meta: { mode: 'single', volumeId: state.volumeId } },
        source: { target_iqn: state.target_iqn, target_portal: state.target_portal, target_lun: state.target_lun },
      });
    }
    return out;
  }

  return {
    name: NAME,
    protocols: PROTOCOLS,
    priority: PRIORITY,

    accepts(_connection: ConnectionInfo, connector: Connector): boolean {
      return connector.multipath === true;
    },

    async connectorProperties(): Promise<Partial<Connector>> {
      // `multipath` and `enforce_multipath` come from the config and the attach flag (core merges them).
      const initiator = await readInitiatorName(fs);
      return initiator === undefined ? {} : { initiator };
    },

    async connect(connection: ConnectionInfo, call: TransportCallContext): Promise<Device> {
      const volume = parseMultipathConnection(connection, { protocols: PROTOCOLS });
      const volumeId = checkVolumeId(call.volumeId);
      const what = `connecting LUN ${volume.primary.lun} of ${volume.primary.iqn} over multipath`;
      try {
        call.signal.throwIfAborted();
        return await volumeLocks.withLock(volumeKey(volume), () => connectVolume(volume, call, volumeId), call.signal);
      } catch (error) {
        throw contextual(what, error, call.signal);
      }
    },

    async disconnect(connection: ConnectionInfo, device: Device | undefined, opts: DisconnectOptions): Promise<void> {
      const volume = parseMultipathConnection(connection, { protocols: PROTOCOLS, purpose: 'locate' });
      const volumeId = checkVolumeId(opts.volumeId);
      const what = `disconnecting LUN ${volume.primary.lun} of ${volume.primary.iqn}`;
      try {
        await volumeLocks.withLock(volumeKey(volume), () => disconnectVolume(volume, device, opts, volumeId, what), opts.signal);
      } catch (error) {
        throw contextual(what, error, opts.signal);
      }
    },

    async paths(connection: ConnectionInfo, device: Device): Promise<DevicePath[]> {
      const volume = parseMultipathConnection(connection, { protocols: PROTOCOLS, purpose: 'locate' });
      return pathStates(volume, device);
    },

    connected: connectedDevices,

    async check(): Promise<CheckResult> {
      return checkMultipathHost({ fs, runner, iscsiadm: probeClient, multipath, timeoutMs: options.commandTimeoutMs, enforceMultipath: options.enforceMultipath });
    },
  };
}

/** multipathd still lists a deleted disk (retried until it does not). */
class StillListed extends Error {}

function emptyProgress(): PathProgress {
  return { createdRecord: false, loggedIn: false, registered: false, scanned: false };
}

/** A path's failure as a BerthError naming the portal. */
function pathError(target: PathTarget, error: unknown): BerthError {
  const base = toBerthError(error, 'DRIVER_ERROR');
  const prefix = `${target.portalText} (${target.iqn} LUN ${target.lun})`;
  return new BerthError(base.code, base.message.startsWith(target.portalText) ? base.message : `${prefix}: ${base.message}`, {
    cause: error,
    ...(base.hint === undefined ? {} : { hint: base.hint }),
    details: { ...base.details, portal: target.portalText, iqn: target.iqn, lun: target.lun },
  });
}

/**
 * The WWN of the volume among the paths that came up: the primary path's when it is up, else the
 * one most paths agree on (ties: the first in order). A path with another WWN is another LUN.
 */
function chooseWwn(volume: MultipathVolume, up: PathOutcome[]): string {
  const primary = up.find((o) => lunKey(o.target) === lunKey(volume.primary) && o.wwn !== undefined);
  if (primary?.wwn !== undefined) return primary.wwn;
  const counts = new Map<string, number>();
  for (const o of up) if (o.wwn !== undefined) counts.set(o.wwn, (counts.get(o.wwn) ?? 0) + 1);
  let best: string | undefined;
  for (const o of up) {
    if (o.wwn === undefined) continue;
    if (best === undefined || (counts.get(o.wwn) ?? 0) > (counts.get(best) ?? 0)) best = o.wwn;
  }
  if (best === undefined) {
    throw new BerthError('DRIVER_ERROR', `no path of ${volume.primary.iqn} LUN ${volume.primary.lun} has a readable WWN (/sys/block/sdX/device/wwid)`, {
      hint: 'multipath groups paths by WWN: check the target sets a device identification VPD page (0x83) for the LUN',
    });
  }
  return best;
}

/** The error when no path came up: every portal's reason, the code they share (or the first's). */
function noPathError(volume: MultipathVolume, outcomes: PathOutcome[], signal: AbortSignal): BerthError {
  const failed = outcomes.filter((o) => o.error !== undefined);
  if (signal.aborted && failed.every((o) => o.error?.code === 'TIMEOUT' || o.error?.code === 'CANCELLED')) {
    return toBerthError(signal.reason ?? failed[0]?.error, 'CANCELLED');
  }
  const codes = new Set(failed.map((o) => o.error?.code));
  const code = codes.size === 1 ? (failed[0]?.error?.code ?? 'DRIVER_ERROR') : failed[0]?.error?.code ?? 'DRIVER_ERROR';
  const reasons = failed.map((o) => o.error?.message ?? o.target.portalText).join('; ');
  const hint =
    failed.find((o) => o.error?.hint !== undefined)?.error?.hint ??
    'check that the portals are reachable from this host and that the backend exports the volume to this initiator';
  return new BerthError(code, `none of the ${outcomes.length} path(s) of ${volume.primary.iqn} LUN ${volume.primary.lun} could be connected: ${reasons}`, {
    hint,
    details: { paths: outcomes.map((o) => ({ portal: o.target.portalText, iqn: o.target.iqn, lun: o.target.lun, status: o.status, ...(o.error === undefined ? {} : { error: o.error.toJSON() }) })) },
  });
}

/**
 * `error` as a BerthError whose message says what was being done. When the operation's signal
 * fired, the code says so (TIMEOUT for a deadline, CANCELLED for a cancel) whatever step noticed.
 */
function contextual(what: string, error: unknown, signal: AbortSignal | undefined): BerthError {
  const base = toBerthError(error, 'DRIVER_ERROR');
  if (signal?.aborted === true && (base.code === 'TIMEOUT' || base.code === 'CANCELLED')) {
    const reason = toBerthError(signal.reason ?? new DOMException('This operation was aborted', 'AbortError'), 'CANCELLED');
    const code = reason.code === 'TIMEOUT' ? 'TIMEOUT' : 'CANCELLED';
    const message = base === reason || base.message === reason.message ? reason.message : `${reason.message} (${base.message})`;
    const hint = reason.hint ?? base.hint;
    return new BerthError(code, `${what}: ${message}`, { cause: error, ...(hint === undefined ? {} : { hint }), details: base.details });
  }
  return new BerthError(base.code, `${what}: ${base.message}`, {
    cause: error,
    ...(base.hint === undefined ? {} : { hint: base.hint }),
    details: base.details,
  });
}
