import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import { AttachStateFileStore, zLeftLogin, zStateVolumeId } from '@berth/iscsi';

/** One path as the attach left it. */
export const zAttachPath = lazySchema(() => z.object({
  /** The connection's own spelling. */
  target_iqn: z.string(),
  target_portal: z.string(),
  target_lun: z.number().int().nonnegative(),
  kernel_lun: z.number().int().nonnegative(),
  /** `active` (in the device), `failed` (no session or no device), `refused` (another LUN's WWN), `unused` (degraded mode). */
  state: z.enum(['active', 'failed', 'refused', 'unused']),
  sid: z.number().int().nonnegative().optional(),
  hctl: z.string().optional(),
  /** `/dev/sdX`, when the path had a device. */
  device: z.string().optional(),
}));

/**
 * What the transport remembers about a connected volume, without any secret (Kubernetes keeps
 * the same in its iscsi.json): enough for a disconnect after a restart, when the caller no longer
 * has the device. A connect that failed while iscsid may still carry logins on leaves a state with
 * only those logins (`left_logins`; no `mode`, `device`, `scsi_wwn`, `connectedAt`; every path
 * `failed`): the rollback's disconnect, a reconcile or a later connect finishes them, in this
 * process or another.
 */
export const zAttachState = lazySchema(() => z.object({
  version: z.literal(1),
  volumeId: zStateVolumeId,
  /** `multipath`: `device` is a dm map over the paths; `single`: degraded to one `/dev/sdX`. */
  mode: z.enum(['multipath', 'single']).optional(),
  /** The device handed out: `/dev/dm-N`, or `/dev/sdX` in single mode (absent: no device, only `left_logins`). */
  device: z.string().optional(),
  /** `dm-N` and its map name (the wwid unless user_friendly_names), in multipath mode. */
  dm: z.string().optional(),
  mapName: z.string().optional(),
  scsi_wwn: z.string().optional(),
  /** The connection's `target_iqn`/`target_portal`/`target_lun` (or its first listed path): what names the volume. */
  target_iqn: z.string(),
  target_portal: z.string(),
  target_lun: z.number().int().nonnegative(),
  /** Every path the attach tried, with what became of it. */
  paths: z.array(zAttachPath),
  connectedAt: z.string().optional(),
  /** Logins given up that iscsid may still carry on, until finished (absent in states written before it, and when there are none). */
  left_logins: z.array(zLeftLogin).optional(),
}));

/** One volume's persisted attach state. */
export type AttachState = z.output<typeof zAttachState>;

/** One path of a persisted attach state. */
export type AttachPath = z.output<typeof zAttachPath>;

/**
 * `state` without its device (a disconnect removed it): what a state of a connect that failed
 * with logins iscsid may carry on holds — no `mode`, `device`, map, WWN or `connectedAt`, every
 * path `failed` and without a disk — and its left logins.
 */
export function devicelessState(state: AttachState): AttachState {
  const { mode: _mode, device: _device, dm: _dm, mapName: _mapName, scsi_wwn: _wwn, connectedAt: _at, ...rest } = state;
  return {
    ...rest,
    paths: state.paths.map((p) => ({ target_iqn: p.target_iqn, target_portal: p.target_portal, target_lun: p.target_lun, kernel_lun: p.kernel_lun, state: 'failed' as const })),
  };
}

/**
 * This transport's attach states, one JSON file per volume under `dir`
 * (`<dataDir>/driver-iscsi-multipath/attachments/<volumeId>.json`), written atomically by the toolkit's store.
 */
export class AttachStateStore extends AttachStateFileStore<AttachState> {
  constructor(dir: string) {
    super(dir, zAttachState);
  }
}
