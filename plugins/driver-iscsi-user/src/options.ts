import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';

/** Options of the `iscsi-user` transport (the config's `pluginOptions['@berth/driver-iscsi-user']`). */
export const zIscsiUserOptions = lazySchema(() => z.object({
  /**
   * Take `iscsi` connections by itself when this host's kernel initiator is unusable (no
   * `/sys/class/iscsi_transport/tcp`) and this transport works here. `false`: only when forced
   * (`berth attach --transport iscsi-user`, or the config's `transports.iscsi`).
   */
  autoSelect: z.boolean().default(true),
  /** Stop qemu-storage-daemon when its last export is removed (it starts again on the next connect). */
  stopWhenIdle: z.boolean().default(true),
  /**
   * Mutual CHAP: qemu 7.2's iSCSI driver cannot check the target's answer, so `verify-first`
   * proves the target with a libiscsi login (`iscsi-inq`) to the same portal right before qemu's
   * own session; `refuse` fails such connections instead.
   */
  mutualChap: z.enum(['verify-first', 'refuse']).default('verify-first'),
  /** libiscsi's request timeout in seconds: I/O on a dead path fails after it (0 waits for ever). */
  requestTimeoutS: z.number().int().min(0).max(3600).default(120),
  /**
   * How often, in s, the watcher process pings each connected LUN's portal (a discovery Login PDU,
   * the kernel's `noop_out_interval`); `0`: no watch, I/O on a dead target waits until it returns.
   */
  noopIntervalS: z.number().int().min(0).max(3600).default(5),
  /**
   * How long, in s, a portal may stay silent before the watcher fails its LUN's I/O (EIO instead
   * of waiting): its FUSE connection is aborted and its record marked `failed` — the kernel's
   * `node.session.timeo.replacement_timeout`.
   */
  replacementTimeoutS: z.number().int().min(1).max(86_400).default(120),
  /** How long a portal may take to accept a TCP connection before the next one is tried, in ms. */
  portalProbeMs: z.number().int().min(50).max(60_000).default(3_000),
  /** Deadline of one QMP command, in ms. */
  qmpTimeoutMs: z.number().int().min(100).max(600_000).default(20_000),
  /** Deadline of one losetup/blockdev/umount run and of a loop device letting go, in ms. */
  commandTimeoutMs: z.number().int().min(100).max(600_000).default(15_000),
  /**
   * How long, in ms, something holding the LUN's loop device (a mount, a process with it open, a
   * device stacked on it) may take to let go before a disconnect (without force) refuses it as
   * busy, untouched (`0`: refuse at once). As the loop transport's.
   */
  holderGraceMs: z.number().int().nonnegative().max(600_000).default(3_000),
  /** How long to wait for another berth process working on the daemon, in ms. */
  lockTimeoutMs: z.number().int().min(100).max(600_000).default(60_000),
  /** The qemu-storage-daemon executable. */
  binary: z.string().min(1).default('qemu-storage-daemon'),
}));

/** Parsed options of the `iscsi-user` transport. */
export type IscsiUserOptions = z.output<typeof zIscsiUserOptions>;
