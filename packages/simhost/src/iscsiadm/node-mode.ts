import { OP } from '../iscsiadm-args.js';
import { NODE_KEYS, formatRecordShow } from '../idbm-record.js';
import { iscsiErrText } from '../iscsi-errors.js';
import type { NodeRecord } from '../node-db.js';
import { ISCSI_DEFAULT_PORT, formatPortal } from '../portal-address.js';
import type { ToolResult } from '../tool-protocol.js';
import { setParams, matchRecord, matchSession, sessionsOfRecord, type RecPattern, type Cli } from './cli.js';
import { ifaceExists } from './iface-mode.js';
import { forEachSession, loginByStartup, loginPortals, logoutByStartup, logoutSessions } from './login.js';

// `iscsiadm -m node`: list, show, new, update, delete, and the ops it hands to login/logout.

/** `-m node`: the records matching `-T`, `-p` and `-I`, and what to do with them. */
export async function nodeMode(cli: Cli): Promise<ToolResult> {
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

/** Run the operation the command line asks for on the matching records (or session `sessionSid`). */
export async function execNodeOp(cli: Cli, pattern: RecPattern | undefined, sessionSid: number | undefined): Promise<ToolResult> {
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

/** `-m node` with nothing else: one `ADDR:PORT,TPGT IQN` line (or `-P 1` tree) per record. */
export async function printNodes(cli: Cli): Promise<ToolResult> {
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

/** Record show: `# BEGIN RECORD` … `# END RECORD` for each matching record. */
export async function printNodesConfig(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
  const { out } = cli;
  const records = (await cli.ctx.db.list()).filter((r) => matchRecord(pattern, r));
  if (records.length === 0) {
    out.error('No records found');
    return out.result(21);
  }
  for (const r of records) out.stdout += formatRecordShow(NODE_KEYS, r.values, cli.doShow);
  return out.result(0);
}

/** `--op new`: a record with defaults (an existing one is rewritten with defaults, as 2.1.8 does). */
export async function addStaticRecs(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
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

/** `--op update -n K -v V` on every matching record. */
export async function updateNodes(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
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

/** `--op delete` on every matching record (15 while a session uses one). */
export async function deleteNodes(cli: Cli, pattern: RecPattern): Promise<ToolResult> {
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
export async function deleteNode(cli: Cli, r: NodeRecord): Promise<number> {
  if (sessionsOfRecord(cli, r).length > 0) {
    cli.out.error(
      `This command will remove the record [iface: ${r.iface}, target: ${r.iqn}, portal: ${r.address},${r.port}], but a session is using it. Logout session then rerun command to remove record.`,
    );
    return 15;
  }
  await cli.ctx.db.delete(r);
  return 0;
}
