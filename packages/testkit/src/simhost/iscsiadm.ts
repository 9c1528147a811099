import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { getopt, MODES, OP, OPS } from './iscsiadm-args.js';
import { DISCOVERY_KEYS, NODE_KEYS, RECORD_VERSION, formatRecordShow, parseRecordFile, updateParam, verifyParam, defaultRecord, formatRecordFile } from './idbm-record.js';
import { iscsiErrText } from './iscsi-errors.js';
import type { NodeDb, NodeRecord } from './node-db.js';
import { ISCSI_DEFAULT_PORT, formatPortal, parsePortal, parsePortalArg, portalKey, samePortal, type PortalAddress } from './portal-address.js';
import type { SimKernel, SimSessionState } from './sim-kernel.js';
import type { LoginAuth, TargetAccess } from './target-access.js';
import type { ToolResult } from './tool-protocol.js';

/** What the fake iscsiadm works on: the kernel model, the node database and the target side. */
export interface IscsiadmContext {
  kernel: SimKernel;
  db: NodeDb;
  targetAccess: TargetAccess;
  /** The initiator IQN of `/etc/iscsi/initiatorname.iscsi`. */
  initiatorName(): Promise<string>;
}

/** Records matched like __iscsi_match_session: empty fields match anything. */
interface RecPattern {
  iqn: string;
  address: string;
  port: number;
  tpgt: number;
  iface: string;
}

class Output {
  stdout = '';
  stderr = '';
  /** log_info / printf: stdout. */
  info(line: string): void {
    this.stdout += `${line}\n`;
  }
  /** log_error / log_warning: stderr with the program prefix. */
  error(line: string): void {
    this.stderr += `iscsiadm: ${line}\n`;
  }
  result(exitCode: number): ToolResult {
    return { stdout: this.stdout, stderr: this.stderr, exitCode };
  }
}

const ST = 'sendtargets';

/**
 * iscsiadm 2.1.8 for the simulated host: the same options, outputs and exit codes as open-iscsi's
 * (usr/iscsiadm.c), over the on-disk node database and the kernel model. iscsid is always
 * "running", so nothing is printed about reaching it.
 */
export async function runIscsiadm(argv: readonly string[], ctx: IscsiadmContext): Promise<ToolResult> {
  const out = new Output();
  const parsed = getopt(argv);
  if (!parsed.ok) {
    out.stderr += `${parsed.message}\nTry \`iscsiadm --help' for more information.\n`;
    return out.result(7);
  }
  let mode: string | undefined;
  let portal: { address: string; port: number; tpgt: number } | undefined;
  let targetname = '';
  const ifaces: string[] = [];
  let op = 0;
  const params: Array<{ name: string; value: string }> = [];
  let pendingName: string | undefined;
  let sid = -1;
  let infoLevel = -1;
  let type: string | undefined;
  let doLogin = false;
  let doLogout = false;
  let doRescan = false;
  let doShow = false;
  let doStats = false;
  let doDiscover = false;
  let loginAll: string | undefined;
  let logoutAll: string | undefined;

  for (const { ch, arg = '' } of parsed.options) {
    switch (ch) {
      case 'o': {
        const bit = OPS[arg];
        op |= bit ?? 0;
        if (op === 0) {
          out.error(`can not recognize operation: '${arg}'`);
          return out.result(7);
        }
        break;
      }
      case 'n':
        pendingName = arg;
        break;
      case 'v':
        if (pendingName !== undefined) params.push({ name: pendingName, value: arg });
        break;
      case 'r':
        if (!/^\d+$/.test(arg)) {
          out.error(`invalid sid '${arg}'`);
          return out.result(7);
        }
        sid = Number(arg);
        break;
      case 'P':
        infoLevel = Number.parseInt(arg, 10) || 0;
        break;
      case 'm': {
        const m = MODES[arg];
        if (!m) {
          out.error('mode -1 is not yet supported');
          return out.result(7);
        }
        for (const o of parsed.options) {
          if (m.allowed.includes(o.ch)) continue;
          if (o.ch === 'm' && m.skipM) continue;
          out.error(`${m.name} mode: option '-${o.ch}' is not allowed/supported`);
          return out.result(7);
        }
        mode = arg;
        break;
      }
      case 'p':
        portal = parsePortalArg(arg);
        break;
      case 'T':
        targetname = arg;
        break;
      case 'I':
        ifaces.push(arg);
        break;
      case 't':
        type = arg === 'sendtargets' || arg === 'st' ? ST : arg;
        break;
      case 'l':
        doLogin = true;
        break;
      case 'u':
        doLogout = true;
        break;
      case 'R':
        doRescan = true;
        break;
      case 'S':
        doShow = true;
        break;
      case 's':
        doStats = true;
        break;
      case 'D':
        doDiscover = true;
        break;
      case 'L':
        loginAll = arg;
        break;
      case 'U':
        logoutAll = arg;
        break;
      case 'V':
        out.info(`iscsiadm version ${RECORD_VERSION}`);
        return out.result(0);
      case 'h':
        out.info('iscsiadm -m discoverydb | discovery | node | session | iface | fw | host [options] (simulated open-iscsi 2.1.8)');
        return out.result(0);
      default:
        break;
    }
  }
  if (mode === undefined) {
    out.stderr += "Try `iscsiadm --help' for more information.\n";
    return out.result(7);
  }
  const cli: Cli = { out, ctx, portal, targetname, ifaces, op, params, sid, infoLevel, type, doLogin, doLogout, doRescan, doShow, doStats, doDiscover, loginAll, logoutAll };
  switch (mode) {
    case 'fw':
      out.error('Could not get list of targets from firmware. (err 21)');
      return out.result(21);
    case 'host':
      return hostMode(cli);
    case 'iface':
      return ifaceMode(cli);
    case 'discoverydb':
      return discoverydbMode(cli);
    case 'discovery':
      return discoveryMode(cli);
    case 'node':
      return nodeMode(cli);
    default:
      return sessionMode(cli);
  }
}

interface Cli {
  out: Output;
  ctx: IscsiadmContext;
  portal: { address: string; port: number; tpgt: number } | undefined;
  targetname: string;
  ifaces: string[];
  op: number;
  params: Array<{ name: string; value: string }>;
  sid: number;
  infoLevel: number;
  type: string | undefined;
  doLogin: boolean;
  doLogout: boolean;
  doRescan: boolean;
  doShow: boolean;
  doStats: boolean;
  doDiscover: boolean;
  loginAll: string | undefined;
  logoutAll: string | undefined;
}

// ---------------------------------------------------------------------------------------------
// node mode

async function nodeMode(cli: Cli): Promise<ToolResult> {
  const { out } = cli;
  if (cli.loginAll !== undefined) return loginByStartup(cli, cli.loginAll);
  if (cli.logoutAll !== undefined) return logoutByStartup(cli, cli.logoutAll);
  const iface = cli.ifaces[0] ?? '';
  if (iface !== '' && !(await ifaceExists(cli.ctx.db, iface))) {
    out.error(`Could not read iface info for ${iface}.`);
    return out.result(3);
  }
  const pattern: RecPattern = {
    iqn: cli.targetname,
    address: cli.portal?.address ?? '',
    port: cli.portal ? (cli.portal.port < 0 ? ISCSI_DEFAULT_PORT : cli.portal.port) : -1,
    tpgt: cli.portal?.tpgt ?? -1,
    iface,
  };
  return execNodeOp(cli, pattern, undefined);
}

async function execNodeOp(cli: Cli, pattern: RecPattern | undefined, sessionSid: number | undefined): Promise<ToolResult> {
  const { out, op } = cli;
  if (op === OP.NEW && pattern) return addStaticRecs(cli, pattern);
  if (cli.doRescan) return forEachSession(cli, pattern, sessionSid, 'rescan');
  if (cli.doStats) return forEachSession(cli, pattern, sessionSid, 'stats');
  if (cli.doLogin && cli.doLogout) {
    out.error('Invalid parameters. Both login and logout passed in');
    return out.result(7);
  }
  if ((cli.doLogin || cli.doLogout) && op > 0) {
    out.error('Invalid parameters. Login/logout and op passed in');
    return out.result(7);
  }
  if (!cli.doLogin && !cli.doLogout && op === 0 && (!pattern || (pattern.iqn === '' && pattern.address === '' && pattern.iface === ''))) {
    return printNodes(cli);
  }
  if (cli.doLogin && pattern) return loginPortals(cli, pattern);
  if (cli.doLogout) {
    const sessions = cli.ctx.kernel.findSessions().filter((s) => (sessionSid !== undefined ? s.sid === sessionSid : !pattern || matchSession(pattern, s)));
    const rc = await logoutSessions(cli, sessions);
    if (rc === 21) out.error('No matching sessions found');
    return out.result(rc);
  }
  if (!pattern) return out.result(0);
  if (op === 0 || op === OP.SHOW) return printNodesConfig(cli, pattern);
  if (op === OP.UPDATE) return updateNodes(cli, pattern);
  if (op === OP.DELETE) return deleteNodes(cli, pattern);
  out.error('operation is not supported.');
  return out.result(7);
}

async function printNodes(cli: Cli): Promise<ToolResult> {
  const { out } = cli;
  if (cli.infoLevel !== 0 && cli.infoLevel !== -1 && cli.infoLevel !== 1) {
    out.error(`Invalid info level ${cli.infoLevel}. Try 0 or 1.`);
    return out.result(7);
  }
  const records = await cli.ctx.db.list();
  if (records.length === 0) {
    out.error('No records found');
    return out.result(21);
  }
  if (cli.infoLevel === 1) {
    let prev: string | undefined;
    for (const r of records) {
      if (r.iqn !== prev) out.info(`Target: ${r.iqn}`);
      out.info(`\tPortal: ${formatPortal(r.address, r.port)},${r.tpgt}`);
      out.info(`\t\tIface Name: ${r.iface}`);
      prev = r.iqn;
    }
  } else {
    // libopeniscsiusr prints the tag unsigned: -1 shows as 4294967295.
    for (const r of records) out.info(`${formatPortal(r.address, r.port)},${r.tpgt >>> 0} ${r.iqn}`);
  }
  return out.result(0);
}

async function printNodesConfig(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
  const { out } = cli;
  const records = (await cli.ctx.db.list()).filter((r) => matchRecord(pattern, r));
  if (records.length === 0) {
    out.error('No records found');
    return out.result(21);
  }
  for (const r of records) out.stdout += formatRecordShow(NODE_KEYS, r.values, cli.doShow);
  return out.result(0);
}

async function addStaticRecs(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
  const { out, ctx } = cli;
  return ctx.db.lock.run(async () => {
    const records = await ctx.db.list();
    const iface = pattern.iface === '' ? 'default' : pattern.iface;
    let found = 0;
    const add = async (iqn: string, tpgt: number, address: string, port: number): Promise<void> => {
      const existing = (await ctx.db.list()).find((r) => r.iqn === iqn && r.address === address && r.port === port && r.iface === iface && r.tpgt === tpgt);
      // `--op new` over an existing record rewrites it with the defaults (CHAP and startup lost).
      if (existing) await ctx.db.delete(existing);
      await ctx.db.write(ctx.db.newRecord(iqn, address, port, tpgt, iface));
      found++;
      out.info(`New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=${iface}] ${address},${port},${tpgt} ${iqn}] added`);
    };
    const targets = [...new Set(records.map((r) => r.iqn))].filter((iqn) => pattern.iqn === '' || iqn === pattern.iqn);
    for (const iqn of targets) {
      if (pattern.address !== '') {
        await add(iqn, pattern.tpgt, pattern.address, pattern.port < 0 ? ISCSI_DEFAULT_PORT : pattern.port);
        continue;
      }
      for (const r of records.filter((x) => x.iqn === iqn && (pattern.port === -1 || x.port === pattern.port))) {
        await add(iqn, r.tpgt, r.address, r.port);
      }
    }
    if (found > 0) return out.result(0);
    if (pattern.iqn !== '' && pattern.address !== '') {
      await add(pattern.iqn, pattern.tpgt, pattern.address, pattern.port < 0 ? ISCSI_DEFAULT_PORT : pattern.port);
      return out.result(0);
    }
    out.error(`Error while adding record: ${iscsiErrText(21)}`);
    return out.result(21);
  });
}

async function updateNodes(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
  const { out, ctx } = cli;
  if (cli.params.length === 0) {
    out.error('update requires name and value');
    return out.result(7);
  }
  for (const p of cli.params) {
    if (p.name.startsWith('iface.') && p.name !== 'iface.transport_name') {
      out.error(`Cannot modify ${p.name}. Use iface mode to update this value.`);
      return out.result(7);
    }
  }
  return ctx.db.lock.run(async () => {
    const records = (await ctx.db.list()).filter((r) => matchRecord(pattern, r));
    if (records.length === 0) {
      out.error('No records found');
      return out.result(21);
    }
    let rc = 0;
    for (const r of records) {
      const err = setParams(out, NODE_KEYS, r.values, cli.params.map((p) => ({ name: p.name === 'node.transport_name' ? 'iface.transport_name' : p.name, value: p.value })));
      if (err) {
        rc ||= err;
        continue;
      }
      await ctx.db.write(r);
    }
    if (rc) out.error(`Could not execute operation on all records: ${iscsiErrText(rc)}`);
    return out.result(rc);
  });
}

/** idbm_node_set_rec_from_param: verify every name, then set each; the error lines and code. */
function setParams(out: Output, keys: typeof NODE_KEYS, values: Map<string, string>, params: Array<{ name: string; value: string }>): number {
  for (const p of params) {
    const why = verifyParam(keys, p.name);
    if (why) {
      out.error(why);
      return 7;
    }
  }
  for (const p of params) {
    const errors = updateParam(keys, values, p.name, p.value);
    if (errors.length > 0) {
      for (const e of errors) out.error(e);
      out.error(`Unknown parameter ${p.name}.`);
      return 7;
    }
  }
  return 0;
}

async function deleteNodes(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
  const { out, ctx } = cli;
  return ctx.db.lock.run(async () => {
    const records = (await ctx.db.list()).filter((r) => matchRecord(pattern, r));
    if (records.length === 0) {
      out.error('No records found');
      return out.result(21);
    }
    let rc = 0;
    for (const r of records) rc ||= await deleteNode(cli, r);
    if (rc) out.error(`Could not execute operation on all records: ${iscsiErrText(rc)}`);
    return out.result(rc);
  });
}

/** delete_node: refused (15) while a session uses the record. */
async function deleteNode(cli: Cli, r: NodeRecord): Promise<number> {
  if (sessionsOfRecord(cli, r).length > 0) {
    cli.out.error(
      `This command will remove the record [iface: ${r.iface}, target: ${r.iqn}, portal: ${r.address},${r.port}], but a session is using it. Logout session then rerun command to remove record.`,
    );
    return 15;
  }
  await cli.ctx.db.delete(r);
  return 0;
}

function sessionsOfRecord(cli: Cli, r: NodeRecord): SimSessionState[] {
  return cli.ctx.kernel.findSessions({ iqn: r.iqn, portal: { address: r.address, port: r.port }, iface: r.iface });
}

// ---------------------------------------------------------------------------------------------
// login / logout / rescan

async function loginPortals(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
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
async function loginRecords(cli: Cli, records: NodeRecord[]): Promise<number> {
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

function recordAuth(values: Map<string, string>): LoginAuth | undefined {
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

function discoveryAuth(values: Map<string, string>): LoginAuth | undefined {
  if (values.get('discovery.sendtargets.auth.authmethod') !== 'CHAP') return undefined;
  const usernameIn = values.get('discovery.sendtargets.auth.username_in') ?? '';
  return {
    method: 'CHAP',
    username: values.get('discovery.sendtargets.auth.username') ?? '',
    password: values.get('discovery.sendtargets.auth.password') ?? '',
    ...(usernameIn !== '' ? { usernameIn, passwordIn: values.get('discovery.sendtargets.auth.password_in') ?? '' } : {}),
  };
}

/** Log the sessions out concurrently; 21 when there were none. */
async function logoutSessions(cli: Cli, sessions: SimSessionState[]): Promise<number> {
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

async function forEachSession(cli: Cli, pattern: RecPattern | undefined, sessionSid: number | undefined, what: 'rescan' | 'stats'): Promise<ToolResult> {
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

async function loginByStartup(cli: Cli, mode: string): Promise<ToolResult> {
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

async function logoutByStartup(cli: Cli, mode: string): Promise<ToolResult> {
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

// ---------------------------------------------------------------------------------------------
// session mode

async function sessionMode(cli: Cli): Promise<ToolResult> {
  const { out, ctx } = cli;
  if (cli.sid >= 0) {
    const [s] = ctx.kernel.findSessions({ sid: cli.sid });
    if (!s) {
      out.error('could not read session targetname: 5');
      out.error(`Could not get session info for sid ${cli.sid}`);
      return out.result(22);
    }
    if (!cli.doLogout && !cli.doRescan && !cli.doStats && cli.op === 0 && cli.infoLevel > 0) {
      printSessionTree(cli, [s]);
      return out.result(0);
    }
    const p = parsePortal(s.portal);
    const pattern: RecPattern = { iqn: s.iqn, address: p.address, port: p.port, tpgt: s.tpgt, iface: s.iface };
    if (cli.op === OP.NEW) {
      cli.op = 0;
      cli.doLogin = true;
    }
    return execNodeOp(cli, pattern, s.sid);
  }
  if (cli.op === OP.NEW) {
    out.error("session mode: Operation 'new' only allowed with specific session IDs");
    return out.result(7);
  }
  if (cli.doLogout || cli.doRescan || cli.doStats) return execNodeOp(cli, undefined, undefined);
  const sessions = ctx.kernel.findSessions();
  if (sessions.length === 0) {
    out.error('No active sessions.');
    return out.result(21);
  }
  if (cli.infoLevel <= 0) {
    for (const s of sessions) {
      const p = parsePortal(s.portal);
      out.info(`tcp: [${s.sid}] ${formatPortal(p.address, p.port)},${s.tpgt} ${s.iqn} (non-flash)`);
    }
    return out.result(0);
  }
  if (cli.infoLevel > 3) {
    out.error(`Invalid info level ${cli.infoLevel}. Try 0 - 3.`);
    return out.result(7);
  }
  printSessionTree(cli, sessions);
  return out.result(0);
}

const CONN_STATE: Readonly<Record<string, string>> = { LOGGED_IN: 'LOGGED IN', FAILED: 'TRANSPORT WAIT', FREE: 'FREE' };
const ISCSID_STATE: Readonly<Record<string, string>> = { LOGGED_IN: 'NO CHANGE', FAILED: 'REOPEN', FREE: 'NO CHANGE' };

/** session_info_print_tree at -P 1, 2 or 3. */
function printSessionTree(cli: Cli, sessions: SimSessionState[]): void {
  const { out } = cli;
  const level = cli.infoLevel;
  if (level >= 3) {
    out.info('iSCSI Transport Class version 2.0-870');
    out.info(`version ${RECORD_VERSION}`);
  }
  let prev: SimSessionState | undefined;
  for (const s of sessions) {
    const p = parsePortal(s.portal);
    if (!prev || prev.iqn !== s.iqn) {
      out.info(`Target: ${s.iqn} (non-flash)`);
      prev = undefined;
    }
    const prevPortal = prev ? parsePortal(prev.portal) : undefined;
    if (!prevPortal || !samePortal(prevPortal, p)) {
      out.info(`\tCurrent Portal: ${formatPortal(p.address, p.port)},${s.tpgt}`);
      out.info(`\tPersistent Portal: ${formatPortal(p.address, p.port)},${s.tpgt}`);
    } else {
      out.info('');
    }
    out.info('\t\t**********');
    out.info('\t\tInterface:');
    out.info('\t\t**********');
    out.info(`\t\tIface Name: ${s.iface}`);
    out.info('\t\tIface Transport: tcp');
    out.info(`\t\tIface Initiatorname: ${s.initiator}`);
    out.info('\t\tIface IPaddress: 127.0.0.1');
    out.info('\t\tIface HWaddress: <empty>');
    out.info('\t\tIface Netdev: <empty>');
    out.info(`\t\tSID: ${s.sid}`);
    out.info(`\t\tiSCSI Connection State: ${CONN_STATE[s.state] ?? 'Unknown'}`);
    out.info(`\t\tiSCSI Session State: ${s.state}`);
    out.info(`\t\tInternal iscsid Session State: ${ISCSID_STATE[s.state] ?? 'Unknown'}`);
    if (level >= 2) {
      out.info('\t\t*********');
      out.info('\t\tTimeouts:');
      out.info('\t\t*********');
      out.info('\t\tRecovery Timeout: 120');
      out.info('\t\tTarget Reset Timeout: 30');
      out.info('\t\tLUN Reset Timeout: 30');
      out.info('\t\tAbort Timeout: 15');
      out.info('\t\t*****');
      out.info('\t\tCHAP:');
      out.info('\t\t*****');
      out.info('\t\tusername: <empty>');
      out.info('\t\tpassword: ********');
      out.info('\t\tusername_in: <empty>');
      out.info('\t\tpassword_in: ********');
      out.info('\t\t************************');
      out.info('\t\tNegotiated iSCSI params:');
      out.info('\t\t************************');
      out.info('\t\tHeaderDigest: None');
      out.info('\t\tDataDigest: None');
      out.info('\t\tMaxRecvDataSegmentLength: 262144');
      out.info('\t\tMaxXmitDataSegmentLength: 8192');
      out.info('\t\tFirstBurstLength: 65536');
      out.info('\t\tMaxBurstLength: 262144');
      out.info('\t\tImmediateData: Yes');
      out.info('\t\tInitialR2T: No');
      out.info('\t\tMaxOutstandingR2T: 1');
    }
    if (level >= 3) {
      out.info('\t\t************************');
      out.info('\t\tAttached SCSI devices:');
      out.info('\t\t************************');
      out.stdout += `\t\tHost Number: ${s.host}\tState: running\n`;
      for (const l of s.luns) {
        out.info(`\t\tscsi${s.host} Channel 00 Id 0 Lun: ${l.lun}`);
        if (l.device) out.stdout += `\t\t\tAttached scsi disk ${l.device}\t\tState: ${l.state}\n`;
      }
    }
    prev = s;
  }
}

// ---------------------------------------------------------------------------------------------
// discovery

async function discoveryMode(cli: Cli): Promise<ToolResult> {
  const { out, ctx } = cli;
  const port = cli.portal ? (cli.portal.port < 0 ? ISCSI_DEFAULT_PORT : cli.portal.port) : ISCSI_DEFAULT_PORT;
  if (cli.type === ST) {
    if (!cli.portal) {
      out.error('Please specify portal as <ipaddr>[:<ipport>]');
      return out.result(7);
    }
    const drec = ctx.db.newDiscovery(cli.portal.address, port);
    const rc = await doSendTargets(cli, drec, true);
    return out.result(rc);
  }
  if (cli.type !== undefined) {
    out.error(cli.type === 'slp' ? 'SLP discovery is not fully implemented yet.' : 'Unsupported discovery type.');
    return out.result(7);
  }
  if (cli.portal) {
    const drec = await ctx.db.readDiscovery(cli.portal.address, port);
    if (!drec) {
      out.error(`Discovery record [${cli.portal.address},${port}] not found!`);
      return out.result(7);
    }
    if (cli.doDiscover || cli.doLogin) return out.result(await doSendTargets(cli, drec, false));
    if (cli.op === 0 || cli.op === OP.SHOW) {
      out.stdout += formatRecordShow(DISCOVERY_KEYS, drec.values, cli.doShow);
      return out.result(0);
    }
    if (cli.op === OP.DELETE) {
      await ctx.db.deleteDiscovery(drec.address, drec.port);
      return out.result(0);
    }
    out.error(cli.op === OP.UPDATE || cli.op === OP.NEW ? 'Operations new and update for discovery mode is not supported. Use discoverydb mode.' : 'Invalid operation.');
    return out.result(7);
  }
  if (cli.op === 0 || cli.op === OP.SHOW) return printAllDiscovery(cli);
  out.error('Invalid operation.');
  return out.result(7);
}

async function discoverydbMode(cli: Cli): Promise<ToolResult> {
  const { out, ctx } = cli;
  if (cli.type === undefined) {
    if (!cli.portal) {
      if (cli.op === 0 || cli.op === OP.SHOW) return printAllDiscovery(cli);
      out.error('Invalid operation. Operation not supported.');
      return out.result(7);
    }
    out.error(cli.op ? 'Invalid command. Possibly missing discovery --type.' : 'Invalid command. Portal not needed or Possibly missing discovery --type.');
    return out.result(7);
  }
  if (cli.type !== ST) {
    out.error(cli.type === 'slp' ? 'SLP discovery is not fully implemented yet.' : 'Unsupported discovery type.');
    return out.result(7);
  }
  if (!cli.portal) {
    out.error('Please specify portal as <ipaddr>[:<ipport>]');
    return out.result(7);
  }
  const address = cli.portal.address;
  const port = cli.portal.port < 0 ? ISCSI_DEFAULT_PORT : cli.portal.port;
  if (cli.op & OP.NEW && !cli.doDiscover) {
    await ctx.db.lock.run(() => ctx.db.writeDiscovery(ctx.db.newDiscovery(address, port)));
    out.info(`New discovery record for [${address},${port}] added.`);
    return out.result(0);
  }
  let drec = await ctx.db.readDiscovery(address, port);
  if (!drec) {
    if (!cli.doDiscover) {
      out.error(`Discovery record [${address},${port}] not found.`);
      return out.result(6);
    }
    drec = ctx.db.newDiscovery(address, port);
    if (!(cli.op & OP.NONPERSISTENT)) await ctx.db.writeDiscovery(drec);
  } else if (!cli.doDiscover) {
    if (cli.op === 0 || cli.op === OP.SHOW) {
      out.stdout += formatRecordShow(DISCOVERY_KEYS, drec.values, cli.doShow);
      return out.result(0);
    }
    if (cli.op === OP.DELETE) {
      await ctx.db.deleteDiscovery(address, port);
      return out.result(0);
    }
    if (cli.op === OP.UPDATE) {
      if (cli.params.length === 0) {
        out.error('Update requires name and value.');
        return out.result(7);
      }
      const record = drec;
      return ctx.db.lock.run(async () => {
        const rc = setParams(out, DISCOVERY_KEYS, record.values, cli.params);
        if (!rc) await ctx.db.writeDiscovery(record);
        return out.result(rc);
      });
    }
    out.error('Operation is not supported.');
    return out.result(7);
  }
  return out.result(await doSendTargets(cli, drec, false));
}

async function printAllDiscovery(cli: Cli): Promise<ToolResult> {
  const { out, ctx } = cli;
  const records = await ctx.db.listDiscovery();
  if (cli.infoLevel < 1) {
    // idbm prints this address without brackets, IPv6 or not.
    for (const d of records) out.info(`${d.address}:${d.port} via sendtargets`);
    return out.result(records.length > 0 ? 0 : 21);
  }
  const nodes = await ctx.db.list();
  /** idbm_print_discovered at -P 1: a tree of the records from one discovery source. */
  const printDiscovered = (type: string, address?: string, port?: number): number => {
    let last: NodeRecord | undefined;
    let count = 0;
    for (const n of nodes) {
      if (n.values.get('node.discovery_type') !== type) continue;
      if (address !== undefined && (n.values.get('node.discovery_address') !== address || n.values.get('node.discovery_port') !== String(port))) continue;
      if (!last || last.iqn !== n.iqn) {
        out.info(`Target: ${n.iqn}`);
        last = undefined;
      }
      if (!last || last.address !== n.address || last.port !== n.port) out.info(`\tPortal: ${formatPortal(n.address, n.port)},${n.tpgt}`);
      out.info(`\t\tIface Name: ${n.iface}`);
      last = n;
      count++;
    }
    return count;
  };
  let found = 0;
  out.info('SENDTARGETS:');
  for (const d of records) {
    out.info(`DiscoveryAddress: ${d.address},${d.port}`);
    printDiscovered('send_targets', d.address, d.port);
  }
  if (records.length === 0) out.info('No targets found.');
  found += records.length;
  out.info('iSNS:');
  const isns = printDiscovered('isns');
  if (isns === 0) out.info('No targets found.');
  found += isns;
  out.info('STATIC:');
  const statics = printDiscovered('static');
  if (statics === 0) out.info('No targets found.');
  found += statics;
  out.info('FIRMWARE:');
  const fw = printDiscovered('fw');
  if (fw === 0) out.info('No targets found.');
  found += fw;
  return out.result(found > 0 ? 0 : 21);
}

/**
 * do_software_sendtargets: ask the target, then (the default ops: new, delete, update) delete the
 * records this discovery address found before and did not find now, rewrite every returned record
 * with the defaults, and print `ADDR:PORT,TPGT IQN` per portal.
 */
async function doSendTargets(cli: Cli, drec: { address: string; port: number; values: Map<string, string> }, syncDrec: boolean): Promise<number> {
  const { out, ctx } = cli;
  const op = cli.op === 0 ? OP.NEW | OP.DELETE | OP.UPDATE : cli.op;
  if (syncDrec && !(op & OP.NONPERSISTENT)) await ctx.db.lock.run(() => ctx.db.writeDiscovery({ ...drec, values: freshDiscoveryValues(drec) }));
  const portal: PortalAddress = { address: drec.address, port: drec.port };
  const key = portalKey(portal);
  const timeout = ctx.kernel.faults.unreachable(key);
  let answer: Awaited<ReturnType<TargetAccess['discover']>>;
  if (timeout !== undefined) {
    await new Promise((resolve) => setTimeout(resolve, timeout));
    answer = { ok: false, exitCode: 11, message: iscsiErrText(11) };
  } else {
    answer = await ctx.targetAccess.discover(key, await ctx.initiatorName(), discoveryAuth(drec.values));
  }
  if (!answer.ok) {
    if (answer.exitCode === 11) out.error('connection login retries (reopen_max) 5 exceeded');
    if (answer.exitCode === 24) out.error(`discovery login to ${drec.address} rejected: initiator failed authorization`);
    if (answer.exitCode === 19) out.error(`discovery login to ${drec.address} rejected: initiator error (02/03), non-retryable, giving up`);
    out.error(`Could not perform SendTargets discovery: ${iscsiErrText(answer.exitCode)}`);
    return answer.exitCode;
  }
  if (answer.targets.length === 0) {
    out.error('No portals found');
    return 21;
  }
  const iface = cli.ifaces[0] ?? 'default';
  const found = answer.targets.map((t) => {
    const p = parsePortal(t.portal);
    const rec = ctx.db.newRecord(t.iqn, p.address, p.port, t.tpgt, iface);
    rec.values.set('node.discovery_address', drec.address);
    rec.values.set('node.discovery_port', String(drec.port));
    rec.values.set('node.discovery_type', 'send_targets');
    return rec;
  });
  await ctx.db.lock.run(async () => {
    if (op & OP.DELETE) {
      for (const old of await ctx.db.list()) {
        if (old.values.get('node.discovery_type') !== 'send_targets') continue;
        if (old.values.get('node.discovery_address') !== drec.address || old.values.get('node.discovery_port') !== String(drec.port)) continue;
        if (found.some((n) => n.iqn === old.iqn && n.address === old.address && n.port === old.port && n.iface === old.iface)) continue;
        await deleteNode(cli, old);
      }
    }
    if (op & (OP.NEW | OP.UPDATE)) {
      const existing = await ctx.db.list();
      for (const rec of found) {
        const old = existing.find((r) => r.iqn === rec.iqn && r.address === rec.address && r.port === rec.port && r.iface === rec.iface && (r.tpgt === rec.tpgt || r.tpgt === -1));
        if (old && !(op & OP.UPDATE)) continue;
        // The quirk os-brick works around: an existing record is rewritten with the defaults.
        if (old) await ctx.db.delete(old);
        await ctx.db.write(rec);
      }
    }
  });
  for (const rec of found) out.info(`${formatPortal(rec.address, rec.port)},${rec.tpgt} ${rec.iqn}`);
  if (!cli.doLogin) return 0;
  return loginRecords(cli, found);
}

function freshDiscoveryValues(drec: { address: string; port: number }): Map<string, string> {
  const values = defaultRecord(DISCOVERY_KEYS);
  values.set('discovery.sendtargets.address', drec.address);
  values.set('discovery.sendtargets.port', String(drec.port));
  return values;
}

// ---------------------------------------------------------------------------------------------
// iface and host modes

const IFACE_KEYS = NODE_KEYS.filter((k) => k.name.startsWith('iface.'));

async function ifaceExists(db: NodeDb, name: string): Promise<boolean> {
  if (name === 'default' || name === 'iser') return true;
  return (await db.listIfaceFiles()).includes(name);
}

async function ifaceValues(db: NodeDb, name: string): Promise<Map<string, string> | undefined> {
  if (name === 'default' || name === 'iser') {
    const values = defaultRecord(IFACE_KEYS);
    values.set('iface.iscsi_ifacename', name);
    values.set('iface.transport_name', name === 'iser' ? 'iser' : 'tcp');
    return values;
  }
  const text = await fsp.readFile(path.join(db.ifacesDir, name), 'utf8').catch(() => undefined);
  return text === undefined ? undefined : parseRecordFile(IFACE_KEYS, text);
}

async function ifaceMode(cli: Cli): Promise<ToolResult> {
  const { out, ctx } = cli;
  const name = cli.ifaces[0];
  const db = ctx.db;
  if (name === undefined) {
    if (cli.op !== 0 && cli.op !== OP.SHOW) {
      out.error('Invalid operation. Operation not supported.');
      return out.result(7);
    }
    const names = [...(await db.listIfaceFiles()), 'default', 'iser'];
    for (const n of names) {
      const v = await ifaceValues(db, n);
      if (!v) continue;
      const f = (k: string): string => v.get(k) || '<empty>';
      out.info(`${n} ${f('iface.transport_name')},${f('iface.hwaddress')},${f('iface.ipaddress')},${f('iface.net_ifacename')},${f('iface.initiatorname')}`);
    }
    return out.result(0);
  }
  const missing = (): ToolResult => {
    out.stderr += `iSCSI ERROR: Failed to open /etc/iscsi/ifaces/${name} using read mode: 2 No such file or directory # idbm.c:_idbm_recs_read():834\n`;
    return out.result(6);
  };
  if (cli.op === OP.NEW) {
    if (await ifaceExists(db, name)) {
      out.error(`Could not create new interface ${name}.`);
      out.error(`Iface ${name} already exists.`);
      return out.result(15);
    }
    const values = defaultRecord(IFACE_KEYS);
    values.set('iface.iscsi_ifacename', name);
    await fsp.writeFile(path.join(db.ifacesDir, name), formatRecordFile(IFACE_KEYS, values), { mode: 0o600 });
    out.info(`New interface ${name} added`);
    return out.result(0);
  }
  const values = await ifaceValues(db, name);
  if (!values) return missing();
  if (cli.op === 0 || cli.op === OP.SHOW) {
    out.stdout += formatRecordShow(IFACE_KEYS, values, cli.doShow);
    return out.result(0);
  }
  if (cli.op === OP.DELETE) {
    await fsp.rm(path.join(db.ifacesDir, name), { force: true });
    out.info(`${name} unbound and deleted.`);
    return out.result(0);
  }
  if (cli.op === OP.UPDATE) {
    const rc = setParams(out, IFACE_KEYS, values, cli.params);
    if (rc) return out.result(rc);
    await fsp.writeFile(path.join(db.ifacesDir, name), formatRecordFile(IFACE_KEYS, values), { mode: 0o600 });
    out.info(`${name} updated.`);
    return out.result(0);
  }
  out.error('operation is not supported.');
  return out.result(7);
}

async function hostMode(cli: Cli): Promise<ToolResult> {
  const { out, ctx } = cli;
  const sessions = ctx.kernel.findSessions();
  if (sessions.length === 0) {
    out.error('No iSCSI hosts.');
    return out.result(21);
  }
  for (const s of [...sessions].sort((a, b) => a.host - b.host)) out.info(`tcp: [${s.host}] 127.0.0.1,[<empty>],<empty> ${s.initiator}`);
  return out.result(0);
}

// ---------------------------------------------------------------------------------------------
// matching

function matchRecord(pattern: RecPattern, r: NodeRecord): boolean {
  if (pattern.iqn !== '' && pattern.iqn !== r.iqn) return false;
  if (pattern.address !== '' && pattern.address !== r.address) return false;
  if (pattern.port !== -1 && pattern.port !== r.port) return false;
  if (pattern.iface !== '' && pattern.iface !== r.iface) return false;
  return true;
}

function matchSession(pattern: RecPattern, s: SimSessionState): boolean {
  const p = parsePortal(s.portal);
  if (pattern.iqn !== '' && pattern.iqn !== s.iqn) return false;
  if (pattern.address !== '' && pattern.address !== p.address) return false;
  if (pattern.port !== -1 && pattern.port !== p.port) return false;
  if (pattern.iface !== '' && pattern.iface !== s.iface) return false;
  return true;
}
