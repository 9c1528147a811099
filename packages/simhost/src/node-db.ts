import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Mutex } from '@berth/core';
import {
  DISCOVERY_KEYS,
  NODE_KEYS,
  defaultRecord,
  formatRecordFile,
  parseRecordFile,
  type RecordValues,
} from './idbm-record.js';

/** A node record and where it is stored. */
export interface NodeRecord {
  iqn: string;
  /** `node.conn[0].address`: the address text without brackets. */
  address: string;
  port: number;
  /** -1 when made with `--op new` without a tag (stored as a file `ADDR,PORT`). */
  tpgt: number;
  /** The iface name (`default`). */
  iface: string;
  values: RecordValues;
}

/** A sendtargets discovery record. */
export interface DiscoveryRecord {
  address: string;
  port: number;
  values: RecordValues;
}

// iscsiadm runs with umask 0077: directories 0700, files 0600 (etc-iscsi-nodes-tree fixtures).
const DIR_MODE = 0o700;
const FILE_MODE = 0o600;

/**
 * open-iscsi's node database on disk under `<root>/etc/iscsi`, in its layout: a record with tag -1
 * is the file `nodes/IQN/ADDR,PORT`; with a tag it is `nodes/IQN/ADDR,PORT,TPGT/IFACE`; discovery
 * records are `send_targets/ADDR,PORT/st_config`, with a link per node they found. The files are the
 * truth: every read goes to disk, so a test may look at or edit them.
 */
export class NodeDb {
  /** Serialises read-modify-write of records, like iscsiadm's idbm lock. */
  readonly lock = new Mutex();
  readonly nodesDir: string;
  readonly sendTargetsDir: string;
  readonly ifacesDir: string;

  constructor(readonly etcDir: string) {
    this.nodesDir = path.join(etcDir, 'nodes');
    this.sendTargetsDir = path.join(etcDir, 'send_targets');
    this.ifacesDir = path.join(etcDir, 'ifaces');
  }

  /** Make the empty database (`nodes/`, `send_targets/`, `ifaces/`). */
  async init(): Promise<void> {
    for (const dir of [this.etcDir, this.nodesDir, this.sendTargetsDir, this.ifacesDir]) {
      await fsp.mkdir(dir, { recursive: true, mode: dir === this.etcDir ? 0o755 : DIR_MODE });
    }
  }

  /** Every node record, sorted as libopeniscsiusr lists them: target, portal, iface. */
  async list(): Promise<NodeRecord[]> {
    const out: NodeRecord[] = [];
    for (const iqn of await readdirSafe(this.nodesDir)) {
      const targetDir = path.join(this.nodesDir, iqn);
      for (const entry of await readdirSafe(targetDir)) {
        const full = path.join(targetDir, entry);
        const st = await fsp.lstat(full).catch(() => undefined);
        if (!st) continue;
        const parts = splitPortalName(entry);
        if (!parts) continue;
        if (st.isFile()) {
          // Listing takes no lock (idbm reads record by record): a record deleted since the
          // directory was read is gone, not an error — another iscsiadm's cleanup must not fail this one.
          const text = await fsp.readFile(full, 'utf8').catch(skipVanished);
          if (text === undefined) continue;
          const values = parseRecordFile(NODE_KEYS, text);
          out.push({ iqn, address: parts.address, port: parts.port, tpgt: -1, iface: values.get('iface.iscsi_ifacename') || 'default', values });
        } else if (st.isDirectory() && parts.tpgt !== undefined) {
          for (const iface of await readdirSafe(full)) {
            const text = await fsp.readFile(path.join(full, iface), 'utf8').catch(skipVanished);
            if (text === undefined) continue;
            out.push({ iqn, address: parts.address, port: parts.port, tpgt: parts.tpgt, iface, values: parseRecordFile(NODE_KEYS, text) });
          }
        }
      }
    }
    return out.sort(compareRecords);
  }

  /** A new record with the defaults for this target, portal, tag and iface. */
  newRecord(iqn: string, address: string, port: number, tpgt: number, iface = 'default'): NodeRecord {
    const values = defaultRecord(NODE_KEYS);
    values.set('node.name', iqn);
    values.set('node.tpgt', String(tpgt));
    values.set('node.conn[0].address', address);
    values.set('node.conn[0].port', String(port));
    values.set('iface.iscsi_ifacename', iface);
    return { iqn, address, port, tpgt, iface, values };
  }

  /** Write a record in open-iscsi's layout (and its discovery link when it came from sendtargets). */
  async write(record: NodeRecord): Promise<void> {
    const targetDir = path.join(this.nodesDir, record.iqn);
    await fsp.mkdir(targetDir, { recursive: true, mode: DIR_MODE });
    const text = formatRecordFile(NODE_KEYS, record.values);
    const base = `${record.address},${record.port}`;
    if (record.tpgt === -1) {
      const file = path.join(targetDir, base);
      const st = await fsp.lstat(file).catch(() => undefined);
      // idbm refuses to write an untagged record over a tagged portal directory.
      if (st?.isDirectory()) throw Object.assign(new Error(`${file} is a directory`), { code: 'EISDIR' });
      await writeFileMode(file, text);
      return;
    }
    const legacy = path.join(targetDir, base);
    const legacySt = await fsp.lstat(legacy).catch(() => undefined);
    if (legacySt?.isFile()) await fsp.unlink(legacy);
    const portalDir = path.join(targetDir, `${base},${record.tpgt}`);
    await fsp.mkdir(portalDir, { recursive: true, mode: DIR_MODE });
    await writeFileMode(path.join(portalDir, record.iface), text);
    if (record.values.get('node.discovery_type') === 'send_targets') {
      const discDir = path.join(this.sendTargetsDir, `${record.values.get('node.discovery_address')},${record.values.get('node.discovery_port')}`);
      if (await exists(discDir)) {
        const link = path.join(discDir, `${record.iqn},${record.address},${record.port},${record.tpgt},${record.iface}`);
        await fsp.symlink(path.relative(discDir, portalDir), link).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'EEXIST') throw error;
        });
      }
    }
  }

  /** Delete a record, its discovery link, and the directories it leaves empty. */
  async delete(record: NodeRecord): Promise<void> {
    const targetDir = path.join(this.nodesDir, record.iqn);
    const base = `${record.address},${record.port}`;
    if (record.tpgt === -1) {
      await fsp.rm(path.join(targetDir, base), { force: true });
    } else {
      const portalDir = path.join(targetDir, `${base},${record.tpgt}`);
      if (record.values.get('node.discovery_type') === 'send_targets') {
        const discDir = path.join(this.sendTargetsDir, `${record.values.get('node.discovery_address')},${record.values.get('node.discovery_port')}`);
        await fsp.rm(path.join(discDir, `${record.iqn},${record.address},${record.port},${record.tpgt},${record.iface}`), { force: true });
      }
      await fsp.rm(path.join(portalDir, record.iface), { force: true });
      await fsp.rmdir(portalDir).catch(() => undefined);
    }
    await fsp.rmdir(targetDir).catch(() => undefined);
  }

  /** The discovery record of `address,port`, or undefined. */
  async readDiscovery(address: string, port: number): Promise<DiscoveryRecord | undefined> {
    const text = await fsp.readFile(path.join(this.sendTargetsDir, `${address},${port}`, 'st_config'), 'utf8').catch(() => undefined);
    if (text === undefined) return undefined;
    return { address, port, values: parseRecordFile(DISCOVERY_KEYS, text) };
  }

  /** A discovery record with the defaults for `address,port`. */
  newDiscovery(address: string, port: number): DiscoveryRecord {
    const values = defaultRecord(DISCOVERY_KEYS);
    values.set('discovery.sendtargets.address', address);
    values.set('discovery.sendtargets.port', String(port));
    return { address, port, values };
  }

  /** Write `send_targets/ADDR,PORT/st_config`. */
  async writeDiscovery(record: DiscoveryRecord): Promise<void> {
    const dir = path.join(this.sendTargetsDir, `${record.address},${record.port}`);
    await fsp.mkdir(dir, { recursive: true, mode: DIR_MODE });
    await writeFileMode(path.join(dir, 'st_config'), formatRecordFile(DISCOVERY_KEYS, record.values));
  }

  /** Delete a discovery record directory (its node links with it); false when there was none. */
  async deleteDiscovery(address: string, port: number): Promise<boolean> {
    const dir = path.join(this.sendTargetsDir, `${address},${port}`);
    if (!(await exists(dir))) return false;
    await fsp.rm(dir, { recursive: true, force: true });
    return true;
  }

  /** Every sendtargets discovery record, sorted by directory name. */
  async listDiscovery(): Promise<DiscoveryRecord[]> {
    const out: DiscoveryRecord[] = [];
    for (const entry of (await readdirSafe(this.sendTargetsDir)).sort()) {
      const parts = splitPortalName(entry);
      if (!parts) continue;
      const rec = await this.readDiscovery(parts.address, parts.port);
      if (rec) out.push(rec);
    }
    return out;
  }

  /** Names of the iface files under `ifaces/`, sorted. */
  async listIfaceFiles(): Promise<string[]> {
    return (await readdirSafe(this.ifacesDir)).sort();
  }
}

/** strcmp order of target, then portal text, then iface. */
function compareRecords(a: NodeRecord, b: NodeRecord): number {
  return cmp(a.iqn, b.iqn) || cmp(`${a.address}:${a.port}`, `${b.address}:${b.port}`) || cmp(a.iface, b.iface) || a.tpgt - b.tpgt;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** `ADDR,PORT` or `ADDR,PORT,TPGT` (ADDR may hold colons, never commas). */
function splitPortalName(name: string): { address: string; port: number; tpgt?: number } | undefined {
  const parts = name.split(',');
  if (parts.length === 2 && /^\d+$/.test(parts[1]!)) return { address: parts[0]!, port: Number(parts[1]) };
  if (parts.length === 3 && /^\d+$/.test(parts[1]!) && /^-?\d+$/.test(parts[2]!)) {
    return { address: parts[0]!, port: Number(parts[1]), tpgt: Number(parts[2]) };
  }
  return undefined;
}

/** A record file that went between `readdir` and `open` (ENOENT) reads as none; other errors stay. */
function skipVanished(error: NodeJS.ErrnoException): undefined {
  if (error.code === 'ENOENT') return undefined;
  throw error;
}

async function readdirSafe(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch {
    return [];
  }
}

async function exists(p: string): Promise<boolean> {
  return (await fsp.lstat(p).catch(() => undefined)) !== undefined;
}

async function writeFileMode(file: string, text: string): Promise<void> {
  await fsp.writeFile(file, text, { mode: FILE_MODE });
  // writeFile keeps the mode of a file that already exists; records are always 0600.
  await fsp.chmod(file, FILE_MODE);
}
