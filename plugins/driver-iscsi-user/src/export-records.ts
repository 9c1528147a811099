import path from 'node:path';
import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import { AttachStateFileStore } from '@berth/iscsi';

/**
 * What the transport keeps about one connected LUN (`<dataDir>/driver-iscsi-user/exports/<key>.json`,
 * 0600, no secret): enough to find its leftovers after a crash and to rebuild it on a restarted
 * daemon. The store names files by `volumeId`, which here is the LUN's key.
 */
export const zExportRecord = lazySchema(() => z.object({
  /** The LUN's key (`exportNames(iqn, lun).key`); the file's name. */
  volumeId: z.string().regex(/^[0-9a-f]{20}$/),
  iqn: z.string().min(1),
  lun: z.number().int().min(0),
  /** The portal qemu's session uses, and every portal the connection named. */
  portal: z.string().min(1),
  portals: z.array(z.string().min(1)),
  initiator: z.string().min(1),
  /** The protocol node serving `portal` (`iu-<key>` or, after a failover, `iu-<key>-b`); absent: `iu-<key>`. */
  node: z.string().regex(/^iu-[0-9a-f]{20}(-b)?$/).optional(),
  /** The CHAP user (not a secret); the password stays in `secrets/<key>` (0600) while connected. */
  username: z.string().optional(),
  /**
   * Mutual CHAP: the target's own user; its password stays in `secrets/<key>.in` (0600) while
   * connected, so that a failover checks the new portal's target as the connect checked the first.
   */
  usernameIn: z.string().optional(),
  readOnly: z.boolean(),
  /** berth's volume id, when the pipeline named it. */
  berthVolumeId: z.string().optional(),
  /** `connecting` until the loop device is up, then `active`; `failed` when a restore could not rebuild it. */
  status: z.enum(['connecting', 'active', 'failed']),
  loopDevice: z.string().regex(/^\/dev\/loop\d+$/).optional(),
  /** `7:N` of the loop device. */
  rdev: z.string().optional(),
  /** A failover under way: the node logged in through `portal`, before the filter is re-pointed at it. */
  failover: z.object({ node: z.string().regex(/^iu-[0-9a-f]{20}(-b)?$/), portal: z.string().min(1) }).optional(),
  /**
   * A restore released this record's loop device from its dead FUSE file and has not rebuilt its
   * chain yet: killed in between, the next process's `restoreOrphans` rebuilds it (its device no
   * longer backs the dead file, so that alone would not tell it from a detach's leftover).
   */
  restoring: z.literal(true).optional(),
  /** Why it failed (no secret). */
  failure: z.string().optional(),
  updatedAt: z.string(),
}));
/** One LUN's record. */
export type ExportRecord = z.output<typeof zExportRecord>;

/** Where the transport keeps its files under the data dir. */
export interface UserPaths {
  root: string;
  /** The daemon's directory (pid file, log, QMP socket). */
  daemon: string;
  /** FUSE mount points, `<key>.fuse`. */
  mounts: string;
  /** CHAP passwords, `<key>` and `<key>.in` (0600, in a 0700 directory). */
  secrets: string;
  records: string;
  lock: string;
  initiatorName: string;
  /** The host check's commands' answers, kept for the next process's auto-select (`checkUserHostCached`). */
  hostCheck: string;
}

/** The transport's paths under `dataDir`. */
export function userPaths(dataDir: string): UserPaths {
  const root = path.join(dataDir, 'driver-iscsi-user');
  return {
    root,
    daemon: path.join(root, 'qsd'),
    mounts: path.join(root, 'mounts'),
    secrets: path.join(root, 'secrets'),
    records: path.join(root, 'exports'),
    lock: path.join(root, 'daemon.lock'),
    initiatorName: path.join(root, 'initiatorname'),
    hostCheck: path.join(root, 'host-check.json'),
  };
}

/** The records of every LUN this transport has (or had, for `failed` ones) connected. */
export function exportRecords(paths: UserPaths): AttachStateFileStore<ExportRecord> {
  return new AttachStateFileStore(paths.records, zExportRecord);
}
