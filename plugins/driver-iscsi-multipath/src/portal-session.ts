import { BerthError, type Logger } from '@berth/core';
import type { CommandResult, CommandRunner, DeviceWaiter, HostFs } from '@berth/host';
import {
  classifyResult,
  commandResultOf,
  findIscsiSession,
  formatPortal,
  IscsiadmError,
  readIscsiSession,
  samePortal,
  toIscsiadmError,
  withRetry,
  zRecordKey,
  zRecordValue,
  type IscsiadmClient,
  type IscsiSession,
  type RetryPolicy,
} from '@berth/iscsi';
import type { ChapCredentials, PathTarget } from './multipath-connection.js';
import type { MultipathDriverOptions } from './options.js';

/** A session with its SCSI host known: what a LUN scan needs. */
export interface UsableSession extends IscsiSession {
  hostNumber: number;
}

/** What `openSession` did, so that a failure can undo exactly that. */
export interface SessionProgress {
  /** This call made the node record (`--op new`). */
  createdRecord: boolean;
  /** This call logged in (not rc 15, not a reused session), or its login was killed mid-way. */
  loggedIn: boolean;
}

/** What the session helpers reach the host through. */
export interface PortalSessionHost {
  fs: HostFs;
  runner: CommandRunner;
  waiter: DeviceWaiter;
  iscsiadm: IscsiadmClient;
  options: MultipathDriverOptions;
  /** How retryable iscsiadm failures are retried (inside the caller's signal). */
  retry: RetryPolicy;
  logger: Logger;
}

function usable(session: IscsiSession | undefined): session is UsableSession {
  return session !== undefined && session.hostNumber !== undefined;
}

/**
 * The session to `target`: sysfs first (no process), then `iscsiadm -m session` for a session
 * sysfs did not match (an address spelled differently), read back from sysfs by its id.
 */
export async function findSession(host: PortalSessionHost, target: PathTarget, signal: AbortSignal, useIscsiadm: boolean): Promise<UsableSession | undefined> {
  const inSysfs = await findIscsiSession(host.fs, target);
  if (usable(inSysfs)) return inSysfs;
  if (!useIscsiadm) return undefined;
  const listed = (await host.iscsiadm.sessions({ signal })).find((s) => s.iqn === target.iqn && samePortal(s.portal, target.portal));
  if (listed === undefined) return undefined;
  const session = await readIscsiSession(host.fs, listed.sid);
  return usable(session) ? session : undefined;
}

/**
 * Make sure a session to `target` exists: an existing session is reused as it is; otherwise the
 * node record is created only when absent (`--op new` over a record resets it), then one update
 * sets `node.session.scan=manual`, the bounded login (`node.conn[0].timeo.login_timeout`,
 * `node.session.initial_login_retry_max`: iscsid must give up on a dead portal about when berth
 * does) and CHAP (passwords only as secrets), skipping keys that already hold their value; then
 * the login (rc 15 counts as success, bounded by `portalTimeoutMs`) and `node.startup`. On
 * failure it undoes what it did and throws.
 */
export async function openSession(
  host: PortalSessionHost,
  target: PathTarget,
  auth: ChapCredentials | undefined,
  signal: AbortSignal,
  progress: SessionProgress,
  cleanupSignal: () => AbortSignal,
): Promise<UsableSession> {
  const existing = await findSession(host, target, signal, false);
  if (existing !== undefined) {
    if (existing.state !== 'LOGGED_IN') {
      host.logger.warn({ iqn: target.iqn, portal: target.portalText, sid: existing.sid, state: existing.state }, 'reusing a session that is not logged in (the kernel is recovering it)');
    }
    return existing;
  }
  const { iscsiadm, options } = host;
  const call = { signal };
  try {
    const record = await iscsiadm.nodeShow(target, call);
    if (record === undefined) {
      await iscsiadm.nodeNew(target, options.iface, call);
      progress.createdRecord = true;
    }
    // A record this connect made is its own: it may log in at boot from the start. An existing
    // record gets node.startup only once the login worked.
    const fresh = record === undefined;
    const wanted: RecordSetting[] = [
      { key: 'node.session.scan', value: 'manual' },
      { key: 'node.conn[0].timeo.login_timeout', value: String(options.loginTimeoutSeconds) },
      { key: 'node.session.initial_login_retry_max', value: String(options.loginRetryMax) },
      ...(auth === undefined
        ? []
        : [
            { key: 'node.session.auth.authmethod', value: 'CHAP' },
            { key: 'node.session.auth.username', value: auth.username },
            { key: 'node.session.auth.password', value: auth.password, secret: true },
            ...(auth.usernameIn !== undefined && auth.passwordIn !== undefined
              ? [
                  { key: 'node.session.auth.username_in', value: auth.usernameIn },
                  { key: 'node.session.auth.password_in', value: auth.passwordIn, secret: true },
                ]
              : []),
          ]),
      ...(fresh ? [{ key: 'node.startup', value: options.startup }] : []),
    ];
    // A fresh record holds the defaults, not what an older one held; a secret is never compared.
    const changes = wanted.filter((w) => fresh || w.secret === true || record[w.key] !== w.value);
    await updateRecord(host, target, changes, signal);
    let login: 'logged-in' | 'already-present';
    // The login is what hangs on a dead portal: it alone gets the portal's budget (retries
    // included); the record commands above are local and bounded by the command timeout.
    const budget = portalBudget(options.portalTimeoutMs, signal, target.portalText);
    try {
      try {
        login = await iscsiadm.login(target, { signal: budget.signal });
      } catch (error) {
        // iscsid goes on with a login whose iscsiadm was killed (timeout, budget, deadline): a
        // session may still come up, so the undo logs out (rc 21 when none came).
        if (IscsiadmError.isIscsiadmError(error) && (error.exitClass === 'cancelled' || error.errorName === 'TIMEOUT')) progress.loggedIn = true;
        throw budget.overran() ? budget.reason(error) : error;
      }
      progress.loggedIn = login === 'logged-in';
      host.logger.info({ iqn: target.iqn, portal: target.portalText, login }, login === 'logged-in' ? 'logged in' : 'login found a session already there');
      if (!fresh && record['node.startup'] !== options.startup) await updateRecord(host, target, [{ key: 'node.startup', value: options.startup }], signal);
      let session = await findSession(host, target, signal, true);
      if (session === undefined && login === 'already-present') {
        // rc 15 with no session in sysfs: iscsid is still carrying out another login of this
        // record (an earlier, abandoned attempt, or another tool). Its session may come: wait for
        // it within what is left of the budget.
        session = await waitForSession(host, target, budget);
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
    await undoSession(host, target, progress, cleanupSignal());
    throw error;
  }
}

/**
 * Wait for the session of a login iscsid is still carrying out (sysfs has no events: the waiter's
 * short poll reads it), until the budget runs out; then a TIMEOUT that says so.
 */
async function waitForSession(host: PortalSessionHost, target: PathTarget, budget: PortalBudget): Promise<UsableSession> {
  try {
    return await host.waiter.waitUntil('/sys/class/iscsi_session', () => findSession(host, target, budget.signal, false), {
      timeoutMs: host.options.portalTimeoutMs,
      signal: budget.signal,
      what: `the session iscsid is logging in to ${target.portalText}`,
    });
  } catch (error) {
    if (!budget.overran()) throw error;
    throw new BerthError('TIMEOUT', `iscsid is still logging in to ${target.iqn} at ${target.portalText} (iscsiadm: session exists, rc 15), and no session came up within ${host.options.portalTimeoutMs} ms (portalTimeoutMs)`, {
      cause: error,
      hint: 'an earlier login to this portal is still running in iscsid: it gives up after node.conn[0].timeo.login_timeout x node.session.initial_login_retry_max; check the portal, then attach again',
      details: { portal: target.portalText },
    });
  }
}

/** Log out (when `progress.loggedIn`) and delete the record (when `progress.createdRecord`); logs, never throws. */
export async function undoSession(host: PortalSessionHost, target: PathTarget, progress: SessionProgress, signal: AbortSignal): Promise<void> {
  const call = { signal };
  let loggedOut = !progress.loggedIn;
  if (progress.loggedIn) {
    try {
      await host.iscsiadm.logout(target, call);
      progress.loggedIn = false;
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
 * Log out of `target`, then delete its node record when `deleteRecord`; each step goes through
 * `attempt`, which records or throws its failure.
 */
export async function closeSession(
  host: PortalSessionHost,
  target: PathTarget,
  options: { signal: AbortSignal | undefined; deleteRecord: boolean },
  attempt: <T>(step: string, fn: () => Promise<T>) => Promise<T | undefined>,
): Promise<void> {
  const call = options.signal === undefined ? {} : { signal: options.signal };
  const loggedOut = await attempt(`log out of ${target.portalText}`, () => host.iscsiadm.logout(target, call));
  // With the session still there the delete would fail with rc 15 and say nothing new.
  if (loggedOut === undefined || !options.deleteRecord) {
    host.logger.info({ iqn: target.iqn, portal: target.portalText, logout: loggedOut ?? 'failed' }, 'session closed');
    return;
  }
  const deleted = await attempt(`delete the node record of ${target.portalText}`, () => host.iscsiadm.nodeDelete(target, call));
  host.logger.info({ iqn: target.iqn, portal: target.portalText, logout: loggedOut, record: deleted }, 'session closed');
}

/** A time budget tied to the operation's signal (see `portalBudget`). */
export interface PortalBudget {
  signal: AbortSignal;
  /** Whether the budget ran out (not the operation's signal). */
  overran(): boolean;
  /** The budget's TIMEOUT error, with what was stopped as its cause. */
  reason(cause: unknown): BerthError;
  dispose(): void;
}

/**
 * A portal's budget for what can hang on the network (a login, a SendTargets discovery): it fires
 * when the operation's signal does, or `timeoutMs` after the start with a TIMEOUT that names the
 * portal, so that a dead portal's error says what happened and what to do.
 */
export function portalBudget(timeoutMs: number, parent: AbortSignal, portalText: string): PortalBudget {
  const controller = new AbortController();
  let overran = false;
  const make = (cause?: unknown): BerthError =>
    new BerthError('TIMEOUT', `${portalText} did not answer within ${timeoutMs} ms (portalTimeoutMs)`, {
      hint: 'check that the portal is reachable from this host and its target service runs; the other portals carry the volume meanwhile',
      ...(cause === undefined ? {} : { cause }),
      details: { portal: portalText, timeoutMs },
    });
  const timer = setTimeout(() => {
    overran = true;
    controller.abort(make());
  }, timeoutMs);
  timer.unref();
  const onAbort = (): void => controller.abort(parent.reason);
  if (parent.aborted) onAbort();
  else parent.addEventListener('abort', onAbort, { once: true });
  return {
    signal: controller.signal,
    overran: () => overran && !parent.aborted,
    reason: make,
    dispose: () => {
      clearTimeout(timer);
      parent.removeEventListener('abort', onAbort);
    },
  };
}

/** One key of a node record to set. */
export interface RecordSetting {
  key: string;
  value: string;
  /** The value goes to the runner's `secrets` (passwords always do). */
  secret?: boolean;
}

/**
 * Set several keys of `target`'s node record in one `iscsiadm --op update` with a `-n`/`-v` pair
 * per key (iscsiadm applies every pair; one run instead of one per key). Passwords reach the
 * runner only as secrets; keys and values are checked without echoing a value.
 */
export async function updateRecord(host: PortalSessionHost, target: PathTarget, settings: readonly RecordSetting[], signal: AbortSignal): Promise<void> {
  if (settings.length === 0) return;
  const args = ['-m', 'node', '-T', target.iqn, '-p', formatPortal(target.portal), '--op', 'update'];
  const secrets: string[] = [];
  for (const s of settings) {
    if (!zRecordKey.safeParse(s.key).success) throw new BerthError('VALIDATION', `invalid node record key ${JSON.stringify(s.key)}`);
    if (!zRecordValue.safeParse(s.value).success) {
      throw new BerthError('VALIDATION', `invalid value for ${s.key}: at most 1024 characters and no control characters`);
    }
    if ((s.secret === true || /password/i.test(s.key)) && s.value !== '') secrets.push(s.value);
    args.push('-n', s.key, '-v', s.value);
  }
  const what = `set ${settings.map((s) => s.key).join(', ')} of ${target.iqn} at ${target.portalText}`;
  await withRetry(
    async () => {
      let result: CommandResult;
      try {
        result = await host.runner.run('iscsiadm', args, { timeoutMs: host.options.commandTimeoutMs, signal, secrets, reject: false });
      } catch (error) {
        const thrown = commandResultOf(error);
        if (thrown === undefined) throw error;
        result = thrown;
      }
      const exitClass = classifyResult('node-update', result);
      if (exitClass === 'success') return;
      throw toIscsiadmError(result, { op: 'node-update', what, secrets, timeoutMs: host.options.commandTimeoutMs, signal });
    },
    { ...host.retry, signal },
  );
}

/** An error's message (for logs). */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
