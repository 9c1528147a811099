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
   * one login attempt of iscsid may take (a busy array or CHAP under load may need several
   * seconds to answer). Default `DEFAULT_LOGIN_TIMEOUT_S` (10), lowered to fit `commandTimeoutMs`
   * when not set (see `deriveLoginBound`).
   */
  loginTimeoutSeconds: z.number().int().min(1).max(600).optional(),
  /**
   * `node.session.initial_login_retry_max` written on the node record (open-iscsi's own: 8 with its
   * iscsid.conf, 4 without). iscsid gives a login up after `loginTimeoutSeconds` × this: 20 s with
   * the defaults (10 × 2), below `commandTimeoutMs`, so iscsid ends a login to a dead portal itself
   * (rc 8) instead of going on with it for up to 120 s after berth killed `iscsiadm --login`.
   * Default `DEFAULT_LOGIN_RETRY_MAX` (2), lowered to fit `commandTimeoutMs` when not set.
   */
  loginRetryMax: z.number().int().min(1).max(64).optional(),
  /**
   * Retries of an iscsiadm run that failed with a retryable code: iscsid unreachable (18, 20), its
   * database (6), 29, a run killed at `commandTimeoutMs`; never 19, 24 or other fatal codes. A
   * login that failed with 4, 5, 8, 11 or 33 is not run again: iscsid gave it up itself after
   * retrying it `loginRetryMax` times within its bound (a target that answers "not ready", status
   * 03, included: rc 5); a target that refuses the login (status 02: rc 19, 24) is fatal. Other
   * iscsiadm runs (record updates, logouts, discovery) are retried for those codes too.
   */
  loginRetries: z.number().int().min(0).max(20).default(3),
  /**
   * Timeout of one iscsiadm or blockdev run, in ms (csi-lib-iscsi's 3 s is too short under load).
   * At least iscsid's bound on a login (`loginTimeoutSeconds` × `loginRetryMax`) plus
   * `LOGIN_REPLY_MARGIN_MS` when the user sets either of those (refused otherwise); when they are
   * not set, they are derived to fit under it (`deriveLoginBound`).
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
  /**
   * How long, in ms, something holding the disk (a mount, a process with it open, a device stacked
   * on it) may take to let go before a disconnect (without force) refuses it as busy, untouched
   * (`0`: refuse at once). As the loop transport's.
   */
  holderGraceMs: z.number().int().nonnegative().max(600_000).default(3_000),
}).superRefine((options, ctx) => {
  // Only values the user set can be refused: unset ones are derived to fit.
  if (options.loginTimeoutSeconds === undefined && options.loginRetryMax === undefined) return;
  const bound = deriveLoginBound(options.commandTimeoutMs, options.loginTimeoutSeconds, options.loginRetryMax);
  const boundMs = iscsidLoginBoundMs(bound.loginTimeoutSeconds, bound.loginRetryMax);
  if (options.commandTimeoutMs < boundMs + LOGIN_REPLY_MARGIN_MS) {
    const set = [
      ...(options.loginTimeoutSeconds === undefined ? [] : [`loginTimeoutSeconds ${options.loginTimeoutSeconds}`]),
      ...(options.loginRetryMax === undefined ? [] : [`loginRetryMax ${options.loginRetryMax}`]),
    ].join(' and ');
    ctx.addIssue({
      code: 'custom',
      path: ['commandTimeoutMs'],
      message:
        `${options.commandTimeoutMs} ms is too short for ${set}: iscsid may carry a login on for loginTimeoutSeconds × loginRetryMax = ` +
        `${bound.loginTimeoutSeconds} × ${bound.loginRetryMax} s = ${boundMs} ms, and commandTimeoutMs must be at least that plus ${LOGIN_REPLY_MARGIN_MS} ms ` +
        `(${boundMs + LOGIN_REPLY_MARGIN_MS} ms: an iscsiadm killed before it answers leaves that login running); raise commandTimeoutMs, or lower or unset ${set}`,
    });
  }
}).transform((options) => ({ ...options, ...deriveLoginBound(options.commandTimeoutMs, options.loginTimeoutSeconds, options.loginRetryMax) })));

/** `login_timeout` (s) and `initial_login_retry_max` when the user sets neither: a 20 s bound under the 30 s command timeout. */
export const DEFAULT_LOGIN_TIMEOUT_S = 10;
export const DEFAULT_LOGIN_RETRY_MAX = 2;

/**
 * iscsid's login keys for the record: the user's where set, the others derived so that
 * `loginTimeoutSeconds` × `loginRetryMax` × 1000 + `LOGIN_REPLY_MARGIN_MS` fits in
 * `commandTimeoutMs` where they can: the default pair, else fewer seconds per attempt, else one
 * attempt (never below 1 s × 1, the smallest bound iscsid takes: a `commandTimeoutMs` under 6 s
 * keeps less than the full margin). Values the user set are kept as they are, fitting or not
 * (the schema refuses those that do not).
 */
export function deriveLoginBound(
  commandTimeoutMs: number,
  loginTimeoutSeconds: number | undefined,
  loginRetryMax: number | undefined,
): { loginTimeoutSeconds: number; loginRetryMax: number } {
  const fitS = Math.floor((commandTimeoutMs - LOGIN_REPLY_MARGIN_MS) / 1000);
  if (loginTimeoutSeconds !== undefined && loginRetryMax !== undefined) return { loginTimeoutSeconds, loginRetryMax };
  if (loginTimeoutSeconds !== undefined) {
    return { loginTimeoutSeconds, loginRetryMax: Math.max(1, Math.min(DEFAULT_LOGIN_RETRY_MAX, Math.floor(fitS / loginTimeoutSeconds))) };
  }
  if (loginRetryMax !== undefined) {
    return { loginTimeoutSeconds: Math.max(1, Math.min(DEFAULT_LOGIN_TIMEOUT_S, Math.floor(fitS / loginRetryMax))), loginRetryMax };
  }
  const perAttemptS = Math.min(DEFAULT_LOGIN_TIMEOUT_S, Math.floor(fitS / DEFAULT_LOGIN_RETRY_MAX));
  if (perAttemptS >= 1) return { loginTimeoutSeconds: perAttemptS, loginRetryMax: DEFAULT_LOGIN_RETRY_MAX };
  return { loginTimeoutSeconds: Math.max(1, fitS), loginRetryMax: 1 };
}

/** Parsed options of the `iscsi` transport. */
export type IscsiDriverOptions = z.output<typeof zIscsiDriverOptions>;

/** Options as written in the config (every key optional). */
export type IscsiDriverOptionsInput = z.input<typeof zIscsiDriverOptions>;
