import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import { zIfaceName } from '@berth/iscsi';

/** Options of the `iscsi-multipath` transport (the plugin's options in the config). */
export const zMultipathDriverOptions = lazySchema(() => z.object({
  /** `node.startup` of the node records it logs in through: `automatic` logs in again at boot. */
  startup: z.enum(['automatic', 'manual']).default('automatic'),
  /**
   * How long one portal's login (or its SendTargets discovery) may take, retries included, in ms:
   * what can hang on a dead portal. A dead portal costs the attach at most this; the other portals
   * log in meanwhile. (The node record commands around it are local: `commandTimeoutMs` bounds them.)
   */
  portalTimeoutMs: z.number().int().positive().max(600_000).default(15_000),
  /**
   * How much longer than the first successful login another path's `--login` may take (counted
   * from its own start) before the path is given up and reported `failed` (the next attach or
   * reconcile adds it). Unset: 1.5 × that first login's time for each login that ran beside it,
   * less the login itself, at least 250 ms; once two logins have ended, the slowest of them plus
   * 1.5 × (its time / the logins done) per path still open, at least 250 ms, when that is shorter.
   */
  stragglerGraceMs: z.number().int().min(0).max(600_000).optional(),
  /** `node.conn[0].timeo.login_timeout` written on the records, in s, so iscsid gives up too. */
  loginTimeoutSeconds: z.number().int().min(1).max(600).default(5),
  /** `node.session.initial_login_retry_max` written on the records (iscsid's default is 8). */
  loginRetryMax: z.number().int().min(1).max(64).default(2),
  /**
   * Retries of an iscsiadm run that failed with a retryable code. A login that failed on the network
   * is not run again: iscsid already retried it `loginRetryMax` times, `loginTimeoutSeconds` each.
   */
  loginRetries: z.number().int().min(0).max(20).default(2),
  /** How long a path's block device may take to appear after its scan (and to go after a delete), in ms. */
  deviceTimeoutMs: z.number().int().positive().max(3_600_000).default(30_000),
  /** How many scans are written while waiting for a path's device, the first included. */
  scanAttempts: z.number().int().min(1).max(10).default(3),
  /** How long the multipath map may take to form, take every path and be usable, in ms. */
  mapTimeoutMs: z.number().int().positive().max(600_000).default(20_000),
  /** Tries of `multipath -f` while the map is in use (the bounded retries multipath needs). */
  flushAttempts: z.number().int().min(1).max(20).default(4),
  /** The first wait between two `multipath -f` tries, in ms (it doubles, at most 8 s). */
  flushRetryDelayMs: z.number().int().min(0).max(60_000).default(500),
  /**
   * How long, in ms, something holding the map or one of its paths (a mount, a process with it
   * open, a device stacked on it other than the map itself) may take to let go before a disconnect
   * (without force) refuses it as busy, untouched (`0`: refuse at once). As the loop transport's.
   */
  holderGraceMs: z.number().int().nonnegative().max(600_000).default(3_000),
  /** Timeout of one iscsiadm, multipath, multipathd or blockdev run, in ms. */
  commandTimeoutMs: z.number().int().positive().max(600_000).default(30_000),
  /**
   * How long to wait, in ms, while another berth process on this host holds a target's lock file
   * (its session setup or logout decision for that target); then a TIMEOUT naming its pid. Longer
   * than a login with its retries can hold it (`commandTimeoutMs` × (`loginRetries` + 1) with the
   * defaults: 120 s), so a second process queues behind a slow login instead of failing; the
   * operation's own deadline usually ends a wait first.
   */
  targetLockTimeoutMs: z.number().int().min(100).max(3_600_000).default(300_000),
  /** Fail the attach when multipathd does not run (os-brick's `enforce_multipath`); else degrade to one path. */
  enforceMultipath: z.boolean().default(false),
  /**
   * How SendTargets discovery runs when the connection has no `target_portals`:
   * `nonpersistent` touches no node record; `persistent` is open-iscsi's default (it rewrites the
   * records it returns), with the `node.startup` values it resets saved and restored as os-brick does.
   */
  discoveryMode: z.enum(['nonpersistent', 'persistent']).default('nonpersistent'),
  /**
   * Which discovered targets are paths: those with the connection's `target_iqn` (one target per
   * volume, as tgtd and most arrays export) or every target the portals list (arrays with one
   * IQN per port; each path's WWN is still checked).
   */
  discoveryTargets: z.enum(['same-iqn', 'all']).default('same-iqn'),
  /** The open-iscsi iface a new node record is bound to. */
  iface: zIfaceName.default('default'),
}));

/** Parsed options of the `iscsi-multipath` transport. */
export type MultipathDriverOptions = z.output<typeof zMultipathDriverOptions>;

/** Options as written in the config (every key optional). */
export type MultipathDriverOptionsInput = z.input<typeof zMultipathDriverOptions>;
