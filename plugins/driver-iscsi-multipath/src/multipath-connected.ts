import type { ConnectedDevice, Device, DevicePath } from '@berth/core';
import { checkIdentity, deviceIsTargetLun, devPath, formatHctl, formatPortal, holdersOf, readIscsiSession, scsiDeviceOf, scsiIdentity, slavesOf, toPortal, leftPathsOf } from '@berth/iscsi';
import type { HostFs } from '@berth/host';
import type { AttachState } from './attach-state.js';
import { targetKey, type MultipathVolume, type PathTarget } from './multipath-connection.js';
import type { MultipathContext } from './multipath-context.js';
import { readMap } from './multipath-map.js';
import { locatePaths, pathsOfDevice, pathsOfState, type LocatedPath } from './path-locate.js';

/** Each path of a connected volume and its state now (the device's identity is checked first). */
export async function pathStates(ctx: MultipathContext, volume: MultipathVolume, device: Device): Promise<DevicePath[]> {
  await checkIdentity(ctx.fs, device, `reading the paths of LUN ${volume.primary.lun} of ${volume.primary.iqn}`);
  const fromDevice = pathsOfDevice(device);
  const wwn = device.scsi_wwn ?? device.multipath_id;
  const located = await locatePaths(ctx.fs, volume, fromDevice.map((p) => p.target), wwn, ctx.logger);
  const dm = /^\/dev\/dm-\d+$/.test(device.path) ? device.path.slice('/dev/'.length) : undefined;
  const out: DevicePath[] = [];
  for (const p of located) out.push(await pathState(ctx, p, dm, device.path));
  return out;
}

async function pathState(ctx: MultipathContext, p: LocatedPath, dm: string | undefined, devicePath: string): Promise<DevicePath> {
  const { fs } = ctx;
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

/** One slave of a multipath map: its disk, the session's target and portal, and its state. */
export interface MapSlave {
  device: string;
  iqn: string;
  lun: number;
  portal?: string;
  /** `active` (session logged in), else the session's state in lower case. */
  state: string;
}

/** The iSCSI disks under map `dm` (others are skipped). */
export async function mapSlaves(fs: HostFs, dm: string): Promise<MapSlave[]> {
  const out: MapSlave[] = [];
  for (const slave of await slavesOf(fs, dm)) {
    const sd = await scsiDeviceOf(fs, slave).catch(() => undefined);
    if (sd?.sid === undefined) continue;
    const session = await readIscsiSession(fs, sd.sid);
    if (session === undefined) continue;
    out.push({
      device: devPath(slave),
      iqn: session.iqn,
      lun: sd.hctl.lun,
      ...(session.portal === undefined ? {} : { portal: formatPortal(session.portal) }),
      state: session.state === 'LOGGED_IN' ? 'active' : session.state.toLowerCase(),
    });
  }
  return out;
}

/**
 * The paths of a multipath attach state that map `slaves` lacks: every path it tried but a
 * refused one (another LUN's WWN: the backend's lists are wrong, a repair would refuse it again)
 * and an unused one (single mode). A portal whose given-up login iscsid may still carry on
 * (`left_logins`, before its bound) is not listed: that login is finished first, so a path is
 * never logged in twice.
 */
export function missingPortals(state: AttachState, slaves: readonly MapSlave[], now: number): PathTarget[] {
  const present = new Set(slaves.map((s) => `${s.iqn}|${s.portal ?? ''}`));
  const pending = new Set(leftPathsOf(state).filter((l) => l.until > now).map((l) => targetKey(l.target)));
  const tried = pathsOfState({ ...state, paths: state.paths.filter((p) => p.state === 'active' || p.state === 'failed') });
  return tried.filter((t) => !present.has(`${t.iqn}|${t.portalText}`) && !pending.has(targetKey(t)));
}

/**
 * Every multipath map whose slaves are iSCSI disks, with its paths and identity, and the
 * single-mode attachments from their state (for `berth reconcile`).
 */
export async function connectedDevices(ctx: MultipathContext): Promise<ConnectedDevice[]> {
  const { fs } = ctx;
  const saved = await ctx.states.list();
  const out: ConnectedDevice[] = [];
  const seen = new Set<string>();
  for (const entry of await fs.readdir('/sys/block')) {
    if (!/^dm-\d+$/.test(entry)) continue;
    const map = await readMap(fs, entry);
    if (map === undefined) continue;
    const slaves = await mapSlaves(fs, entry);
    const first = slaves[0];
    const paths: DevicePath[] = slaves.map((p) => ({ ...(p.portal === undefined ? {} : { portal: p.portal }), device: p.device, state: p.state }));
    if (first === undefined) continue;
    const state = saved.find((s) => s.dm === map.dm && s.scsi_wwn === map.multipathId);
    // The volume's portals the map lacks (given up at attach, or failed and gone): reconcile and the agent add them.
    if (state?.mode === 'multipath') paths.push(...missingPortals(state, slaves, Date.now()).map((t) => ({ portal: t.portalText, state: 'failed' })));
    seen.add(`/dev/${map.dm}`);
    out.push({
      device: {
        path: `/dev/${map.dm}`,
        type: 'block',
        scsi_wwn: map.multipathId,
        multipath_id: map.multipathId,
        paths,
        meta: { mode: 'multipath', dm: map.dm, mapName: map.name, ...(state === undefined ? {} : { volumeId: state.volumeId }) },
        identity: { kind: 'dm', uuid: `mpath-${map.multipathId}`, wwn: map.multipathId, dm: map.dm },
      },
      // Without a state the portal that was `target_portal` is unknown: IQN and LUN name the volume.
      source: state !== undefined
        ? { target_iqn: state.target_iqn, target_portal: state.target_portal, target_lun: state.target_lun }
        : { target_iqn: first.iqn, ...(first.lun < 256 ? { target_lun: first.lun } : {}) },
    });
  }
  for (const state of saved) {
    // A state with only given-up logins (no device) lists nothing.
    const statedDevice = state.device;
    if (state.mode !== 'single' || statedDevice === undefined || seen.has(statedDevice)) continue;
    const name = statedDevice.slice('/dev/'.length);
    const path0 = state.paths.find((p) => p.device === statedDevice);
    if (path0 === undefined) continue;
    let portal;
    try {
      portal = toPortal(path0.target_portal);
    } catch {
      continue;
    }
    const lun = await deviceIsTargetLun(fs, name, { iqn: path0.target_iqn, portal, portalText: path0.target_portal, lun: path0.target_lun, kernelLun: path0.kernel_lun });
    if (lun === undefined) continue;
    out.push({
      device: {
        path: statedDevice,
        type: 'block',
        ...(state.scsi_wwn === undefined ? {} : { scsi_wwn: state.scsi_wwn }),
        meta: { mode: 'single', volumeId: state.volumeId },
        identity: scsiIdentity(lun.sid, formatHctl(lun.hctl), state.scsi_wwn || undefined),
      },
      source: { target_iqn: state.target_iqn, target_portal: state.target_portal, target_lun: state.target_lun },
    });
  }
  return out;
}
