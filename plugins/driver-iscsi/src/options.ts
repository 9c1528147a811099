import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import { iscsidLoginBoundMs, zIfaceName } from '@berth/iscsi';

/**
 * How much longer than iscsid's own bound on a login the `iscsiadm --login` run must be allowed,
 * in ms: iscsid's timers start once it has the request, and iscsiadm must still be alive to print
 * its answer (rc 8), so that berth never kills a login iscsid would carry on.
 */
export const LOGIN_REPLY_MARGIN_MS = 5_000;

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
  /**
   * `node.conn[0].timeo.login_timeout` written on the node record before the login, in s: how long
   * one login attempt of iscsid may take.
   */
  loginTimeoutSeconds: z.number().int().min(1).max(600).default(5),
  /**
   * `node.session.initial_login_retry_max` written on the node record (open-iscsi's own: 8 with its
   * iscsid.conf, 4 without). iscsid gives a login up after `loginTimeoutSeconds` × this: 20 s with
   * the defaults, below `commandTimeoutMs`, so iscsid ends a login to a dead portal itself (rc 8)
   * instead of going on with it for up to 120 s after berth killed `iscsiadm --login`.
   */
  loginRetryMax: z.number().int().min(1).max(64).default(4),
  /**
   * Retries of an iscsiadm run that failed with a retryable code (never for 19, 24 or other fatal
   * codes). A login that failed on the network is not run again: iscsid already retried it
   * `loginRetryMax` times.
   */
  loginRetries: z.number().int().min(0).max(20).default(3),
  /**
   * Timeout of one iscsiadm or blockdev run, in ms (csi-lib-iscsi's 3 s is too short under load).
   * At least iscsid's bound on a login (`loginTimeoutSeconds` × `loginRetryMax`) plus
   * `LOGIN_REPLY_MARGIN_MS`.
   */
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
}).superRefine((options, ctx) => {
  const boundMs = iscsidLoginBoundMs(options.loginTimeoutSeconds, options.loginRetryMax);
  if (options.commandTimeoutMs < boundMs + LOGIN_REPLY_MARGIN_MS) {
    ctx.addIssue({
      code: 'custom',
      path: ['commandTimeoutMs'],
      message:
        `must be at least ${boundMs + LOGIN_REPLY_MARGIN_MS} ms: iscsid may carry a login on for loginTimeoutSeconds × loginRetryMax = ${boundMs} ms, ` +
        `and an iscsiadm killed before it answers leaves that login running; raise commandTimeoutMs or lower loginTimeoutSeconds or loginRetryMax`,
    });
  }
}));

/** Parsed options of the `iscsi` transport. */
export type IscsiDriverOptions = z.output<typeof zIscsiDriverOptions>;

/** Options as written in the config (every key optional). */
export type IscsiDriverOptionsInput = z.input<typeof zIscsiDriverOptions>;
