import path from 'node:path';
import {
  BerthError,
  KeyedLock,
  parseWith,
  type CheckResult,
  type ConnectedDevice,
  type ConnectionInfo,
  type Connector,
  type Device,
  type DeviceIdentity,
  type DevicePath,
  type DisconnectOptions,
  type ListOptions,
  type PluginContext,
  type TransportCallContext,
  type TransportDriver,
} from '@berth/core';
import {
  ISCSI_SOURCE_KEYS,
  FailureList,
  iscsiTransportKit,
  checkIdentity,
  contextualError,
  devPath,
  deviceIsTargetLun,
  findLunDevice,
  finishLeftLogin,
  finishLeftLoginForDetach,
  forgetDetached,
  forgetLeftLogins,
  formatHctl,
  formatPortal,
  identityAt,
  inUseBy,
  listIscsiSessions,
  leftEntryOf,
  leftPathOf,
  leftPathsOf,
  lunKey,
  mergeLeft,
  parseIscsiConnection,
  readInitiatorName,
  readIscsiSession,
  sameIdentity,
  samePortal,
  scsiDeviceReader,
  scsiIdentity,
  scsiWwnOf,
  sessionBlockDevices,
  targetKey,
  toPortal,
  saveLeftLogins,
  watchLeftLogins,
  zStateVolumeId,
  type ConnectedLun,
  type IscsiVolumeTarget,
  type LeftPath,
  type LunDevice,
  type ScsiDeviceRead,
  refuseIfHeld,
} from '@berth/iscsi';
import { AttachStateStore, type AttachState } from './attach-state.js';
import { checkIscsiHost } from './host-check.js';
import { zIscsiDriverOptions, type IscsiDriverOptions } from './options.js';

/** The transport's registered name. */
export const NAME = 'iscsi';

/** The `driver_volume_type` values it connects. */
export const PROTOCOLS = ['iscsi'] as const;

/** Where attach states live under berth's data directory. */
export const STATE_SUBDIR = path.join('driver-iscsi', 'attachments');

/** What is at a disk's name now (its SCSI or dm identity), as `identityAt` reads it. */
type IdentityReader = ((name: string) => ReturnType<typeof identityAt>) & {
  /** The SCSI device readings the identities came from, for the lookup of the same call. */
  scsiDevice: ScsiDeviceRead;
};

/** How disconnect, extend and paths read a connection_info: the LUN only (berth stores it without passwords). */
const LOCATE = { protocols: PROTOCOLS, purpose: 'locate' } as const;

/**
 * The `iscsi` transport: one LUN of one target through one portal, with the kernel initiator.
 * The LUN lifecycle (node record, session, scan, disk removal, the logout decision) is
 * `@berth/iscsi`'s `LunLifecycle`; this transport adds one queue per LUN (connects and
 * disconnects of one volume take turns), its attach state, and the device's identity.
 */
export function createIscsiDriver(context: PluginContext<Partial<IscsiDriverOptions>>): TransportDriver {
  const options = parseWith(zIscsiDriverOptions, context.options ?? {}, 'iscsi transport options');
  const { runner, fs } = context.host;
  const logger = context.logger.child({ transport: NAME });
  const { iscsiadm, probe: probeClient, lifecycle } = iscsiTransportKit(context.host, logger, { ...options, transport: NAME }, context.faults);
  const states = new AttachStateStore(path.join(context.dataDir, STATE_SUBDIR));
  const lunLocks = new KeyedLock();

  async function connectLun(target: IscsiVolumeTarget, call: TransportCallContext, volumeId: string | undefined): Promise<Device> {
    // A login whose iscsiadm was killed (deadline, command timeout) and that had no session yet:
    // iscsid may still bring it up, so its record stays and the login is finished later.
    const left: LeftPath[] = [];
    let lun: ConnectedLun;
    try {
      lun = await lifecycle.connect(target, { signal: call.signal, onLoginLeft: (login) => left.push(leftPathOf(target, login)) });
    } catch (error) {
      if (left.length > 0) await keepLeft(target, volumeId, left);
      throw error;
    }
    try {
      const device = describeDevice(target, lun);
      if (volumeId !== undefined) {
        // On the state as it is now, not as it was when the connect began: meanwhile a watcher or
        // a reconcile (under another target's lock, or in another process) may have forgotten a
        // left login, or a failed connect at another target kept one; a state read before the
        // login and written back here lost that change. An earlier connect's left login to this
        // target is settled: its session (if it came) is this one; those at other targets stay.
        await states.update(volumeId, (current) => {
          const otherLeft = leftPathsOf(current).filter((l) => targetKey(l.target) !== targetKey(target));
          return { ...stateOf(volumeId, target, lun, device), ...(otherLeft.length === 0 ? {} : { left_logins: otherLeft.map(leftEntryOf) }) };
        });
      }
      await lifecycle.keep(target, lun.progress);
      logger.info({ device: device.path, iqn: target.iqn, portal: target.portalText, lun: target.lun, sid: lun.device.sid, wwn: device.scsi_wwn }, 'LUN connected');
      return device;
    } catch (error) {
      await lifecycle.release(target, lun.progress);
      throw error;
    }
  }

  /**
   * Keep what a failed connect left to iscsid: in the volume's state as it is now (with any
   * earlier ones; a state with only left logins has no device), so the rollback's disconnect, a
   * reconcile or a later connect finishes them in any process; and watched in this one while it lives.
   */
  async function keepLeft(target: IscsiVolumeTarget, volumeId: string | undefined, left: readonly LeftPath[]): Promise<void> {
    if (volumeId !== undefined) {
      const fresh = (): AttachState => ({ version: 1, volumeId, target_iqn: target.iqn, target_portal: target.portalText, target_lun: target.lun, kernel_lun: target.kernelLun, iface: options.iface });
      await saveLeftLogins(states, volumeId, fresh, left, logger);
    }
    watchLeftLogins({ fs, lifecycle, logger }, left, async (done) => {
      if (volumeId !== undefined) await lunLocks.withLock(lunKey(target), () => forgetLeftLogins(states, volumeId, [done]));
    });
  }

  /**
   * Reconcile's look at the host finishes what failed connects left (a CLI attach exits before
   * iscsid ends a given-up login): each login whose session is up or whose bound passed, without
   * waiting; the others stay in their state.
   */
  async function finishLeftOfStates(): Promise<void> {
    for (const state of await states.list().catch(() => [] as AttachState[])) {
      // Each login under its own target's lock (a volume's logins may be at several targets, when
      // its connection_info changed between attaches), and forgotten under it.
      for (const left of leftPathsOf(state)) {
        await lunLocks.withLock(lunKey(left.target), async () => {
          const failures = new FailureList(true);
          const outcome = await finishLeftLogin({ fs, lifecycle, logger }, left, { signal: undefined, failures, wait: false });
          if (failures.size > 0) logger.warn({ volumeId: state.volumeId, portal: left.target.portalText, errors: failures.size }, 'a given-up login could not be finished; the next detach or reconcile tries again');
          else if (outcome === 'done') await forgetLeftLogins(states, state.volumeId, [left]);
        });
      }
    }
  }

  /** The states that name `target`'s LUN: the volume's own, or (no volume id) every one of the LUN. */
  async function statesOf(target: IscsiVolumeTarget, volumeId: string | undefined): Promise<AttachState[]> {
    if (volumeId !== undefined) {
      const state = await states.load(volumeId).catch(() => undefined);
      return state === undefined ? [] : [state];
    }
    return (await states.list()).filter((s) => s.target_iqn === target.iqn && s.kernel_lun === target.kernelLun && sameTargetPortal(s.target_portal, target));
  }

  function describeDevice(target: IscsiVolumeTarget, lun: ConnectedLun): Device {
    const hctl = formatHctl(lun.device.hctl);
    return {
      path: devPath(lun.device.name),
      type: 'block',
      ...(lun.wwn === undefined ? {} : { scsi_wwn: lun.wwn }),
      meta: { iqn: target.iqn, portal: target.portalText, lun: target.lun, sid: lun.device.sid, hctl },
      identity: scsiIdentity(lun.device.sid, hctl, lun.wwn),
    };
  }

  function stateOf(volumeId: string, target: IscsiVolumeTarget, lun: ConnectedLun, device: Device): AttachState {
    return {
      version: 1,
      volumeId,
      target_iqn: target.iqn,
      target_portal: target.portalText,
      target_lun: target.lun,
      kernel_lun: target.kernelLun,
      iface: options.iface,
      sid: lun.device.sid,
      hctl: formatHctl(lun.device.hctl),
      device: device.path,
      ...(device.scsi_wwn === undefined ? {} : { scsi_wwn: device.scsi_wwn }),
      connectedAt: new Date().toISOString(),
    };
  }

  /**
   * The LUN's disk now, and only while it is the very disk this volume was given: the caller's
   * device (its path must still have its identity: a reused name is a CONFLICT and nothing is
   * touched), else the persisted one, else the one sysfs shows for (IQN, portal, LUN). A disk
   * found by name or lookup is used only when sysfs confirms it is this LUN and, when its
   * identity is known, still has it (another attachment's session to the LUN is not this one).
   */
  async function locate(
    target: IscsiVolumeTarget,
    device: Device | undefined,
    volumeId: string | undefined,
    what: string,
    read: IdentityReader = identityReader(),
  ): Promise<LunDevice | undefined> {
    const state = volumeId === undefined ? undefined : await states.load(volumeId).catch(() => undefined);
    const ofThisLun = device !== undefined && device.meta?.['iqn'] === target.iqn && device.meta['lun'] === target.lun;
    const known: DeviceIdentity | undefined =
      state?.sid !== undefined && state.hctl !== undefined && state.target_iqn === target.iqn && state.kernel_lun === target.kernelLun
        ? scsiIdentity(state.sid, state.hctl, state.scsi_wwn)
        : ofThisLun
          ? device.identity
          : undefined;
    const named: string[] = [];
    if (device !== undefined) {
      const check = await checkIdentity(fs, device, what, read);
      if (check.status !== 'gone') named.push(device.path);
    }
    if (state?.device !== undefined) named.push(state.device);
    for (const candidate of named) {
      const name = candidate.startsWith('/dev/') ? candidate.slice('/dev/'.length) : candidate;
      if (!/^[A-Za-z0-9][A-Za-z0-9_:.+-]*$/.test(name)) continue;
      const lun = await deviceIsTargetLun(fs, name, target, read.scsiDevice);
      if (lun !== undefined && (await stillIs(lun, known, read))) return lun;
      if (await fs.exists(`/sys/block/${name}`)) {
        logger.warn({ device: candidate, iqn: target.iqn, lun: target.lun }, 'the recorded device is now another disk; looking the LUN up in sysfs');
      }
    }
    const found = (await findLunDevice(fs, target)).device;
    if (found === undefined || (await stillIs(found, known, read))) return found;
    logger.warn({ device: devPath(found.name), iqn: target.iqn, lun: target.lun }, 'the LUN\'s disk in sysfs is not the one this volume was given (another session); leaving it alone');
    return undefined;
  }

  async function stillIs(lun: LunDevice, known: DeviceIdentity | undefined, read: IdentityReader): Promise<boolean> {
    if (known === undefined) return true;
    const now = await read(lun.name);
    return now !== undefined && sameIdentity(known, now);
  }

  /**
   * A disconnect is done: out of each state it read (`seen`; the volume's, or with no volume id
   * every one of the LUN) go the device it removed and the left logins it finished, from the
   * state as it is now; the file goes when nothing else is in it. What a connect at another target
   * or another process wrote since stays (removing the file, as before, dropped it).
   */
  async function forgetStates(volumeId: string | undefined, seen: readonly AttachState[], finished: readonly LeftPath[]): Promise<void> {
    if (volumeId !== undefined) {
      await forgetDetached(states, volumeId, seen[0], finished, deviceless);
      return;
    }
    for (const state of seen) await forgetDetached(states, state.volumeId, state, finished, deviceless);
  }

  /**
   * `identityAt`, read once per disk name for one call: a disconnect compares the same disk's
   * identity up to three times back to back under the LUN's lock (the caller's device, the disk
   * found, the devices in use), and each read walks its sysfs links again. The SCSI device
   * reading under it is shared with the call's lookup (`deviceIsTargetLun`), whose answer also
   * says where the disk is deleted: identity, lookup and delete see one reading of the disk.
   */
  function identityReader(): IdentityReader {
    const scsiDevice = scsiDeviceReader(fs);
    const seen = new Map<string, ReturnType<typeof identityAt>>();
    const read = (name: string): ReturnType<typeof identityAt> => {
      let identity = seen.get(name);
      if (identity === undefined) {
        identity = identityAt(fs, name, scsiDevice);
        seen.set(name, identity);
      }
      return identity;
    };
    return Object.assign(read, { scsiDevice });
  }

  function checkVolumeId(volumeId: string | undefined): string | undefined {
    return volumeId === undefined ? undefined : parseWith(zStateVolumeId, volumeId, 'volume id');
  }

  return {
    name: NAME,
    protocols: PROTOCOLS,
    sourceKeys: ISCSI_SOURCE_KEYS,

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
        throw contextualError(`connecting LUN ${target.lun} of ${target.iqn} at ${target.portalText}`, error, call.signal);
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
            // Taken before the disk goes: a logout by a concurrent disconnect after this point covers this one.
            const mark = lifecycle.closeMark(target);
            const read = identityReader();
            const lun = await locate(target, device, volumeId, what, read);
            const own: string[] = [];
            const keep: string[] = [];
            if (lun !== undefined) {
              if (inUseBy(opts.inUse, lun.name, await read(lun.name))) {
                logger.info({ device: devPath(lun.name), iqn: target.iqn, lun: target.lun }, 'another attachment uses this disk: it stays, and so does its session');
                keep.push(lun.name);
              } else {
                // Nothing is changed while something holds the disk: a real kernel deletes a
                // mounted or open disk all the same, under its user.
                if (!opts.force) {
                  await refuseIfHeld(context.host, [{ node: devPath(lun.name), sysName: lun.name }], { graceMs: options.holderGraceMs, timeoutMs: options.commandTimeoutMs, signal });
                }
                const deleted = await lifecycle.removeDisk(lun.name, { signal, failures, flush: true, ...(lun.sdevDir === undefined ? {} : { sdevDir: lun.sdevDir }) });
                own.push(lun.name);
                logger.info({ device: devPath(lun.name), iqn: target.iqn, lun: target.lun, deleted }, 'SCSI device removed');
              }
            }
            // Logins a failed connect gave up that iscsid may have carried on: the record was kept,
            // and a session that came has no disk. With one of this target pending, the plain
            // logout decision would find no session yet, delete the record and walk away (the
            // session then comes up owned by nobody): the left login is finished instead, once
            // its session is there or iscsid's bound passed (waited for, within the signal).
            const seen = await statesOf(target, volumeId).catch(() => [] as AttachState[]);
            const lefts = mergeLeft(...seen.map((state) => leftPathsOf(state)));
            const leftHere = lefts.some((l) => targetKey(l.target) === targetKey(target));
            if (!leftHere) {
              // A failure here (a lock file another process held too long) is one step's, as on the
              // multipath transport: recorded under force, the disks are gone already.
              await lifecycle.closeSessionIfUnused(target, own, { signal, failures, mark, keep, faultPoints: true }).catch((error: unknown) => failures.add('close the session', error));
            }
            for (const left of lefts) await finishLeftLoginForDetach({ fs, lifecycle, logger }, left, { signal, failures, keep });
            if (failures.size === 0 && keep.length === 0) await forgetStates(volumeId, seen, lefts);
            failures.throwIfAny(what);
          },
          signal,
        );
      } catch (error) {
        throw contextualError(what, error, signal);
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
            const lun = await locate(target, device, volumeId, what);
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
        throw contextualError(what, error, call.signal);
      }
    },

    async paths(connection: ConnectionInfo, device: Device): Promise<DevicePath[]> {
      const target = parseIscsiConnection(connection, LOCATE);
      const lun = await locate(target, device, undefined, `reading the paths of LUN ${target.lun} of ${target.iqn}`);
      if (lun === undefined) return [{ portal: target.portalText, state: 'missing' }];
      const session = await readIscsiSession(fs, lun.sid);
      return [await pathOf(session?.state, target.portalText, lun.name)];
    },

    async connected(list?: ListOptions): Promise<ConnectedDevice[]> {
      if (list?.readOnly !== true) await finishLeftOfStates();
      const byDevice = new Map<string, AttachState>();
      for (const state of await states.list()) if (state.device !== undefined) byDevice.set(state.device, state);
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
              // Its one path and its state, so that reconcile reports a disk whose target is gone.
              paths: [await pathOf(session.state, portal, name)],
              meta: {
                iqn: session.iqn,
                portal,
                lun: useSaved ? saved.target_lun : hctl.lun,
                sid: session.sid,
                hctl: formatHctl(hctl),
                ...(useSaved ? { volumeId: saved.volumeId } : {}),
              },
              identity: scsiIdentity(session.sid, formatHctl(hctl), scsiWwn),
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

  /**
   * The one path of disk `name` through a session in `sessionState`: `active` while the session is
   * logged in and the disk `running`; `failed` otherwise, with what the kernel does with its I/O
   * (KERNEL-MODEL: `blocked` while the session is down — I/O waits, up to the session's
   * replacement_timeout; `transport-offline` after it — I/O fails until iscsid logs in again).
   */
  async function pathOf(sessionState: string | undefined, portal: string, name: string): Promise<DevicePath> {
    const sdev = (await fs.readFileIfExists(`/sys/block/${name}/device/state`))?.trim() || 'unknown';
    const session = sessionState || 'unknown';
    const path = { portal, device: devPath(name) };
    if (session === 'LOGGED_IN' && sdev === 'running') return { ...path, state: 'active' };
    const io = sdev === 'blocked' ? 'its I/O waits for the target' : sdev === 'running' ? 'its I/O may wait' : 'its I/O fails';
    return { ...path, state: 'failed', detail: `session ${session}, disk ${sdev}: ${io}` };
  }
}

/** `state` without its device: what a state with only left logins keeps (`keepLeft`'s fresh state). */
function deviceless(state: AttachState): AttachState {
  const { sid: _sid, hctl: _hctl, device: _device, scsi_wwn: _wwn, connectedAt: _at, ...rest } = state;
  return rest;
}

function sameTargetPortal(text: string, target: IscsiVolumeTarget): boolean {
  try {
    return samePortal(toPortal(text), target.portal);
  } catch {
    return false;
  }
}
