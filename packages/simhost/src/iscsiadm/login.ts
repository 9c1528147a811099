import { iscsiErrText } from '../iscsi-errors.js';
import type { NodeRecord } from '../node-db.js';
import { parsePortal, samePortal } from '../portal-address.js';
import type { SimSessionState } from '../sim-kernel.js';
import type { LoginAuth } from '../target-access.js';
import type { ToolResult } from '../tool-protocol.js';
import { matchRecord, matchSession, sessionsOfRecord, type RecPattern, type Cli } from './cli.js';

// Logging in and out of node records (`--login`, `--logout`, `--loginall`, `--logoutall`) and
// per-session rescans, as iscsid does them through the kernel model.

/** `-m node --login`: log in to every matching record; 21 when none matches. */
export async function loginPortals(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
  const { out } = cli;
  const records = (await cli.ctx.db.list()).filter((r) => matchRecord(pattern, r));
  if (records.length === 0) {
    out.error('No records found');
    return out.result(21);
  }
  const rc = await loginRecords(cli, records);
  if (rc) out.error('Could not log into all portals');
  return out.result(rc);
}

/**
 * iscsi_login_portals: a record whose sessions are all there gets the "already present" warning
 * (15); every other is logged in concurrently, all "Logging in" lines first, then the results.
 */
export async function loginRecords(cli: Cli, records: NodeRecord[]): Promise<number> {
  const { out, ctx } = cli;
  let rc = 0;
  const started: Array<{ r: NodeRecord; result: Promise<{ ok: true; sid: number } | { ok: false; exitCode: number }> }> = [];
  const defaultInitiator = await ctx.initiatorName();
  for (const r of records) {
    const nr = Number(r.values.get('node.session.nr_sessions') ?? '1') || 1;
    const count = sessionsOfRecord(cli, r).length;
    if (count >= nr) {
      out.error(`${r.iface}: ${nr} session${nr === 1 ? '' : 's'} requested, but ${count} already present.`);
      rc ||= 15;
      continue;
    }
    out.info(`Logging in to [iface: ${r.iface}, target: ${r.iqn}, portal: ${r.address},${r.port}]`);
    const auth = recordAuth(r.values);
    const scan = r.values.get('node.session.scan') === 'manual' ? 'manual' : 'auto';
    started.push({
      r,
      result: ctx.kernel.login({
        iqn: r.iqn,
        portal: { address: r.address, port: r.port },
        iface: r.iface,
        initiator: r.values.get('iface.initiatorname') || defaultInitiator,
        ...(auth ? { auth } : {}),
        scan,
        recoveryTmo: Number(r.values.get('node.session.timeo.replacement_timeout') ?? '120'),
        loginTimeoutS: Number(r.values.get('node.conn[0].timeo.login_timeout') ?? '30'),
        loginRetryMax: Number(r.values.get('node.session.initial_login_retry_max') ?? '4'),
        noopOutIntervalS: Number(r.values.get('node.conn[0].timeo.noop_out_interval') ?? '5'),
        noopOutTimeoutS: Number(r.values.get('node.conn[0].timeo.noop_out_timeout') ?? '5'),
      }),
    });
  }
  for (const { r, result } of started) {
    const outcome = await result.catch(() => ({ ok: false as const, exitCode: 9 }));
    const where = `[iface: ${r.iface}, target: ${r.iqn}, portal: ${r.address},${r.port}]`;
    if (outcome.ok) {
      out.info(`Login to ${where} successful.`);
    } else {
      out.error(`Could not login to ${where}.`);
      out.error(`initiator reported error (${outcome.exitCode} - ${iscsiErrText(outcome.exitCode)})`);
      rc ||= outcome.exitCode;
    }
  }
  return rc;
}

/** The login CHAP of a node record (one-way or mutual), when its authmethod is CHAP. */
export function recordAuth(values: Map<string, string>): LoginAuth | undefined {
  if (values.get('node.session.auth.authmethod') !== 'CHAP') return undefined;
  const usernameIn = values.get('node.session.auth.username_in') ?? '';
  const passwordIn = values.get('node.session.auth.password_in') ?? '';
  return {
    method: 'CHAP',
    username: values.get('node.session.auth.username') ?? '',
    password: values.get('node.session.auth.password') ?? '',
    ...(usernameIn !== '' ? { usernameIn, passwordIn } : {}),
  };
}

/** Log the sessions out concurrently; 21 when there were none. */
export async function logoutSessions(cli: Cli, sessions: SimSessionState[]): Promise<number> {
  const { out, ctx } = cli;
  if (sessions.length === 0) return 21;
  const where = (s: SimSessionState): string => {
    const p = parsePortal(s.portal);
    return `[sid: ${s.sid}, target: ${s.iqn}, portal: ${p.address},${p.port}]`;
  };
  for (const s of sessions) out.info(`Logging out of session ${where(s)}`);
  const results = await Promise.all(sessions.map((s) => ctx.kernel.logout(s.sid).catch(() => false)));
  let rc = 0;
  sessions.forEach((s, i) => {
    if (results[i]) {
      out.info(`Logout of ${where(s)} successful.`);
    } else {
      out.error(`Could not logout of ${where(s)}.`);
      out.error(`initiator reported error (2 - ${iscsiErrText(2)})`);
      rc ||= 2;
    }
  });
  if (rc) out.error('Could not logout of all requested sessions');
  return rc;
}

/** `--rescan` or `--stats` on every matching session (or on `-r SID`); 21 when there is none. */
export async function forEachSession(cli: Cli, pattern: RecPattern | undefined, sessionSid: number | undefined, what: 'rescan' | 'stats'): Promise<ToolResult> {
  const { out, ctx } = cli;
  const sessions = ctx.kernel.findSessions().filter((s) => (sessionSid !== undefined ? s.sid === sessionSid : !pattern || matchSession(pattern, s)));
  if (sessions.length === 0) {
    out.error('No session found.');
    return out.result(21);
  }
  for (const s of sessions) {
    const p = parsePortal(s.portal);
    if (what === 'rescan') {
      out.info(`Rescanning session [sid: ${s.sid}, target: ${s.iqn}, portal: ${p.address},${p.port}]`);
      await ctx.kernel.rescanSession(s.sid);
    } else {
      out.info(`Stats for session [sid: ${s.sid}, target: ${s.iqn}, portal: ${p.address},${p.port}]`);
    }
  }
  return out.result(0);
}

const STARTUP_MODES = ['automatic', 'all', 'manual', 'onboot'];

/** `--loginall=MODE`: log in to every record whose `node.conn[0].startup` is MODE. */
export async function loginByStartup(cli: Cli, mode: string): Promise<ToolResult> {
  const { out } = cli;
  if (!STARTUP_MODES.includes(mode)) {
    out.error(`Invalid loginall option ${mode}.`);
    out.stderr += "Try `iscsiadm --help' for more information.\n";
    return out.result(7);
  }
  const records = (await cli.ctx.db.list()).filter((r) => mode === 'all' || r.values.get('node.conn[0].startup') === mode);
  if (records.length === 0) {
    out.error('No records found');
    return out.result(21);
  }
  const rc = await loginRecords(cli, records);
  if (rc) out.error('Could not log into all portals');
  return out.result(rc);
}

/** `--logoutall=MODE`: log out of every session whose record has that startup. */
export async function logoutByStartup(cli: Cli, mode: string): Promise<ToolResult> {
  const { out, ctx } = cli;
  if (!['automatic', 'all', 'manual'].includes(mode)) {
    out.error(`Invalid logoutall option ${mode}.`);
    out.stderr += "Try `iscsiadm --help' for more information.\n";
    return out.result(7);
  }
  const records = await ctx.db.list();
  const sessions = ctx.kernel.findSessions().filter((s) => {
    const p = parsePortal(s.portal);
    const rec = records.find((r) => r.iqn === s.iqn && samePortal({ address: r.address, port: r.port }, p) && r.iface === s.iface);
    if (!rec || rec.values.get('node.startup') === 'onboot') return false;
    return mode === 'all' || rec.values.get('node.conn[0].startup') === mode;
  });
  const rc = await logoutSessions(cli, sessions);
  if (rc === 21) out.error('No matching sessions found');
  return out.result(rc);
}
