import { DEFAULT_CONNECT_TIMEOUT_MS } from '../faults.js';
import { OP } from '../iscsiadm-args.js';
import { DISCOVERY_KEYS, formatRecordShow, defaultRecord } from '../idbm-record.js';
import { iscsiErrText } from '../iscsi-errors.js';
import type { NodeRecord } from '../node-db.js';
import { ISCSI_DEFAULT_PORT, formatPortal, parsePortal, portalKey, type PortalAddress } from '../portal-address.js';
import type { LoginAuth, TargetAccess } from '../target-access.js';
import type { ToolResult } from '../tool-protocol.js';
import { ST, setParams, type Cli } from './cli.js';
import { loginRecords } from './login.js';
import { deleteNode } from './node-mode.js';

// `iscsiadm -m discovery` and `-m discoverydb`: SendTargets with its side effects on the node
// database (returned records rewritten with defaults, stale ones deleted unless in use).

/** `-m discovery`: SendTargets discovery through a portal (`-t st -p P`), or the discovery records. */
export async function discoveryMode(cli: Cli): Promise<ToolResult> {
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

/** `-m discoverydb`: discovery records (new/update/show/delete/`--discover`). */
export async function discoverydbMode(cli: Cli): Promise<ToolResult> {
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
  const attemptMs = ctx.kernel.faults.unreachable(key);
  let answer: Awaited<ReturnType<TargetAccess['discover']>>;
  if (attemptMs !== undefined) {
    const timeout = Number.isFinite(attemptMs) ? attemptMs : DEFAULT_CONNECT_TIMEOUT_MS;
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

/** The discovery CHAP of a discovery record, when it has one. */
export function discoveryAuth(values: Map<string, string>): LoginAuth | undefined {
  if (values.get('discovery.sendtargets.auth.authmethod') !== 'CHAP') return undefined;
  const usernameIn = values.get('discovery.sendtargets.auth.username_in') ?? '';
  return {
    method: 'CHAP',
    username: values.get('discovery.sendtargets.auth.username') ?? '',
    password: values.get('discovery.sendtargets.auth.password') ?? '',
    ...(usernameIn !== '' ? { usernameIn, passwordIn: values.get('discovery.sendtargets.auth.password_in') ?? '' } : {}),
  };
}
