import path from 'node:path';
import {
  BerthError,
  KeyedLock,
  parseWith,
  type CheckResult,
  type ConnectedDevice,
  type ConnectionInfo,
  type ListOptions,
  type Connector,
  type Device,
  type DevicePath,
  type DisconnectOptions,
  type PathRepair,
  type PluginContext,
  type TransportCallContext,
  type TransportDriver,
} from '@berth/core';
import { contextualError, FailureList, ISCSI_SOURCE_KEYS, iscsiTransportKit, MultipathClient, portalBudget, readInitiatorName, targetKey, zStateVolumeId, finishLeftLogin, forgetLeftLogins, leftEntryOf, leftPathsOf, mergeLeft, saveLeftLogins, watchLeftLogins, type LeftPath } from '@berth/iscsi';
import { AttachStateStore, type AttachState } from './attach-state.js';
import { discoverPaths } from './discovery.js';
import { checkMultipathHost } from './host-check.js';
import { buildMap, dropMap, keepFirstPathOnly } from './map-phase.js';
import { connectedDevices, pathStates } from './multipath-connected.js';
import { lunKey, parseMultipathConnection, volumeKey, type MultipathVolume, type PathTarget } from './multipath-connection.js';
import type { MultipathContext } from './multipath-context.js';
import { disconnectVolume } from './multipath-disconnect.js';
import type { MultipathMap } from './multipath-map.js';
import { zMultipathDriverOptions, type MultipathDriverOptions } from './options.js';
import { connectPaths } from './path-connect.js';
import { noPathError, pathError } from './path-errors.js';
import { repairMissingPaths, stateLockKey } from './path-repair.js';
import { attachStateOf, describeVolumeDevice, type VolumeOutcome } from './volume-device.js';
import { chooseWwn, refuseOtherLuns } from './wwn-choice.js';

export type { PathState } from './multipath-context.js';

/** The transport's registered name. */
export const NAME = 'iscsi-multipath';

/** The `driver_volume_type` values it connects. */
export const PROTOCOLS = ['iscsi'] as const;

/** Above the single-path `iscsi` transport (0): core picks this one whenever it `accepts`. */
export const PRIORITY = 10;

/** Where attach states live under berth's data directory. */
export const STATE_SUBDIR = path.join('driver-iscsi-multipath', 'attachments');

/**
 * The `iscsi-multipath` transport: every portal of an iSCSI volume connected in parallel (each
 * path is `@berth/iscsi`'s single-LUN lifecycle), the volume's WWN chosen, one dm-multipath
 * device built over the paths. Locks: one queue per volume (its connects and disconnects take
 * turns) plus the lifecycle's per-target queue; never one for the whole host.
 */
export function createMultipathDriver(context: PluginContext<Partial<MultipathDriverOptions>>): TransportDriver {
  const options = parseWith(zMultipathDriverOptions, context.options ?? {}, 'iscsi-multipath transport options');
  const { runner, fs, waiter } = context.host;
  const logger = context.logger.child({ transport: NAME });
  // The options name the lifecycle's settings as it does (bounded logins, portal budget included).
  const { iscsiadm, probe: probeClient, lifecycle } = iscsiTransportKit(context.host, logger, { ...options, transport: NAME }, context.faults);
  const multipath = new MultipathClient({ runner, timeoutMs: options.commandTimeoutMs });
  const ctx: MultipathContext = {
    fs,
    runner,
    waiter,
    iscsiadm,
    multipath,
    lifecycle,
    mapHost: { fs, waiter, multipath, logger, commandTimeoutMs: options.commandTimeoutMs },
    states: new AttachStateStore(path.join(context.dataDir, STATE_SUBDIR)),
    options,
    logger,
  };
  const volumeLocks = new KeyedLock();

  /** multipathd, the paths (listed or discovered), every path connected, the WWN, the map; undone on failure. */
  async function connectVolume(volume: MultipathVolume, call: TransportCallContext, volumeId: string | undefined): Promise<Device> {
    const { signal } = call;
    const enforce = options.enforceMultipath || call.connector?.enforce_multipath === true;
    const timings: Record<string, number> = {};
    const warnings: string[] = [];
    let t = performance.now();
    const lap = (step: string): void => {
      const now = performance.now();
      timings[step] = Math.round((now - t) * 10) / 10;
      t = now;
    };

    const degraded = await checkDaemon(enforce, warnings, signal);
    lap('multipathd');
    const { targets, byDiscovery } = await pathTargets(volume, signal);
    if (volume.listed === undefined) lap('discovery');
    const connected = await connectPaths(ctx, targets, volume.auth, { signal, degraded, byDiscovery });
    const { outcomes } = connected;
    lap('paths');

    let map: MultipathMap | undefined;
    let mapMade = false;
    try {
      const up = outcomes.filter((o) => o.status === 'up');
      if (up.length === 0) throw noPathError(volume, outcomes, signal);
      const wwn = chooseWwn(volume, up);
      await refuseOtherLuns(ctx, outcomes, wwn, warnings);
      const good = outcomes.filter((o) => o.status === 'up');
      const built = degraded ? { made: false, notInMap: new Set<string>() } : await buildMap(ctx, good, wwn, { signal, enforce, warnings, lap });
      if (degraded) await keepFirstPathOnly(ctx, good);
      map = built.map;
      mapMade = built.made;
      if (!outcomes.some((o) => o.status === 'up' && o.device !== undefined)) throw noPathError(volume, outcomes, signal);
      if (connected.graceMs !== undefined) warnings.push(`gave up on ${outcomes.filter((o) => o.status === 'failed').length} path(s) still logging in ${connected.graceMs} ms past the healthy logins' time`);
      const result: VolumeOutcome = { volume, outcomes, map, notInMap: built.notInMap, wwn, warnings, timings };
      const device = describeVolumeDevice(result);
      // The given-up logins are known once their undo ran (it is quick: the kill, a logout).
      await connected.stragglersUndone;
      const upNow = new Set(outcomes.flatMap((o) => (o.status === 'up' ? [targetKey(o.target)] : [])));
      // An earlier attach's given-up logins: a path up now adopted its session; the others stay to
      // finish. Those of the state as it is now, not as it was when the connect began: a watcher,
      // a reconcile or another process may have forgotten or kept one meanwhile (under another
      // volume queue, or none of this process), and a state read before and written back here
      // undid that.
      let left = connected.left;
      if (volumeId !== undefined) {
        await ctx.states.update(volumeId, (current) => {
          left = mergeLeft(
            leftPathsOf(current).filter((l) => !upNow.has(targetKey(l.target))),
            connected.left,
          );
          return { ...attachStateOf(volumeId, result, device), ...(left.length === 0 ? {} : { left_logins: left.map(leftEntryOf) }) };
        });
      }
      watchLeft(volumeKey(volume), volumeId, left);
      await Promise.all(outcomes.filter((o) => o.status === 'up').map((o) => lifecycle.keep(o.target, o.progress)));
      logger.info(
        { device: device.path, wwn, paths: device.paths?.map((p) => `${p.portal}=${p.state}`), mode: device.meta?.['mode'] },
        map === undefined ? 'volume connected through one path (degraded)' : 'volume connected through multipath',
      );
      return device;
    } catch (error) {
      // Only this connect's own map: one that was there before is another attachment's.
      if (map !== undefined && mapMade) await dropMap(ctx, map, 'undo: could not remove the map');
      await Promise.all([connected.stragglersUndone, ...outcomes.filter((o) => o.status === 'up').map((o) => lifecycle.release(o.target, o.progress))]);
      // Kept in the volume's state (with an earlier state's device and logins, else a state with
      // only them), so the rollback's disconnect, a reconcile or a later connect finishes them in
      // any process (a CLI exits, or is killed, before iscsid's bound); and watched in this one.
      if (connected.left.length > 0 && volumeId !== undefined) {
        await saveLeftLogins(ctx.states, volumeId, () => leftOnlyState(volumeId, volume, outcomes.map((o) => o.target)), connected.left, logger);
      }
      watchLeft(volumeKey(volume), volumeId, connected.left);
      throw error;
    }
  }

  /**
   * Finish the given-up logins in this process while it lives; each one done leaves the volume's
   * state (under the volume's queue). The state keeps the others for the next call.
   */
  function watchLeft(key: string, volumeId: string | undefined, left: readonly LeftPath[]): void {
    watchLeftLogins(ctx, left, async (done) => {
      if (volumeId !== undefined) await volumeLocks.withLock(key, () => forgetLeftLogins(ctx.states, volumeId, [done]));
    });
  }

  /**
   * Reconcile's look at the host finishes what earlier attaches left (a CLI attach exits before
   * iscsid ends a given-up login): each login whose session is up or whose bound passed, without
   * waiting; the others stay in their state.
   */
  async function finishLeftOfStates(): Promise<void> {
    for (const state of await ctx.states.list().catch(() => [] as AttachState[])) {
      const lefts = leftPathsOf(state);
      if (lefts.length === 0) continue;
      await volumeLocks.withLock(stateLockKey(state), async () => {
        const failures = new FailureList(true);
        const done: LeftPath[] = [];
        for (const left of lefts) if ((await finishLeftLogin(ctx, left, { signal: undefined, failures, wait: false })) === 'done') done.push(left);
        if (failures.size === 0) await forgetLeftLogins(ctx.states, state.volumeId, done);
        else logger.warn({ volumeId: state.volumeId, errors: failures.size }, 'a given-up login could not be finished; the next detach or reconcile tries again');
      });
    }
  }

  /** Whether to degrade to one path: multipathd not running (an error instead under `enforce`). */
  async function checkDaemon(enforce: boolean, warnings: string[], signal: AbortSignal): Promise<boolean> {
    const daemon = await multipath.daemonState({ signal, timeoutMs: options.commandTimeoutMs });
    if (daemon.state === 'running') return false;
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
    return true;
  }

  /** The paths: listed, or found by SendTargets through the primary portal (bounded like a login). */
  async function pathTargets(volume: MultipathVolume, signal: AbortSignal): Promise<{ targets: PathTarget[]; byDiscovery: Set<string> }> {
    if (volume.listed !== undefined) return { targets: volume.listed, byDiscovery: new Set() };
    const budget = portalBudget(signal, volume.primary.portalText, { timeoutMs: options.portalTimeoutMs });
    try {
      const found = await discoverPaths(ctx, volume, budget.signal);
      return { targets: found.paths, byDiscovery: found.createdRecords };
    } catch (error) {
      throw pathError(volume.primary, budget.overran() ? budget.reason(error) : error);
    } finally {
      budget.dispose();
    }
  }

  function checkVolumeId(volumeId: string | undefined): string | undefined {
    return volumeId === undefined ? undefined : parseWith(zStateVolumeId, volumeId, 'volume id');
  }

  return {
    name: NAME,
    protocols: PROTOCOLS,
    priority: PRIORITY,
    sourceKeys: ISCSI_SOURCE_KEYS,

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
        throw contextualError(what, error, call.signal);
      }
    },

    async disconnect(connection: ConnectionInfo, device: Device | undefined, opts: DisconnectOptions): Promise<void> {
      const volume = parseMultipathConnection(connection, { protocols: PROTOCOLS, purpose: 'locate' });
      const volumeId = checkVolumeId(opts.volumeId);
      const what = `disconnecting LUN ${volume.primary.lun} of ${volume.primary.iqn}`;
      try {
        await volumeLocks.withLock(volumeKey(volume), () => disconnectVolume(ctx, volume, device, opts, volumeId, what), opts.signal);
      } catch (error) {
        throw contextualError(what, error, opts.signal);
      }
    },

    async paths(connection: ConnectionInfo, device: Device): Promise<DevicePath[]> {
      const volume = parseMultipathConnection(connection, { protocols: PROTOCOLS, purpose: 'locate' });
      return pathStates(ctx, volume, device);
    },

    async connected(list?: ListOptions): Promise<ConnectedDevice[]> {
      // A dry run only looks: the given-up logins wait for a listing that may change the host.
      if (list?.readOnly !== true) await finishLeftOfStates();
      return connectedDevices(ctx);
    },

    async repairPaths(listed: ConnectedDevice, call: TransportCallContext): Promise<PathRepair> {
      try {
        return await repairMissingPaths(ctx, listed, call.signal, {
          withVolumeLock: (key, fn) => volumeLocks.withLock(key, fn, call.signal),
          watchLeft,
        });
      } catch (error) {
        throw contextualError(`adding the missing paths of ${listed.device.path}`, error, call.signal);
      }
    },

    async check(): Promise<CheckResult> {
      return checkMultipathHost({ fs, runner, iscsiadm: probeClient, multipath, timeoutMs: options.commandTimeoutMs, enforceMultipath: options.enforceMultipath });
    },
  };
}

/**
 * The state of a connect that failed with logins iscsid may still carry on: no device, every path
 * it tried `failed` (the primary among them: the state's lock key is the volume's), the logins
 * added by the caller.
 */
function leftOnlyState(volumeId: string, volume: MultipathVolume, tried: readonly PathTarget[]): AttachState {
  const { primary } = volume;
  const targets = tried.some((t) => lunKey(t) === lunKey(primary)) ? tried : [primary, ...tried];
  return {
    version: 1,
    volumeId,
    target_iqn: primary.iqn,
    target_portal: primary.portalText,
    target_lun: primary.lun,
    paths: targets.map((t) => ({ target_iqn: t.iqn, target_portal: t.portalText, target_lun: t.lun, kernel_lun: t.kernelLun, state: 'failed' as const })),
  };
}
