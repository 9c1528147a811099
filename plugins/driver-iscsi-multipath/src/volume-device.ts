import type { Device } from '@berth/core';
import { devPath, formatHctl, scsiIdentity } from '@berth/iscsi';
import type { AttachPath, AttachState } from './attach-state.js';
import type { MultipathVolume } from './multipath-connection.js';
import type { PathOutcome, PathState } from './multipath-context.js';
import type { MultipathMap } from './multipath-map.js';

/** What a connect ends with, for the device and the state. */
export interface VolumeOutcome {
  volume: MultipathVolume;
  outcomes: PathOutcome[];
  map: MultipathMap | undefined;
  notInMap: ReadonlySet<string>;
  wwn: string;
  warnings: string[];
  timings: Record<string, number>;
}

/** A path's state as the device reports it. */
export function stateOfOutcome(v: VolumeOutcome, o: PathOutcome): PathState {
  if (o.status !== 'up') return o.status;
  return v.map !== undefined && o.device !== undefined && v.notInMap.has(o.device.name) ? 'not-in-map' : 'active';
}

/**
 * The device a connect hands out: `/dev/dm-N` (identity: the map's dm uuid), or the first path's
 * `/dev/sdX` when degraded (identity: its session, H:C:T:L and WWN), with every path's state.
 * `meta.degraded` says some path is missing (failed, not in the map, or one path only).
 */
export function describeVolumeDevice(v: VolumeOutcome): Device {
  const { volume, outcomes, map, wwn } = v;
  const first = outcomes.find((o) => o.status === 'up' && o.device !== undefined);
  const single = first?.device;
  const degraded = map === undefined || outcomes.some((o) => stateOfOutcome(v, o) !== 'active');
  return {
    path: map === undefined ? devPath(single?.name ?? '') : `/dev/${map.dm}`,
    type: 'block',
    scsi_wwn: wwn,
    ...(map === undefined ? {} : { multipath_id: map.multipathId }),
    paths: outcomes.map((o) => ({
      portal: o.target.portalText,
      ...(o.status === 'up' && o.device !== undefined ? { device: devPath(o.device.name) } : {}),
      state: stateOfOutcome(v, o),
    })),
    meta: {
      mode: map === undefined ? 'single' : 'multipath',
      ...(map === undefined ? {} : { dm: map.dm, mapName: map.name, mapper: `/dev/mapper/${map.name}` }),
      iqn: volume.primary.iqn,
      portal: volume.primary.portalText,
      lun: volume.primary.lun,
      discovered: volume.listed === undefined,
      degraded,
      paths: outcomes.map((o) => ({
        iqn: o.target.iqn,
        portal: o.target.portalText,
        lun: o.target.lun,
        kernelLun: o.target.kernelLun,
        state: stateOfOutcome(v, o),
        ...(o.status === 'up' && o.device !== undefined ? { device: devPath(o.device.name), sid: o.device.sid, hctl: formatHctl(o.device.hctl) } : {}),
        ...(o.error === undefined ? {} : { error: o.error.message }),
      })),
      ...(v.warnings.length === 0 ? {} : { warnings: v.warnings }),
      timings: v.timings,
    },
    identity:
      map !== undefined
        ? { kind: 'dm', uuid: `mpath-${map.multipathId}`, wwn, dm: map.dm }
        : scsiIdentity(single?.sid ?? 0, single === undefined ? '' : formatHctl(single.hctl), wwn),
  };
}

/** The attach state of a connect (never a secret): enough for a disconnect after a restart. */
export function attachStateOf(volumeId: string, v: VolumeOutcome, device: Device): AttachState {
  const paths: AttachPath[] = v.outcomes.map((o) => {
    const s = stateOfOutcome(v, o);
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
    mode: v.map === undefined ? 'single' : 'multipath',
    device: device.path,
    ...(v.map === undefined ? {} : { dm: v.map.dm, mapName: v.map.name }),
    scsi_wwn: device.scsi_wwn ?? '',
    target_iqn: v.volume.primary.iqn,
    target_portal: v.volume.primary.portalText,
    target_lun: v.volume.primary.lun,
    paths,
    connectedAt: new Date().toISOString(),
  };
}
