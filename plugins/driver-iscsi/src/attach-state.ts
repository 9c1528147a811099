import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import { AttachStateFileStore, zStateVolumeId } from '@berth/iscsi';

/**
 * What the transport remembers about a connected volume, without any secret (Kubernetes keeps
 * the same in its iscsi.json): enough for a disconnect after a restart, when the caller no longer
 * has the device.
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
  /** The session the device came through when it was connected. */
  sid: z.number().int().nonnegative(),
  hctl: z.string(),
  /** `/dev/sdX`. */
  device: z.string(),
  scsi_wwn: z.string().optional(),
  connectedAt: z.string(),
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
