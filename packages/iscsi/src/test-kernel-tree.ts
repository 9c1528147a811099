import { mkdir, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** A LUN the fake kernel has probed. */
export interface TreeLun {
  lun: number;
  /** Its block device (`sdb`); none for tgtd's LUN 0 controller. */
  device?: string;
  wwid?: string;
}

/** An iSCSI session with its own SCSI host, as iscsi_tcp makes one. */
export interface TreeSession {
  host: number;
  sid: number;
  iqn: string;
  /** persistent_address: the node record's text (IPv6 without brackets). */
  address: string;
  port: number;
  tpgt?: number;
  state?: string;
  /** LUNs found by scans; with none (`undefined`) there is no `targetH:0:0` directory yet. */
  luns?: TreeLun[];
}

/** A multipath map over some sd devices. */
export interface TreeDm {
  name: string;
  /** `dm-N`. */
  dm: string;
  uuid: string;
  slaves: string[];
}

/** Make a relative link at `<root><linkHostPath>` to `<root><targetHostPath>`, as sysfs links are relative. */
async function link(root: string, targetHostPath: string, linkHostPath: string): Promise<void> {
  const linkPath = path.join(root, linkHostPath);
  await mkdir(path.dirname(linkPath), { recursive: true });
  await symlink(path.relative(path.dirname(linkPath), path.join(root, targetHostPath)), linkPath);
}

async function attrs(root: string, dirHostPath: string, values: Record<string, string>): Promise<void> {
  const dir = path.join(root, dirHostPath);
  await mkdir(dir, { recursive: true });
  for (const [name, value] of Object.entries(values)) await writeFile(path.join(dir, name), value);
}

/**
 * Lay out `<root>/sys` the way kernel 6.1 does for iscsi_tcp sessions (KERNEL-MODEL §3): the
 * devices under /sys/devices/platform/hostH, and the class links that point at them.
 */
export async function buildSessions(root: string, sessions: readonly TreeSession[]): Promise<void> {
  await mkdir(path.join(root, 'sys/class/iscsi_transport/tcp'), { recursive: true });
  for (const s of sessions) {
    const hostDir = `/sys/devices/platform/host${s.host}`;
    const sessionDir = `${hostDir}/session${s.sid}`;
    const connName = `connection${s.sid}:0`;
    await attrs(root, `${hostDir}/scsi_host/host${s.host}`, { proc_name: 'iscsi_tcp\n', scan: '', state: 'running\n' });
    await attrs(root, `${hostDir}/iscsi_host/host${s.host}`, { initiatorname: '\n', ipaddress: '127.0.0.1\n' });
    await attrs(root, `${sessionDir}/iscsi_session/session${s.sid}`, {
      targetname: `${s.iqn}\n`,
      tpgt: `${s.tpgt ?? 1}\n`,
      state: `${s.state ?? 'LOGGED_IN'}\n`,
      recovery_tmo: '120\n',
      creator: '4242\n',
    });
    await attrs(root, `${sessionDir}/${connName}/iscsi_connection/${connName}`, {
      persistent_address: `${s.address}\n`,
      persistent_port: `${s.port}\n`,
      address: `${s.address}\n`,
      port: `${s.port}\n`,
      state: 'up\n',
    });
    await link(root, `${hostDir}/scsi_host/host${s.host}`, `/sys/class/scsi_host/host${s.host}`);
    await link(root, hostDir, `${hostDir}/scsi_host/host${s.host}/device`);
    await link(root, `${hostDir}/iscsi_host/host${s.host}`, `/sys/class/iscsi_host/host${s.host}`);
    await link(root, hostDir, `${hostDir}/iscsi_host/host${s.host}/device`);
    await link(root, `${sessionDir}/iscsi_session/session${s.sid}`, `/sys/class/iscsi_session/session${s.sid}`);
    await link(root, sessionDir, `${sessionDir}/iscsi_session/session${s.sid}/device`);
    await link(root, `${sessionDir}/${connName}/iscsi_connection/${connName}`, `/sys/class/iscsi_connection/${connName}`);
    await link(root, `${sessionDir}/${connName}`, `${sessionDir}/${connName}/iscsi_connection/${connName}/device`);
    if (s.luns === undefined) continue;
    const targetDir = `${sessionDir}/target${s.host}:0:0`;
    await mkdir(path.join(root, targetDir), { recursive: true });
    for (const l of s.luns) await addLun(root, s, l);
  }
}

/** Add a probed LUN (and its block device) to a session built by `buildSessions`. */
export async function addLun(root: string, s: Pick<TreeSession, 'host' | 'sid'>, l: TreeLun): Promise<void> {
  const hctl = `${s.host}:0:0:${l.lun}`;
  const lunDir = `/sys/devices/platform/host${s.host}/session${s.sid}/target${s.host}:0:0/${hctl}`;
  await attrs(root, lunDir, {
    state: 'running\n',
    vendor: 'IET     \n',
    model: l.device === undefined ? 'Controller      \n' : 'VIRTUAL-DISK    \n',
    delete: '',
    rescan: '',
    ...(l.wwid === undefined ? {} : { wwid: `${l.wwid}\n` }),
  });
  if (l.device === undefined) return;
  const blockDir = `${lunDir}/block/${l.device}`;
  await attrs(root, blockDir, { size: '131072\n', ro: '0\n', dev: '8:16\n' });
  await mkdir(path.join(root, blockDir, 'holders'), { recursive: true });
  await mkdir(path.join(root, blockDir, 'slaves'), { recursive: true });
  await link(root, lunDir, `${blockDir}/device`);
  await link(root, blockDir, `/sys/block/${l.device}`);
  await link(root, lunDir, `/sys/bus/scsi/drivers/sd/${hctl}`);
}

/** Remove a LUN as the kernel does on `delete`: the device dir, its block link and its sd driver link. */
export async function removeLun(root: string, s: Pick<TreeSession, 'host' | 'sid'>, l: TreeLun): Promise<void> {
  await rm(path.join(root, `/sys/devices/platform/host${s.host}/session${s.sid}/target${s.host}:0:0/${s.host}:0:0:${l.lun}`), { recursive: true, force: true });
  if (l.device !== undefined) await rm(path.join(root, `/sys/block/${l.device}`), { force: true });
  await rm(path.join(root, `/sys/bus/scsi/drivers/sd/${s.host}:0:0:${l.lun}`), { force: true });
}

/** Lay out a dm multipath map over `slaves`, with the holders links in each slave. */
export async function buildDm(root: string, map: TreeDm): Promise<void> {
  const dmDir = `/sys/devices/virtual/block/${map.dm}`;
  await attrs(root, `${dmDir}/dm`, { name: `${map.name}\n`, uuid: `${map.uuid}\n` });
  await link(root, dmDir, `/sys/block/${map.dm}`);
  for (const slave of map.slaves) {
    await link(root, `/sys/block/${slave}`, `${dmDir}/slaves/${slave}`);
    // The holders directory lives in the slave's real block dir; write the link there.
    const slaveReal = await realpath(path.join(root, `/sys/block/${slave}`));
    const holder = path.join(slaveReal, 'holders', map.dm);
    await symlink(path.relative(path.dirname(holder), path.join(root, dmDir)), holder);
  }
}
