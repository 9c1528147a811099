import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import type { Device, Logger } from '@berth/core';
import type { HostFs } from '@berth/host';
import { deviceIsTargetLun, findLunDevice, formatPortal, listIscsiSessions, scsiWwnOf, toPortal, type IscsiSession, type LunDevice } from '@berth/iscsi';
import type { AttachState } from './attach-state.js';
import { lunKey, targetKey, type MultipathVolume, type PathTarget } from './multipath-connection.js';

/** A path of a connected volume as the host shows it now. */
export interface LocatedPath {
  target: PathTarget;
  /** The session to the path's target and portal, when there is one. */
  session?: IscsiSession;
  /** The path's block device, when sysfs confirms it is this LUN (and has the volume's WWN, when known). */
  device?: LunDevice;
}

/** The slice of a device's `meta.paths` entries this transport wrote, read back defensively. */
const zMetaPath = lazySchema(() => z.looseObject({
  iqn: z.string(),
  portal: z.string(),
  lun: z.number().int().nonnegative(),
  kernelLun: z.number().int().nonnegative(),
  device: z.string().optional(),
}));

/** The paths a device this transport returned names in its `meta` (nothing for anything else). */
export function pathsOfDevice(device: Device | undefined): Array<{ target: PathTarget; device?: string }> {
  const raw = device?.meta?.['paths'];
  if (!Array.isArray(raw)) return [];
  const out: Array<{ target: PathTarget; device?: string }> = [];
  for (const entry of raw) {
    const parsed = zMetaPath.safeParse(entry);
    if (!parsed.success) continue;
    const target = toTarget(parsed.data.iqn, parsed.data.portal, parsed.data.lun, parsed.data.kernelLun);
    if (target !== undefined) out.push({ target, ...(parsed.data.device === undefined ? {} : { device: parsed.data.device }) });
  }
  return out;
}

/** The paths a persisted attach state names. */
export function pathsOfState(state: AttachState | undefined): PathTarget[] {
  return (state?.paths ?? [])
    .map((p) => toTarget(p.target_iqn, p.target_portal, p.target_lun, p.kernel_lun))
    .filter((t): t is PathTarget => t !== undefined);
}

function toTarget(iqn: string, portalText: string, lun: number, kernelLun: number): PathTarget | undefined {
  try {
    const portal = toPortal(portalText);
    return { iqn, portal, portalText: formatPortal(portal), lun, kernelLun };
  } catch {
    return undefined;
  }
}

/**
 * Every path of `volume` the host has now: the ones the state, the device and the connection
 * name, plus any session in sysfs to one of those targets through another portal (a path found by
 * discovery, when nothing was persisted). A device counts only when sysfs confirms it is the LUN,
 * and, when `wwn` is known, has that WWN: after a reboot or a rescan `sdb` can be another volume.
 */
export async function locatePaths(
  fs: HostFs,
  volume: MultipathVolume,
  known: readonly PathTarget[],
  wwn: string | undefined,
  logger: Logger,
): Promise<LocatedPath[]> {
  const targets = new Map<string, PathTarget>();
  for (const t of [...known, ...(volume.listed ?? []), volume.primary]) if (!targets.has(lunKey(t))) targets.set(lunKey(t), t);
  const iqns = new Set([...targets.values()].map((t) => t.iqn));
  for (const session of await listIscsiSessions(fs)) {
    if (!iqns.has(session.iqn) || session.portal === undefined) continue;
    const extra: PathTarget = {
      iqn: session.iqn,
      portal: session.portal,
      portalText: formatPortal(session.portal),
      lun: volume.primary.lun,
      kernelLun: volume.primary.kernelLun,
    };
    // A portal already named keeps its own LUN (target_luns may differ per portal).
    if (![...targets.values()].some((t) => targetKey(t) === targetKey(extra))) targets.set(lunKey(extra), extra);
  }
  const located: LocatedPath[] = [];
  for (const target of targets.values()) {
    const found = await findLunDevice(fs, target);
    let device = found.device;
    if (device !== undefined) {
      const confirmed = await deviceIsTargetLun(fs, device.name, target);
      const deviceWwn = confirmed === undefined ? undefined : await scsiWwnOf(fs, device.name);
      if (confirmed === undefined || (wwn !== undefined && deviceWwn !== wwn)) {
        logger.warn({ device: `/dev/${device.name}`, iqn: target.iqn, portal: target.portalText, wwn, deviceWwn }, 'a disk at this path is not this volume; leaving it alone');
        device = undefined;
      } else {
        // With its SCSI device directory: its removal goes there, not by a name given again.
        device = confirmed;
      }
    }
    located.push({ target, ...(found.session === undefined ? {} : { session: found.session }), ...(device === undefined ? {} : { device }) });
  }
  return located;
}
