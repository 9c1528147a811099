import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { OP } from '../iscsiadm-args.js';
import { NODE_KEYS, formatRecordShow, parseRecordFile, defaultRecord, formatRecordFile } from '../idbm-record.js';
import type { NodeDb } from '../node-db.js';
import type { ToolResult } from '../tool-protocol.js';
import { setParams, type Cli } from './cli.js';

// `iscsiadm -m iface`: the iface records (list, `-I`, new/update/delete).

const IFACE_KEYS = NODE_KEYS.filter((k) => k.name.startsWith('iface.'));

/** Whether an iface record exists (`default` and `iser` always do). */
export async function ifaceExists(db: NodeDb, name: string): Promise<boolean> {
  if (name === 'default' || name === 'iser') return true;
  return (await db.listIfaceFiles()).includes(name);
}

/** An iface record's values, or undefined when there is none. */
export async function ifaceValues(db: NodeDb, name: string): Promise<Map<string, string> | undefined> {
  if (name === 'default' || name === 'iser') {
    const values = defaultRecord(IFACE_KEYS);
    values.set('iface.iscsi_ifacename', name);
    values.set('iface.transport_name', name === 'iser' ? 'iser' : 'tcp');
    return values;
  }
  const text = await fsp.readFile(path.join(db.ifacesDir, name), 'utf8').catch(() => undefined);
  return text === undefined ? undefined : parseRecordFile(IFACE_KEYS, text);
}

/** `-m iface`: list, `-I NAME` show, and new/update/delete of iface records. */
export async function ifaceMode(cli: Cli): Promise<ToolResult> {
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
