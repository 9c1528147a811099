import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import { AttachStateFileStore, zLeftLogin, zStateVolumeId } from '@berth/iscsi';

/**
 * What the transport remembers about a connected volume, without any secret (Kubernetes keeps
 * the same in its iscsi.json): enough for a disconnect after a restart, when the caller no longer
 * has the device. A connect that failed while iscsid may still carry its login on leaves a state
 * with only that login (`left_logins`, no device): the rollback's disconnect, a reconcile or a
 * later connect finishes it, in this process or another.
 */
export const zAttachState = lazySchema(() => z.object({
  version: z.literal(1),
  volumeId: zStateVolumeId,
  /** The connection's own spelling, so `connected()` sources match the connection_info. */
  target_iqn: z.string(),
  target_portal: z.string(),
  target_lun: z.number().int().nonnegative(),
  kernel_lun: z.number().int().nonnegative(),
  iface: z.string(),
  /** The session the device came through when it was connected (absent: no device, only `left_logins`). */
  sid: z.number().int().nonnegative().optional(),
  hctl: z.string().optional(),
  /** `/dev/sdX` (absent: no device, only `left_logins`). */
  device: z.string().optional(),
  scsi_wwn: z.string().optional(),
  connectedAt: z.string().optional(),
  /** A login a failed connect gave up that iscsid may still carry on, until finished. */
  left_logins: z.array(zLeftLogin).optional(),
}));

/** One volume's persisted attach state. */
export type AttachState = z.output<typeof zAttachState>;

/**
 * This transport's attach states, one JSON file per volume under `dir`
 * (`<dataDir>/driver-iscsi/attachments/<volumeId>.json`), written atomically by the toolkit's store.
 */
export class AttachStateStore extends AttachStateFileStore<AttachState> {
  constructor(dir: string) {
    super(dir, zAttachState);
  }
}
