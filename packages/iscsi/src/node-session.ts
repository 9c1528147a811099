import { BerthError, type FaultPoints, type Logger } from '@berth/core';
import type { DeviceWaiter, HostFs } from '@berth/host';
import type { ChapCredentials, ConnectionChap } from './chap-credentials.js';
import { IscsiadmError } from './iscsiadm-error.js';
import type { IscsiadmClient, RecordSetting } from './iscsiadm-client.js';
import { findIscsiSession, readIscsiSession, type IscsiSession } from './iscsi-sysfs.js';
import type { LunTarget } from './lun-device.js';
import { portalBudget, type PortalBudget } from './portal-budget.js';
import { samePortal } from './portal.js';

/** A session with its SCSI host known: what a LUN scan needs. */
export interface UsableSession extends IscsiSession {
  hostNumber: number;
}

/** What `openSession` did, so that a failure can undo exactly that. */
export interface SessionProgress {
  /** This call made the node record (`--op new`), or a discovery made it for this call. */
  createdRecord: boolean;
  /** This call logged in (not rc 15, not a reused session), or its login was killed mid-way. */
  loggedIn: boolean;
  /** How long this call's `--login` took, in ms (retries included), when it logged in. */
  loginMs?: number;
}

/** How a transport wants its node records and logins (its options). */
export interface SessionSettings {
  /** The open-iscsi iface a new record is bound to. */
  iface: string;
  /** `node.startup` of the records it logs in through. */
  startup: 'automatic' | 'manual';
  /**
   * `node.conn[0].timeo.login_timeout` (s) and `node.session.initial_login_retry_max` written on
   * the record, so iscsid gives up on a dead portal about when berth does; with both set, a login
   * that failed on the network is not run again (iscsid already retried it). Unset: iscsid's own.
   */
  loginTimeoutSeconds?: number;
  loginRetryMax?: number;
  /** The bound of one portal's login, retries included, in ms; unset: the operation's signal only. */
  portalTimeoutMs?: number;
}

/** What the session helpers reach the host through. */
export interface SessionHost {
  fs: HostFs;
  waiter: DeviceWaiter;
  iscsiadm: IscsiadmClient;
  settings: SessionSettings;
  logger: Logger;
  /** Fault points between the commands (`iscsi.connect.after-login`, ...); absent in production. */
  faults?: FaultPoints;
}

/** What a login needs of a path beyond its LUN: its CHAP (and the SendTargets CHAP to check it is offered). */
export type SessionTarget = LunTarget & ConnectionChap;

function usable(session: IscsiSession | undefined): session is UsableSession {
  return session !== undefined && session.hostNumber !== undefined;
}

/**
 * The session to `target`: sysfs first (no process), then `iscsiadm -m session` for a session
 * sysfs did not match (an address spelled differently), read back from sysfs by its id.
 */
export async function findSession(host: SessionHost, target: LunTarget, signal: AbortSignal, useIscsiadm: boolean): Promise<UsableSession | undefined> {
  const inSysfs = await findIscsiSession(host.fs, target);
  if (usable(inSysfs)) return inSysfs;
  if (!useIscsiadm) return undefined;
  const listed = (await host.iscsiadm.sessions({ signal })).find((s) => s.iqn === target.iqn && samePortal(s.portal, target.portal));
  if (listed === undefined) return undefined;
  const session = await readIscsiSession(host.fs, listed.sid);
  return usable(session) ? session : undefined;
}

/**
 * Make sure a session to `target` exists, the seed's sequence with os-brick's fixes: an existing
 * session is reused as it is; otherwise an optional SendTargets check with discovery CHAP, the
 * node record created only when absent (`--op new` over a record resets it), then **one** update
 * of every key not already right (`node.session.scan=manual`: no scan of every LUN at login; the
 * bounded login keys when set; CHAP, mutual too, passwords only as secrets; `node.startup` for a
 * record it made), the login (rc 15 counts as success; 19 and 24 are never retried; bounded by
 * `portalTimeoutMs` and `cut`), and `node.startup` on a record that was there. On failure it
 * undoes what it did (logout, record delete) and throws.
 */
export async function openSession(
  host: SessionHost,
  target: SessionTarget,
  signal: AbortSignal,
  progress: SessionProgress,
  cleanupSignal: () => AbortSignal,
  hooks: SessionHooks = {},
): Promise<UsableSession> {
  const { cut } = hooks;
  const existing = await findSession(host, target, signal, false);
  if (existing !== undefined) {
    if (existing.state !== 'LOGGED_IN') {
      host.logger.warn({ iqn: target.iqn, portal: target.portalText, sid: existing.sid, state: existing.state }, 'reusing a session that is not logged in (the kernel is recovering it)');
    }
    return existing;
  }
  const { iscsiadm, settings } = host;
  const call = { signal };
  // When the login whose iscsiadm was killed started (epoch ms): iscsid may still carry it on.
  let killedAt: number | undefined;
  try {
    if (target.discoveryAuth !== undefined) await checkOffered(host, target, target.discoveryAuth, signal, cleanupSignal);
    const record = await iscsiadm.nodeShow(target, call);
    if (record === undefined) {
      await iscsiadm.nodeNew(target, settings.iface, call);
      progress.createdRecord = true;
    }
    // A record this connect made is its own: it may log in at boot from the start. An existing
    // record gets node.startup only once the login worked.
    const fresh = record === undefined;
    const bounded = settings.loginTimeoutSeconds !== undefined && settings.loginRetryMax !== undefined;
    const wanted: RecordSetting[] = [
      { key: 'node.session.scan', value: 'manual' },
      ...(bounded
        ? [
            { key: 'node.conn[0].timeo.login_timeout', value: String(settings.loginTimeoutSeconds) },
            { key: 'node.session.initial_login_retry_max', value: String(settings.loginRetryMax) },
          ]
        : []),
      ...chapSettings(target.auth),
      ...(fresh ? [{ key: 'node.startup', value: settings.startup }] : []),
    ];
    // A fresh record holds the defaults, not what an older one held; a secret is never compared.
    const changes = wanted.filter((w) => fresh || w.secret === true || record[w.key] !== w.value);
    await iscsiadm.nodeUpdateAll(target, changes, call);
    await host.faults?.hit('iscsi.connect.after-node-record');
    // The login is what hangs on a dead portal: it alone gets the portal's budget (retries
    // included); the record commands above are local and bounded by the command timeout.
    const budget = portalBudget(signal, target.portalText, { timeoutMs: settings.portalTimeoutMs, ...(cut === undefined ? {} : { cut }) });
    try {
      let login: 'logged-in' | 'already-present';
      const loginStarted = performance.now();
      killedAt = Date.now();
      hooks.onLogin?.();
      try {
        login = await iscsiadm.login(target, { signal: budget.signal, retryConnectionFailures: !bounded });
        progress.loginMs = performance.now() - loginStarted;
        killedAt = undefined;
      } catch (error) {
        // iscsid goes on with a login whose iscsiadm was killed (timeout, budget, deadline): a
        // session may still come up, so the undo logs out (rc 21 when none came).
        if (IscsiadmError.isIscsiadmError(error) && (error.exitClass === 'cancelled' || error.errorName === 'TIMEOUT')) progress.loggedIn = true;
        else killedAt = undefined;
        throw budget.overran() ? budget.reason(error) : error;
      }
      progress.loggedIn = login === 'logged-in';
      await host.faults?.hit('iscsi.connect.after-login');
      host.logger.info({ iqn: target.iqn, portal: target.portalText, login }, login === 'logged-in' ? 'logged in' : 'login found a session already there');
      if (!fresh && record['node.startup'] !== settings.startup) await iscsiadm.nodeUpdateAll(target, [{ key: 'node.startup', value: settings.startup }], call);
      let session = await findSession(host, target, signal, true);
      if (session === undefined && login === 'already-present') {
        // rc 15 with no session in sysfs: iscsid is still carrying out another login of this
        // record (an earlier, abandoned attempt, or another tool). Its session may come: wait for
        // it within what is left of the budget.
        session = await waitForSession(host, target, budget, signal);
      }
      if (session === undefined) {
        throw new BerthError('DRIVER_ERROR', `iscsiadm logged in to ${target.iqn} at ${target.portalText}, but no such session is in sysfs or in \`iscsiadm -m session\``, {
          hint: 'look at `iscsiadm -m session` and /sys/class/iscsi_session; the session may have dropped right after login (see the kernel log)',
        });
      }
      return session;
    } finally {
      budget.dispose();
    }
  } catch (error) {
    // Told before the undo: a caller that gave this path up need not wait for its logout.
    hooks.onFailed?.(error);
    const { onLoginLeft } = hooks;
    const startedAt = killedAt;
    const left = onLoginLeft === undefined || startedAt === undefined ? undefined : (boundMs: number) => onLoginLeft({ startedAt, boundMs });
    await undoSession(host, target, progress, cleanupSignal(), left);
    throw error;
  }
}

/** What a caller of `openSession` may watch or stop. */
export interface SessionHooks {
  /** Fires to stop the login (or the wait for its session): a multipath attach gave the path up. */
  cut?: AbortSignal;
  /** Told right before `--login` runs. */
  onLogin?: () => void;
  /** Told as soon as the session cannot be had, before the undo runs. */
  onFailed?: (error: unknown) => void;
  /**
   * Told when the undo of a login whose iscsiadm was killed found no session yet: iscsid may
   * still log in until its own bound, so the node record is kept (without this hook it is deleted,
   * and a session that comes later is nobody's). The caller finishes it (`LeftLogin`).
   */
  onLoginLeft?: (left: LeftLogin) => void;
}

/** A killed login iscsid may still carry on: no session when it was undone, its node record kept. */
export interface LeftLogin {
  /** When its `--login` started (epoch ms): iscsid's bound counts from there. */
  startedAt: number;
  /** iscsid's own bound on it, in ms: `login_timeout` × `initial_login_retry_max` as written on the record. */
  boundMs: number;
}

/** open-iscsi's defaults of `node.conn[0].timeo.login_timeout` (s) and `node.session.initial_login_retry_max`. */
const ISCSID_LOGIN_TIMEOUT_S = 15;
const ISCSID_LOGIN_RETRY_MAX = 8;

/**
 * How long iscsid may carry one login on, in ms, with `login_timeout` (s) and
 * `initial_login_retry_max` as the node record has them: every attempt may use its whole timer,
 * and iscsid stops once `retry_max` of them (at least one) have passed.
 */
export function iscsidLoginBoundMs(loginTimeoutSeconds: number, loginRetryMax: number): number {
  return loginTimeoutSeconds * Math.max(1, loginRetryMax) * 1000;
}

/** iscsid's bound on a login of `target` (ms), from its node record, else the settings, else open-iscsi's defaults. */
async function loginBoundMs(host: SessionHost, target: LunTarget, signal: AbortSignal): Promise<number> {
  const record = await host.iscsiadm.nodeShow(target, { signal }).catch(() => undefined);
  const read = (key: string): number | undefined => {
    const value = Number(record?.[key]);
    return Number.isFinite(value) && value > 0 ? value : undefined;
  };
  const timeoutS = read('node.conn[0].timeo.login_timeout') ?? host.settings.loginTimeoutSeconds ?? ISCSID_LOGIN_TIMEOUT_S;
  const retryMax = read('node.session.initial_login_retry_max') ?? host.settings.loginRetryMax ?? ISCSID_LOGIN_RETRY_MAX;
  return iscsidLoginBoundMs(timeoutS, retryMax);
}

/** The record keys of a login's CHAP (none without CHAP). */
function chapSettings(auth: ChapCredentials | undefined): RecordSetting[] {
  if (auth === undefined) return [];
  return [
    { key: 'node.session.auth.authmethod', value: 'CHAP' },
    { key: 'node.session.auth.username', value: auth.username },
    { key: 'node.session.auth.password', value: auth.password, secret: true },
    ...(auth.usernameIn !== undefined && auth.passwordIn !== undefined
      ? [
          { key: 'node.session.auth.username_in', value: auth.usernameIn },
          { key: 'node.session.auth.password_in', value: auth.passwordIn, secret: true },
        ]
      : []),
  ];
}

/**
 * Wait for the session of a login iscsid is still carrying out (sysfs has no events: the waiter's
 * short poll reads it), until the budget runs out; then a TIMEOUT that says so. Without a budget
 * of its own (no `portalTimeoutMs`), the command timeout bounds the wait.
 */
async function waitForSession(host: SessionHost, target: LunTarget, budget: PortalBudget, signal: AbortSignal): Promise<UsableSession> {
  const limitMs = host.settings.portalTimeoutMs ?? 30_000;
  try {
    return await host.waiter.waitUntil('/sys/class/iscsi_session', () => findSession(host, target, budget.signal, false), {
      timeoutMs: limitMs,
      signal: budget.signal,
      what: `the session iscsid is logging in to ${target.portalText}`,
    });
  } catch (error) {
    if (signal.aborted) throw error;
    throw new BerthError('TIMEOUT', `iscsid is still logging in to ${target.iqn} at ${target.portalText} (iscsiadm: session exists, rc 15), and no session came up within ${budget.overran() ? budget.limitMs() : limitMs} ms`, {
      cause: error,
      hint: 'an earlier login to this portal is still running in iscsid: it gives up after node.conn[0].timeo.login_timeout x node.session.initial_login_retry_max; check the portal, then attach again',
      details: { portal: target.portalText },
    });
  }
}

/**
 * Log out (when `progress.loggedIn`) and delete the record (when `progress.createdRecord`); logs,
 * never throws. With `left` (the login's iscsiadm was killed), a logout that finds no session
 * keeps the record and tells `left` iscsid's bound: the login may still come up.
 */
export async function undoSession(host: SessionHost, target: LunTarget, progress: SessionProgress, signal: AbortSignal, left?: (boundMs: number) => void): Promise<void> {
  const call = { signal };
  let loggedOut = !progress.loggedIn;
  if (progress.loggedIn) {
    try {
      const outcome = await host.iscsiadm.logout(target, call);
      progress.loggedIn = false;
      if (outcome === 'absent' && left !== undefined) {
        const boundMs = await loginBoundMs(host, target, signal);
        host.logger.info({ iqn: target.iqn, portal: target.portalText, boundMs }, 'undo: no session yet of a login iscsid may still carry on; its record stays until the session is closed or the bound passes');
        left(boundMs);
        return;
      }
      loggedOut = true;
    } catch (error) {
      host.logger.warn({ iqn: target.iqn, portal: target.portalText, error: messageOf(error) }, 'undo: logout failed; the session stays');
    }
  }
  // A record under a session cannot be deleted (rc 15), and one this call did not make is not its to delete.
  if (progress.createdRecord && loggedOut) {
    try {
      await host.iscsiadm.nodeDelete(target, call);
      progress.createdRecord = false;
    } catch (error) {
      host.logger.warn({ iqn: target.iqn, portal: target.portalText, error: messageOf(error) }, 'undo: deleting the node record failed');
    }
  }
}

/**
 * SendTargets discovery with discovery CHAP through the portal, to check that the target is
 * offered to this initiator (a missing target then fails with a clear error, not a login rc 19).
 * `--op nonpersistent` keeps discovery from rewriting node records (open-iscsi resets the
 * records it returns, CHAP and `node.startup` included); the discovery record, which stores the
 * password in plain text, is deleted afterwards even when discovery failed.
 */
async function checkOffered(host: SessionHost, target: LunTarget, auth: ChapCredentials, signal: AbortSignal, cleanupSignal: () => AbortSignal): Promise<void> {
  const offered = await sendTargets(host, target.portalText, auth, { signal, cleanupSignal, persistent: false });
  if (!offered.some((t) => t.iqn === target.iqn)) {
    throw new BerthError('NOT_FOUND', `the portal ${target.portalText} does not offer ${target.iqn} to this host (SendTargets listed ${offered.length} target(s))`, {
      hint: 'check the IQN and portal in the connection_info, and that the backend allowed this host\'s initiator name (`berth connector`)',
      details: { offered: offered.map((t) => t.iqn) },
    });
  }
}

/**
 * SendTargets through a discovery record of `portal` (with its CHAP when given), the record
 * deleted afterwards even when discovery failed: it stores the discovery password in plain text.
 */
export async function sendTargets(
  host: Pick<SessionHost, 'iscsiadm' | 'settings' | 'logger'>,
  portal: string,
  auth: ChapCredentials | undefined,
  options: { signal: AbortSignal; cleanupSignal: () => AbortSignal; persistent: boolean },
): ReturnType<IscsiadmClient['discoverydbDiscover']> {
  const { iscsiadm, settings } = host;
  const secrets = [auth?.password, auth?.passwordIn].filter((s): s is string => s !== undefined && s !== '');
  try {
    await iscsiadm.discoverydbNew(portal, settings.iface, { signal: options.signal });
    if (auth !== undefined) {
      await iscsiadm.discoverydbUpdate(
        portal,
        {
          method: 'CHAP',
          username: auth.username,
          password: auth.password,
          ...(auth.usernameIn === undefined ? {} : { usernameIn: auth.usernameIn }),
          ...(auth.passwordIn === undefined ? {} : { passwordIn: auth.passwordIn }),
        },
        settings.iface,
        { signal: options.signal },
      );
    }
    return await iscsiadm.discoverydbDiscover(portal, { signal: options.signal, iface: settings.iface, persistent: options.persistent, secrets });
  } finally {
    await iscsiadm.discoverydbDelete(portal, { signal: options.cleanupSignal() }).catch((error: unknown) => {
      host.logger.warn({ portal, error: messageOf(error) }, 'deleting the discovery record failed; it holds the discovery password');
    });
  }
}

/**
 * Log out of `target`, then delete its node record when `deleteRecord`; each step goes through
 * `attempt`, which records or throws its failure. A detach passes the disconnect fault points
 * around the logout (`faultPoints`); an undo of a failed connect is no step boundary of its own.
 * Resolves whether the logout went through (the record's delete aside).
 */
export async function closeSession(
  host: SessionHost,
  target: LunTarget,
  options: { signal: AbortSignal | undefined; deleteRecord: boolean; faultPoints?: boolean; namePortal?: boolean },
  attempt: <T>(step: string, fn: () => Promise<T>) => Promise<T | undefined>,
): Promise<boolean> {
  const call = options.signal === undefined ? {} : { signal: options.signal };
  const at = options.namePortal === true ? ` of ${target.portalText}` : '';
  if (options.faultPoints === true) await host.faults?.hit('iscsi.disconnect.before-logout');
  const loggedOut = await attempt(options.namePortal === true ? `log out of ${target.portalText}` : 'log out', () => host.iscsiadm.logout(target, call));
  if (options.faultPoints === true) await host.faults?.hit('iscsi.disconnect.after-logout');
  // With the session still there the delete would fail with rc 15 and say nothing new.
  if (loggedOut === undefined || !options.deleteRecord) {
    host.logger.info({ iqn: target.iqn, portal: target.portalText, logout: loggedOut ?? 'failed' }, 'session closed');
    return loggedOut !== undefined;
  }
  const deleted = await attempt(`delete the node record${at}`, () => host.iscsiadm.nodeDelete(target, call));
  host.logger.info({ iqn: target.iqn, portal: target.portalText, logout: loggedOut, record: deleted }, 'session closed');
  return true;
}

/** An error's message (for logs). */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
