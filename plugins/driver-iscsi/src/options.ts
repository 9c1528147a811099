import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import { zIfaceName } from '@berth/iscsi';

/** Options of the `iscsi` transport (the plugin's options in the config). */
export const zIscsiDriverOptions = lazySchema(() => z.object({
  /** `node.startup` of the node records it makes: `automatic` logs in again at boot (the seed's choice). */
  startup: z.enum(['automatic', 'manual']).default('automatic'),
  /**
   * How long the LUN's block device may take to appear after the scan (and to go after a delete),
   * in ms; the operation's own deadline (its AbortSignal) cuts it shorter.
   */
  deviceTimeoutMs: z.number().int().positive().max(3_600_000).default(30_000),
  /** How many times a scan is issued while waiting for the device, the first included (os-brick rescans too). */
  scanAttempts: z.number().int().min(1).max(10).default(3),
  /** Retries of an iscsiadm run that failed with a retryable code (never for 19, 24 or other fatal codes). */
  loginRetries: z.number().int().min(0).max(20).default(3),
  /** Timeout of one iscsiadm or blockdev run, in ms (csi-lib-iscsi's 3 s is too short under load). */
  commandTimeoutMs: z.number().int().positive().max(600_000).default(30_000),
  /**
   * How long to wait, in ms, while another berth process on this host holds a target's lock file
   * (its session setup or logout decision for that target); then a TIMEOUT naming its pid. Longer
   * than a login with its retries can hold it (`commandTimeoutMs` × (`loginRetries` + 1) with the
   * defaults: 120 s), so a second process queues behind a slow login instead of failing; the
   * operation's own deadline usually ends a wait first.
   */
  targetLockTimeoutMs: z.number().int().min(100).max(3_600_000).default(300_000),
  /** The open-iscsi iface a new node record is bound to. */
  iface: zIfaceName.default('default'),
}));

/** Parsed options of the `iscsi` transport. */
export type IscsiDriverOptions = z.output<typeof zIscsiDriverOptions>;

/** Options as written in the config (every key optional). */
export type IscsiDriverOptionsInput = z.input<typeof zIscsiDriverOptions>;
