import { execFileSync, spawn } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { HostServices } from '@berth/host';
import { afterEach, describe, expect, it } from 'vitest';
import { RealTargetAccess, sweepStrays } from './real/index.js';
import { startTgtd, type TestTgtd } from './real/tgtd-harness.js';
import { SimulatedHost } from './simulated-host.js';
import { VOL1, iscsiadm, loginManual, node } from './test-helpers.js';

// Multipath over real sessions: one tgtd listening on 127.0.0.1 and 127.0.0.2 (same port), a real
// login per portal, each path's disk its own loop device over its own qemu-storage-daemon export
// of the LUN; the map's node is the I/O path's block device, so bytes written through /dev/dm-0
// land in tgtd's LUN file, before and after a failover.
function have(tool: string): boolean {
  try {
    execFileSync('which', [tool], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const available = process.getuid?.() === 0 && ['tgtd', 'tgtadm', 'qemu-storage-daemon', 'losetup', 'iscsi-inq'].every(have) && existsSync('/dev/fuse');
// As root (CI, and `npm run test:all`, which installs the tools) the suite must run: a skip there would hide it.
if (process.getuid?.() === 0 && !available) throw new Error('this suite needs tgtd, qemu-storage-daemon, libiscsi-bin and /dev/fuse: run `npm run test:all` (it installs them)');

const W1 = '360000000000000000e00000000010001';
const MiB = 1 << 20;

let sim: SimulatedHost | undefined;
let tgtd: TestTgtd | undefined;
let dir: string | undefined;

afterEach(async () => {
  await sim?.stop();
  await tgtd?.stop();
  if (dir) {
    // Every loop device, FUSE mount and qemu-storage-daemon of the paths went with their sessions.
    expect(await sweepStrays(dir)).toEqual({ loopDevices: [], daemonPids: [], mounts: [], dirs: [] });
    await fsp.rm(dir, { recursive: true, force: true });
  }
  sim = undefined;
  tgtd = undefined;
  dir = undefined;
});

async function writeThrough(services: HostServices, device: string, text: string, offset: number): Promise<void> {
  const handle = await fsp.open(services.fs.resolve(device), 'r+');
  try {
    await handle.write(Buffer.from(text), 0, text.length, offset);
  } finally {
    await handle.close();
  }
  const flushed = await services.runner.run('blockdev', ['--flushbufs', device], { reject: false, timeoutMs: 30_000 });
  expect(flushed.exitCode, flushed.stderr).toBe(0);
}

async function rdevOf(services: HostServices, device: string): Promise<number> {
  return (await fsp.stat(services.fs.resolve(device))).rdev;
}

describe('multipath over real sessions to a real tgtd', { timeout: 120_000 }, () => {
  it.skipIf(!available)('makes /dev/dm-0 over two portals; its bytes reach the LUN file through either path', async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-simhost-mp-real-'));
    tgtd = await startTgtd(dir);
    const second = await tgtd.addPortal('127.0.0.2');
    const portals = [tgtd.portal, second];
    const lunFile = path.join(dir, 'lun1.img');
    await fsp.writeFile(lunFile, Buffer.alloc(0));
    await fsp.truncate(lunFile, 16 * MiB);
    await tgtd.admin('--op', 'new', '--mode', 'target', '--tid', '1', '-T', VOL1);
    await tgtd.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', lunFile);
    await tgtd.admin('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
    sim = await SimulatedHost.start({ targetAccess: new RealTargetAccess({ workDir: dir }) });
    const services = sim.hostServices();
    const fs = services.fs;

    const sessions: number[] = [];
    for (const portal of portals) {
      const { sid, host } = await loginManual(sim, services, VOL1, portal);
      sessions.push(sid);
      await fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 1');
      await services.waiter.waitForPath(`/dev/disk/by-path/ip-${portal}-iscsi-${VOL1}-lun-1`, { timeoutMs: 30_000 });
    }
    // Two real block devices (one loop device per session), one wwid.
    for (const sd of ['sda', 'sdb']) {
      expect((await fs.stat(`/dev/${sd}`))?.isBlockDevice).toBe(true);
      expect(await fs.readFile(`/sys/block/${sd}/device/wwid`)).toBe('naa.60000000000000000e00000000010001\n');
    }
    expect(await rdevOf(services, '/dev/sda')).not.toBe(await rdevOf(services, '/dev/sdb'));

    expect((await services.runner.run('multipath', ['-a', W1])).stdout).toBe(`wwid '${W1}' added\n`);
    expect((await services.runner.run('multipathd', ['add', 'path', '/dev/sda'])).stdout).toBe('ok\n');
    await services.waiter.waitForPath(`/dev/mapper/${W1}`, { timeoutMs: 10_000 });
    expect((await fs.readdir('/sys/block/dm-0/slaves')).sort()).toEqual(['sda', 'sdb']);
    expect((await fs.stat('/dev/dm-0'))?.isBlockDevice).toBe(true);
    expect((await services.runner.run('blockdev', ['--getsize64', `/dev/mapper/${W1}`])).stdout).toBe(`${16 * MiB}\n`);

    // I/O goes through the active path (sda's device).
    expect(await rdevOf(services, '/dev/dm-0')).toBe(await rdevOf(services, '/dev/sda'));
    await writeThrough(services, '/dev/dm-0', 'through dm-0 over 127.0.0.1', 8192);
    expect((await fsp.readFile(lunFile)).subarray(8192, 8192 + 27).toString()).toBe('through dm-0 over 127.0.0.1');

    // sda's session fails: dm moves I/O to sdb, whose device the node now is.
    await sim.faults.loseSession(sessions[0]!);
    const state = await sim.state();
    expect(state.maps[0]).toMatchObject({ dm: 'dm-0', ioPath: 'sdb' });
    expect(state.maps[0]?.paths.map((p) => [p.device, p.dmState, p.checkerState])).toEqual([
      ['sda', 'failed', 'faulty'],
      ['sdb', 'active', 'ready'],
    ]);
    expect(await rdevOf(services, '/dev/dm-0')).toBe(await rdevOf(services, '/dev/sdb'));
    await writeThrough(services, '/dev/dm-0', 'through dm-0 over 127.0.0.2', 16384);
    const bytes = await fsp.readFile(lunFile);
    expect(bytes.subarray(16384, 16384 + 27).toString()).toBe('through dm-0 over 127.0.0.2');
    expect(bytes.subarray(8192, 8192 + 27).toString()).toBe('through dm-0 over 127.0.0.1');
    await sim.faults.restoreSession(sessions[0]!);

    // A process with the map's node open holds the map as the kernel counts it: `multipath -f` refuses it.
    const fd = await fsp.open(services.fs.resolve('/dev/dm-0'), 'r');
    const holder = spawn('sleep', ['1000'], { stdio: [fd.fd, 'ignore', 'ignore'] });
    await fd.close();
    const exited = new Promise((resolve) => holder.once('exit', resolve));
    try {
      expect(await services.runner.run('multipath', ['-f', W1], { reject: false })).toMatchObject({ exitCode: 1, stderr: expect.stringContaining(`${W1}: map in use`) });
      expect(await fs.exists('/dev/dm-0')).toBe(true);
    } finally {
      holder.kill('SIGKILL');
      await exited;
    }

    // Teardown as a driver does it: flush the map, delete the paths, log out.
    expect(await services.runner.run('multipath', ['-f', W1], { reject: false })).toMatchObject({ exitCode: 0, stderr: '' });
    for (const sd of ['sda', 'sdb']) {
      await fs.writeFile(`/sys/block/${sd}/device/delete`, '1');
      await services.waiter.waitForGone(`/dev/${sd}`, { timeoutMs: 30_000 });
    }
    for (const portal of portals) expect((await iscsiadm(services, ...node(VOL1, portal), '--logout')).exitCode).toBe(0);
    expect(await fs.exists('/dev/dm-0')).toBe(false);
    const after = await sim.state();
    expect([after.sessions, after.devices, after.maps]).toEqual([[], [], []]);
  });
});
