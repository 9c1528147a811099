import { BerthError, type FaultPoints, type Logger } from '@berth/core';
import type { CommandResult, CommandRunner, HostFs } from '@berth/host';
import {
  classifyResult,
  commandResultOf,
  findIscsiSession,
  IscsiadmError,
  parsePortalTargets,
  readIscsiSession,
  samePortal,
  toIscsiadmError,
  withRetry,
  type IscsiadmClient,
  type IscsiSession,
  type RetryPolicy,
} from '@berth/iscsi';
import type { IscsiVolumeTarget } from './iscsi-connection.js';
import type { IscsiDriverOptions } from './options.js';

/** A session with its SCSI host known: what a LUN scan needs. */
export interface UsableSession extends IscsiSession {
  hostNumber: number;
}

/** What `openSession` did, so that a failure can undo exactly that. */
export interface SessionProgress {
  /** This call made the node record (`--op new`). */
  createdRecord: boolean;
  /** This call logged in (not rc 15, not a reused session). */
  loggedIn: boolean;
}

/** What the node/session helpers reach the host through. */
export interface NodeSessionHost {
  fs: HostFs;
  runner: CommandRunner;
  iscsiadm: IscsiadmClient;
  retry: RetryPolicy;
  options: IscsiDriverOptions;
  logger: Logger;
  /** Fault points between the commands (`iscsi.connect.after-login`, ...); absent in production. */
  faults?: FaultPoints;
}

function usable(session: IscsiSession | undefined): session is UsableSession {
  return session !== undefined && session.hostNumber !== undefined;
}

/**
 * The session to `target`: sysfs first (no process), then `iscsiadm -m session` for a session
 * sysfs did not match (an address spelled differently), read back from sysfs by its id.
 */
export async function findSession(host: NodeSessionHost, target: IscsiVolumeTarget, signal: AbortSignal, useIscsiadm: boolean): Promise<UsableSession | undefined> {
  const inSysfs = await findIscsiSession(host.fs, target);
  if (usable(inSysfs)) return inSysfs;
  if (!useIscsiadm) return undefined;
  const listed = (await host.iscsiadm.sessions({ signal })).find((s) => s.iqn === target.iqn && samePortal(s.portal, target.portal));
  if (listed === undefined) return undefined;
  const session = await readIscsiSession(host.fs, listed.sid);
  return usable(session) ? session : undefined;
}

/**
 * Make sure a session to `target` exists, the seed's sequence with os-brick's fixes:
 * an existing session is reused as it is; otherwise the node record is created only when absent
 * (`--op new` over a record resets it), `node.session.scan=manual` (no scan of every LUN at login),
 * CHAP (mutual too) with passwords only as secrets, an optional SendTargets check with discovery
 * CHAP, login (rc 15 counts as success; retryable codes are retried, 19 and 24 never), then
 * `node.startup`. On failure it undoes what it did (logout, record delete) and throws.
 */
export async function openSession(host: NodeSessionHost, target: IscsiVolumeTarget, signal: AbortSignal, progress: SessionProgress, cleanupSignal: () => AbortSignal): Promise<UsableSession> {
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
    if (target.discoveryAuth !== undefined) await checkOffered(host, target, signal, cleanupSignal);
    const record = await iscsiadm.nodeShow(target, call);
    if (record === undefined) {
      await iscsiadm.nodeNew(target, options.iface, call);
      progress.createdRecord = true;
    }
    const set = async (key: string, value: string, secret = false): Promise<void> => {
      // A fresh record holds the defaults, not what an older one held; a secret is never compared.
      if (!secret && record !== undefined && !progress.createdRecord && record[key] === value) return;
      await iscsiadm.nodeUpdate(target, key, value, { ...call, secret });
    };
    await set('node.session.scan', 'manual');
    if (target.auth !== undefined) {
      await set('node.session.auth.authmethod', 'CHAP');
      await set('node.session.auth.username', target.auth.username);
      await set('node.session.auth.password', target.auth.password, true);
      if (target.auth.usernameIn !== undefined && target.auth.passwordIn !== undefined) {
        await set('node.session.auth.username_in', target.auth.usernameIn);
        await set('node.session.auth.password_in', target.auth.passwordIn, true);
      }
    }
    await host.faults?.hit('iscsi.connect.after-node-record');
    let login: 'logged-in' | 'already-present';
    try {
      login = await iscsiadm.login(target, call);
    } catch (error) {
      // iscsid goes on with a login whose iscsiadm was killed (timeout, deadline): a session may
      // still come up, so the undo logs out (rc 21 when none came).
      if (IscsiadmError.isIscsiadmError(error) && (error.exitClass === 'cancelled' || error.errorName === 'TIMEOUT')) progress.loggedIn = true;
      throw error;
    }
    progress.loggedIn = login === 'logged-in';
    await host.faults?.hit('iscsi.connect.after-login');
    host.logger.info({ iqn: target.iqn, portal: target.portalText, login }, login === 'logged-in' ? 'logged in' : 'login found a session already there');
    await set('node.startup', options.startup);
    const session = await findSession(host, target, signal, true);
    if (session === undefined) {
      throw new BerthError('DRIVER_ERROR', `iscsiadm logged in to ${target.iqn} at ${target.portalText}, but no such session is in sysfs or in \`iscsiadm -m session\``, {
        hint: 'look at `iscsiadm -m session` and /sys/class/iscsi_session; the session may have dropped right after login (see the kernel log)',
      });
    }
    return session;
  } catch (error) {
    await undoSession(host, target, progress, cleanupSignal());
    throw error;
  }
}

/** Log out (when `progress.loggedIn`) and delete the record (when `progress.createdRecord`); logs, never throws. */
export async function undoSession(host: NodeSessionHost, target: IscsiVolumeTarget, progress: SessionProgress, signal: AbortSignal): Promise<void> {
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
 * SendTargets discovery with discovery CHAP through the portal, to check that the target is
 * offered to this initiator (a missing target then fails with a clear error, not a login rc 19).
 * `--op nonpersistent` keeps discovery from rewriting node records (open-iscsi resets the
 * records it returns, CHAP and `node.startup` included); the discovery record, which stores the
 * password in plain text, is deleted afterwards even when discovery failed.
 */
async function checkOffered(host: NodeSessionHost, target: IscsiVolumeTarget, signal: AbortSignal, cleanupSignal: () => AbortSignal): Promise<void> {
  const auth = target.discoveryAuth;
  if (auth === undefined) return;
  const { iscsiadm, options, runner } = host;
  const secrets = [auth.password, auth.passwordIn].filter((s): s is string => s !== undefined && s !== '');
  const what = `discover the targets at ${target.portalText}`;
  await iscsiadm.discoverydbNew(target.portal, options.iface, { signal });
  try {
    await iscsiadm.discoverydbUpdate(
      target.portal,
      {
        method: 'CHAP',
        username: auth.username,
        password: auth.password,
        ...(auth.usernameIn === undefined ? {} : { usernameIn: auth.usernameIn }),
        ...(auth.passwordIn === undefined ? {} : { passwordIn: auth.passwordIn }),
      },
      options.iface,
      { signal },
    );
    const offered = await withRetry(
      async () => {
        const args = ['-m', 'discoverydb', '-t', 'sendtargets', '-I', options.iface, '-p', target.portalText, '--discover', '--op', 'nonpersistent'];
        let result: CommandResult;
        try {
          result = await runner.run('iscsiadm', args, { timeoutMs: options.commandTimeoutMs, signal, secrets, reject: false });
        } catch (error) {
          const thrown = commandResultOf(error);
          if (thrown === undefined) throw error;
          result = thrown;
        }
        const exitClass = classifyResult('discovery', result, { absenceOk: true });
        if (exitClass === 'success') return parsePortalTargets(result.stdout);
        if (exitClass === 'benign') return [];
        throw toIscsiadmError(result, { op: 'discovery', what, secrets, absenceOk: true, timeoutMs: options.commandTimeoutMs, signal });
      },
      { ...host.retry, signal },
    );
    if (!offered.some((t) => t.iqn === target.iqn)) {
      throw new BerthError('NOT_FOUND', `the portal ${target.portalText} does not offer ${target.iqn} to this host (SendTargets listed ${offered.length} target(s))`, {
        hint: 'check the IQN and portal in the connection_info, and that the backend allowed this host\'s initiator name (`berth connector`)',
        details: { offered: offered.map((t) => t.iqn) },
      });
    }
  } finally {
    await iscsiadm.discoverydbDelete(target.portal, { signal: cleanupSignal() }).catch((error: unknown) => {
      host.logger.warn({ portal: target.portalText, error: messageOf(error) }, 'deleting the discovery record failed; it holds the discovery password');
    });
  }
}

/**
 * Log out of `target`, then delete its node record when `deleteRecord`; each step goes through
 * `attempt`, which records or throws its failure.
 */
export async function closeSession(
  host: NodeSessionHost,
  target: IscsiVolumeTarget,
  options: { signal: AbortSignal | undefined; deleteRecord: boolean; faultPoints?: boolean },
  attempt: <T>(step: string, fn: () => Promise<T>) => Promise<T | undefined>,
): Promise<void> {
  const call = options.signal === undefined ? {} : { signal: options.signal };
  // Only a detach passes the points: an undo of a failed connect is not a step boundary of its own.
  if (options.faultPoints === true) await host.faults?.hit('iscsi.disconnect.before-logout');
  const loggedOut = await attempt('log out', () => host.iscsiadm.logout(target, call));
  if (options.faultPoints === true) await host.faults?.hit('iscsi.disconnect.after-logout');
  // With the session still there the delete would fail with rc 15 and say nothing new.
  if (loggedOut === undefined || !options.deleteRecord) {
    host.logger.info({ iqn: target.iqn, portal: target.portalText, logout: loggedOut ?? 'failed' }, 'session closed');
    return;
  }
  const deleted = await attempt('delete the node record', () => host.iscsiadm.nodeDelete(target, call));
  host.logger.info({ iqn: target.iqn, portal: target.portalText, logout: loggedOut, record: deleted }, 'session closed');
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
