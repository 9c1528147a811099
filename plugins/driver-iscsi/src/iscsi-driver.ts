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
  TargetUsage,
  deleteScsiDevice,
  devPath,
  deviceIsTargetLun,
  findLunDevice,
  lunDeviceName,
  scanAndWait,
  scsiWwnOf,
  sdevDirOf,
  waitForDeviceGone,
  zStateVolumeId,
  type LunDevice,
  type LunDeviceHost,
  formatHctl,
  findIscsiSession,
  formatPortal,
  listIscsiSessions,
  readInitiatorName,
  readIscsiSession,
  samePortal,
  sessionBlockDevices,
  toPortal,
  type RetryPolicy,
} from '@berth/iscsi';
import { AttachStateStore, type AttachState } from './attach-state.js';
import { checkIscsiHost } from './host-check.js';
import { lunKey, parseIscsiConnection, targetKey, type IscsiVolumeTarget } from './iscsi-connection.js';
import { closeSession, openSession, type NodeSessionHost, type SessionProgress, type UsableSession } from './node-session.js';
import { zIscsiDriverOptions, type IscsiDriverOptions } from './options.js';

/** The transport's registered name. */
export const NAME = 'iscsi';

/** The `driver_volume_type` values it connects. */
export const PROTOCOLS = ['iscsi'] as const;

/** Where attach states live under berth's data directory. */
export const STATE_SUBDIR = path.join('driver-iscsi', 'attachments');

/** How disconnect, extend and paths read a connection_info: the LUN only (berth stores it without passwords). */
const LOCATE = { protocols: PROTOCOLS, purpose: 'locate' } as const;

/** Backoff of retried iscsiadm runs: 250 ms doubling, at most 4 s, with jitter. */
const BACKOFF = { baseDelayMs: 250, maxDelayMs: 4_000 } as const;

/** Everything one connect did, so that a failure undoes exactly that. */
interface ConnectProgress extends SessionProgress {
  /** Counted in `TargetUsage.inflight`. */
  registered: boolean;
  session?: UsableSession;
  /** A scan went out for a LUN that had no device before. */
  scanned: boolean;
}

/**
 * The `iscsi` transport: one LUN of one target through one portal, with the kernel initiator.
 * Locks: one queue per LUN (connects and disconnects of one volume take turns) and one per target
 * (session setup and logout decisions); never one for the whole host.
 */
export function createIscsiDriver(context: PluginContext<Partial<IscsiDriverOptions>>): TransportDriver {
  const options = parseWith(zIscsiDriverOptions, context.options ?? {}, 'iscsi transport options');
  const { runner, fs, waiter } = context.host;
  const logger = context.logger.child({ transport: NAME });
  const retry: RetryPolicy = { attempts: options.loginRetries + 1, ...BACKOFF };
  const iscsiadm = new IscsiadmClient({
    runner,
    timeoutMs: options.commandTimeoutMs,
    retry,
    onRetry: (event) =>
      logger.warn({ op: event.op, attempt: event.attempt, delayMs: Math.round(event.delayMs), error: messageOf(event.error) }, 'iscsiadm failed; retrying'),
  });
  // `check()` must answer quickly: no retries there.
  const probeClient = new IscsiadmClient({ runner, timeoutMs: options.commandTimeoutMs, retry: { attempts: 1, ...BACKOFF } });
  const states = new AttachStateStore(path.join(context.dataDir, STATE_SUBDIR));
  const lunLocks = new KeyedLock();
  const targetLocks = new KeyedLock();
  const usage = new TargetUsage();
  const faults = context.faults;
  const sessionHost: NodeSessionHost = { fs, runner, iscsiadm, retry, options, logger, ...(faults ? { faults } : {}) };
  const deviceHost: LunDeviceHost = { fs, waiter, runner, logger };

  /** Cleanup runs on its own clock: the operation's signal has often fired already. */
  const cleanupSignal = (): AbortSignal => AbortSignal.timeout(options.commandTimeoutMs + options.deviceTimeoutMs);

  async function connectLun(target: IscsiVolumeTarget, call: TransportCallContext, volumeId: string | undefined): Promise<Device> {
    const { signal } = call;
    const key = targetKey(target);
    const progress: ConnectProgress = { createdRecord: false, loggedIn: false, registered: false, scanned: false };
    try {
      const session = await targetLocks.withLock(
        key,
        async () => {
          const opened = await openSession(sessionHost, target, signal, progress, cleanupSignal);
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
        });
        await faults?.hit('iscsi.connect.after-scan');
      } else {
        logger.debug({ device: devPath(name), iqn: target.iqn, lun: target.lun }, 'LUN already connected; reusing its device');
      }
      signal.throwIfAborted();
      const lun: LunDevice = (await deviceIsTargetLun(fs, name, target)) ?? {
        name,
        sid: session.sid,
        hctl: { host: session.hostNumber, channel: 0, target: 0, lun: target.kernelLun },
      };
      const device = await describeDevice(target, lun);
      if (volumeId !== undefined) await states.save(stateOf(volumeId, target, lun, device));
      usage.leave(key, true);
      progress.registered = false;
      logger.info({ device: device.path, iqn: target.iqn, portal: target.portalText, lun: target.lun, sid: lun.sid, wwn: device.scsi_wwn }, 'LUN connected');
      return device;
    } catch (error) {
      await undoConnect(target, progress);
      throw error;
    }
  }

  /** Undo a failed connect: its scanned device, then its login and record if nothing else uses them. Never throws. */
  async function undoConnect(target: IscsiVolumeTarget, progress: ConnectProgress): Promise<void> {
    const signal = cleanupSignal();
    const key = targetKey(target);
    try {
      if (progress.scanned && progress.session !== undefined) {
        // The scan may have made the device after the wait gave up; it was never handed out.
        const name = await lunDeviceName(fs, progress.session, target.kernelLun);
        const sdevDir = name === undefined ? undefined : await sdevDirOf(fs, name);
        if (name !== undefined && (await deleteScsiDevice(fs, name)) === 'deleted') {
          await waitForDeviceGone(deviceHost, name, sdevDir, options.deviceTimeoutMs, signal);
          logger.info({ device: devPath(name) }, 'undo: deleted the device this connect scanned');
        }
      }
    } catch (error) {
      logger.warn({ iqn: target.iqn, lun: target.lun, error: messageOf(error) }, 'undo: could not delete the scanned device');
    }
    if (!progress.registered) return;
    try {
      await targetLocks.withLock(key, async () => {
        usage.leave(key, false);
        progress.registered = false;
        const pending = usage.peek(key).pendingLogin;
        if (!progress.loggedIn && pending === undefined) return;
        if (await sessionStillNeeded(target, undefined)) return;
        const failures = new FailureList(true);
        const ownRecord = progress.createdRecord || pending?.createdRecord === true;
        await closeSession(sessionHost, target, { signal, deleteRecord: ownRecord }, (step, fn) => failures.attempt(step, fn));
        usage.clearLogin(key);
        if (failures.size > 0) logger.warn({ iqn: target.iqn, portal: target.portalText }, 'undo: the session could not be closed completely');
      });
    } catch (error) {
      logger.warn({ iqn: target.iqn, error: messageOf(error) }, 'undo: could not close the session');
    }
  }

  /**
   * Whether the session to `target` must stay: a connect of it is in flight, or a LUN other than
   * `ownDevice` has a block device. Call holding the target lock.
   */
  async function sessionStillNeeded(target: IscsiVolumeTarget, ownDevice: string | undefined): Promise<boolean> {
    if (usage.peek(targetKey(target)).inflight > 0) return true;
    const session = await findIscsiSession(fs, target);
    if (session?.hostNumber === undefined) return false;
    const devices = await sessionBlockDevices(fs, session.sid, { host: session.hostNumber });
    return devices.some((d) => d.device !== ownDevice);
  }

  async function describeDevice(target: IscsiVolumeTarget, lun: LunDevice): Promise<Device> {
    const scsiWwn = await scsiWwnOf(fs, lun.name);
    return {
      path: devPath(lun.name),
      type: 'block',
      ...(scsiWwn === undefined ? {} : { scsi_wwn: scsiWwn }),
      meta: { iqn: target.iqn, portal: target.portalText, lun: target.lun, sid: lun.sid, hctl: formatHctl(lun.hctl) },
    };
  }

  function stateOf(volumeId: string, target: IscsiVolumeTarget, lun: LunDevice, device: Device): AttachState {
    return {
      version: 1,
      volumeId,
      target_iqn: target.iqn,
      target_portal: target.portalText,
      target_lun: target.lun,
      kernel_lun: target.kernelLun,
      iface: options.iface,
      sid: lun.sid,
      hctl: formatHctl(lun.hctl),
      device: device.path,
      ...(device.scsi_wwn === undefined ? {} : { scsi_wwn: device.scsi_wwn }),
      connectedAt: new Date().toISOString(),
    };
  }

  /**
   * The LUN's device now: the one the caller names, else the persisted one, else the one sysfs
   * shows for (IQN, portal, LUN). A named device is used only when sysfs confirms it is this LUN.
   */
  async function locate(target: IscsiVolumeTarget, device: Device | undefined, volumeId: string | undefined): Promise<LunDevice | undefined> {
    const named: string[] = [];
    if (device?.path !== undefined) named.push(device.path);
    if (volumeId !== undefined) {
      const state = await states.load(volumeId).catch(() => undefined);
      if (state !== undefined) named.push(state.device);
    }
    for (const candidate of named) {
      const name = candidate.startsWith('/dev/') ? candidate.slice('/dev/'.length) : candidate;
      if (!/^[A-Za-z0-9][A-Za-z0-9_:.+-]*$/.test(name)) continue;
      const lun = await deviceIsTargetLun(fs, name, target);
      if (lun !== undefined) return lun;
      if (await fs.exists(`/sys/block/${name}`)) {
        logger.warn({ device: candidate, iqn: target.iqn, lun: target.lun }, 'the recorded device is now another disk; looking the LUN up in sysfs');
      }
    }
    return (await findLunDevice(fs, target)).device;
  }

  async function forgetStates(target: IscsiVolumeTarget, volumeId: string | undefined): Promise<void> {
    if (volumeId !== undefined) {
      await states.remove(volumeId);
      return;
    }
    for (const state of await states.list()) {
      if (state.target_iqn === target.iqn && state.kernel_lun === target.kernelLun && sameTargetPortal(state.target_portal, target)) {
        await states.remove(state.volumeId);
      }
    }
  }

  function checkVolumeId(volumeId: string | undefined): string | undefined {
    return volumeId === undefined ? undefined : parseWith(zStateVolumeId, volumeId, 'volume id');
  }

  return {
    name: NAME,
    protocols: PROTOCOLS,

    async connectorProperties(): Promise<Partial<Connector>> {
      const initiator = await readInitiatorName(fs);
      return initiator === undefined ? {} : { initiator };
    },

    async connect(connection: ConnectionInfo, call: TransportCallContext): Promise<Device> {
      const target = parseIscsiConnection(connection, { protocols: PROTOCOLS });
      const volumeId = checkVolumeId(call.volumeId);
      try {
        call.signal.throwIfAborted();
        return await lunLocks.withLock(lunKey(target), () => connectLun(target, call, volumeId), call.signal);
      } catch (error) {
        throw contextual(`connecting LUN ${target.lun} of ${target.iqn} at ${target.portalText}`, error, call.signal);
      }
    },

    async disconnect(connection: ConnectionInfo, device: Device | undefined, opts: DisconnectOptions): Promise<void> {
      const target = parseIscsiConnection(connection, LOCATE);
      const volumeId = checkVolumeId(opts.volumeId);
      const what = `disconnecting LUN ${target.lun} of ${target.iqn} at ${target.portalText}`;
      const { signal } = opts;
      try {
        await lunLocks.withLock(
          lunKey(target),
          async () => {
            const failures = new FailureList(opts.force);
            const lun = await locate(target, device, volumeId);
            if (lun !== undefined) {
              const node = devPath(lun.name);
              // No /dev node (udev never made it) means nothing could have written through it.
              if (await fs.exists(node)) {
                await failures.attempt(`flush ${node}`, () =>
                  runner.run('blockdev', ['--flushbufs', node], { timeoutMs: options.commandTimeoutMs, signal }),
                );
              }
              const sdevDir = await sdevDirOf(fs, lun.name);
              const deleted = await failures.attempt(`delete ${lun.name}`, () => deleteScsiDevice(fs, lun.name));
              if (deleted !== undefined) {
                await failures.attempt(`wait for ${node} to go`, () =>
                  waitForDeviceGone(deviceHost, lun.name, sdevDir, options.deviceTimeoutMs, signal),
                );
              }
              logger.info({ device: node, iqn: target.iqn, lun: target.lun, deleted }, 'SCSI device removed');
            }
            await targetLocks.withLock(
              targetKey(target),
              async () => {
                if (await sessionStillNeeded(target, lun?.name)) {
                  logger.info({ iqn: target.iqn, portal: target.portalText }, 'keeping the session: another LUN of it is in use');
                  return;
                }
                await closeSession(sessionHost, target, { signal, deleteRecord: true, faultPoints: true }, (step, fn) => failures.attempt(step, fn));
                usage.clearLogin(targetKey(target));
              },
              signal,
            );
            if (failures.size === 0) await forgetStates(target, volumeId);
            failures.throwIfAny(what);
          },
          signal,
        );
      } catch (error) {
        throw contextual(what, error, signal);
      }
    },

    async extend(connection: ConnectionInfo, device: Device, call: TransportCallContext): Promise<number> {
      const target = parseIscsiConnection(connection, LOCATE);
      const volumeId = checkVolumeId(call.volumeId);
      const what = `extending LUN ${target.lun} of ${target.iqn} at ${target.portalText}`;
      try {
        return await lunLocks.withLock(
          lunKey(target),
          async () => {
            const lun = await locate(target, device, volumeId);
            if (lun === undefined) {
              throw new BerthError('NOT_FOUND', `LUN ${target.lun} of ${target.iqn} is not connected on this host`, {
                hint: 'attach the volume first; a detached volume needs nothing on the host to grow',
              });
            }
            await iscsiadm.rescanSession(lun.sid, { signal: call.signal });
            const sectors = (await fs.readFileIfExists(`/sys/block/${lun.name}/size`))?.trim();
            if (sectors === undefined || !/^\d+$/.test(sectors)) {
              throw new BerthError('DRIVER_ERROR', `cannot read the size of ${devPath(lun.name)} from /sys/block/${lun.name}/size`);
            }
            const bytes = Number(sectors) * 512;
            logger.info({ device: devPath(lun.name), bytes }, 'session rescanned; device size read');
            return bytes;
          },
          call.signal,
        );
      } catch (error) {
        throw contextual(what, error, call.signal);
      }
    },

    async paths(connection: ConnectionInfo, device: Device): Promise<DevicePath[]> {
      const target = parseIscsiConnection(connection, LOCATE);
      const lun = await locate(target, device, undefined);
      if (lun === undefined) return [{ portal: target.portalText, state: 'missing' }];
      const session = await readIscsiSession(fs, lun.sid);
      const sdevState = (await fs.readFileIfExists(`/sys/block/${lun.name}/device/state`))?.trim() ?? 'unknown';
      const sessionState = session?.state ?? 'unknown';
      const state = sessionState === 'LOGGED_IN' && sdevState === 'running' ? 'active' : `${sessionState.toLowerCase()}/${sdevState}`;
      return [{ portal: target.portalText, device: devPath(lun.name), state }];
    },

    async connected(): Promise<ConnectedDevice[]> {
      const byDevice = new Map<string, AttachState>();
      for (const state of await states.list()) byDevice.set(state.device, state);
      const out: ConnectedDevice[] = [];
      for (const session of await listIscsiSessions(fs)) {
        if (session.hostNumber === undefined) continue;
        for (const { hctl, device: name } of await sessionBlockDevices(fs, session.sid, { host: session.hostNumber })) {
          const saved = byDevice.get(devPath(name));
          const portal = session.portal === undefined ? '' : formatPortal(session.portal);
          const useSaved = saved !== undefined && saved.target_iqn === session.iqn && saved.kernel_lun === hctl.lun;
          const scsiWwn = await scsiWwnOf(fs, name);
          out.push({
            device: {
              path: devPath(name),
              type: 'block',
              ...(scsiWwn === undefined ? {} : { scsi_wwn: scsiWwn }),
              meta: {
                iqn: session.iqn,
                portal,
                lun: useSaved ? saved.target_lun : hctl.lun,
                sid: session.sid,
                hctl: formatHctl(hctl),
                ...(useSaved ? { volumeId: saved.volumeId } : {}),
              },
            },
            source: useSaved
              ? { target_iqn: saved.target_iqn, target_portal: saved.target_portal, target_lun: saved.target_lun }
              : { target_iqn: session.iqn, target_portal: portal, target_lun: hctl.lun },
          });
        }
      }
      return out;
    },

    async check(): Promise<CheckResult> {
      return checkIscsiHost({ fs, runner, iscsiadm: probeClient, timeoutMs: options.commandTimeoutMs });
    },
  };
}

function sameTargetPortal(text: string, target: IscsiVolumeTarget): boolean {
  try {
    return samePortal(toPortal(text), target.portal);
  } catch {
    return false;
  }
}

/**
 * `error` as a BerthError whose message says what was being done. When the operation's signal
 * fired, the code says so (TIMEOUT for a deadline, CANCELLED for a cancel) whatever step noticed.
 */
function contextual(what: string, error: unknown, signal: AbortSignal | undefined): BerthError {
  const base = toBerthError(error, 'DRIVER_ERROR');
  // A step stopped by the signal reports it in its own words (an iscsiadm killed, a wait given
  // up): the signal's reason says whether that was the deadline or a cancel.
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

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
