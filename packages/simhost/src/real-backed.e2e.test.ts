import { execFileSync } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { RealTargetAccess } from './real/index.js';
import { startTgtd, type TestTgtd } from './real/tgtd-harness.js';
import { SimulatedHost } from './simulated-host.js';
import { VOL1, iscsiadm, loginManual, node } from './test-helpers.js';
import type { HostServices } from '@berth/host';
import { createCommandRunner, type CommandRunner } from '@berth/host';
import { sweepStrays } from './real/index.js';

// The kernel model with a real target behind it: the session is a real login to tgtd, and
// /dev/sdX is a block special node (mknod) of a real loop device over that LUN.
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

let sim: SimulatedHost | undefined;
let tgtd: TestTgtd | undefined;
let dir: string | undefined;

afterEach(async () => {
  await sim?.stop();
  await tgtd?.stop();
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
  sim = undefined;
  tgtd = undefined;
  dir = undefined;
});

/** A 16 MiB LUN 1 on target 1 of `tgtd`, open to every initiator. */
async function oneLun(tgtd: TestTgtd, dir: string): Promise<string> {
  const lunFile = path.join(dir, 'lun1.img');
  await fsp.writeFile(lunFile, Buffer.alloc(0));
  await fsp.truncate(lunFile, 16 << 20);
  await tgtd.admin('--op', 'new', '--mode', 'target', '--tid', '1', '-T', VOL1);
  await tgtd.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', lunFile);
  await tgtd.admin('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
  return lunFile;
}

/**
 * A tgtd with one LUN, a simulated host over it, and a session whose record pings every
 * `noop` s and expires after `recovery` s, its LUN 1 scanned: the real path of its `/dev/sda`.
 */
async function watchedDisk(timeouts: { noop: number; recovery: number }): Promise<{ services: HostServices; portal: string; sda: string }> {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-simhost-real-'));
  tgtd = await startTgtd(dir);
  await oneLun(tgtd, dir);
  sim = await SimulatedHost.start({ targetAccess: new RealTargetAccess({ workDir: dir }) });
  const services = sim.hostServices();
  const portal = tgtd.portal;
  const steps = [
    [...node(VOL1, portal), '--interface', 'default', '--op', 'new'],
    ...[
      ['node.session.scan', 'manual'],
      ['node.conn[0].timeo.noop_out_interval', String(timeouts.noop)],
      ['node.conn[0].timeo.noop_out_timeout', String(timeouts.noop)],
      ['node.session.timeo.replacement_timeout', String(timeouts.recovery)],
    ].map(([name, value]) => [...node(VOL1, portal), '--op', 'update', '-n', name!, '-v', value!]),
    [...node(VOL1, portal), '--login'],
  ];
  for (const args of steps) expect((await iscsiadm(services, ...args)).exitCode).toBe(0);
  const { host } = (await sim.state()).sessions[0]!;
  await services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 1');
  await services.waiter.waitForPath(`/dev/disk/by-path/ip-${portal}-iscsi-${VOL1}-lun-1`, { timeoutMs: 30_000 });
  return { services, portal, sda: services.fs.resolve('/dev/sda') };
}

/** Log the session out, stop the simulated host, and find nothing left behind. */
async function logoutClean(services: HostServices, portal: string): Promise<void> {
  expect((await iscsiadm(services, ...node(VOL1, portal), '--logout')).exitCode).toBe(0);
  expect(await services.fs.exists('/dev/sda')).toBe(false);
  await sim!.stop();
  sim = undefined;
  expect(await sweepStrays(dir!)).toEqual({ loopDevices: [], daemonPids: [], mounts: [], dirs: [] });
}

/** The session's state and its disk's, as the kernel model shows them. */
async function states(sim: SimulatedHost): Promise<{ session: string; disk: string }> {
  const s = (await sim.state()).sessions[0]!;
  return { session: s.state, disk: s.luns.find((l) => l.targetLun === 1)?.state ?? '' };
}

/** One 4 KiB O_DIRECT read of `device` at `offset` in its own process (a hung one must not block this one). */
function directRead(device: string, offset: number): Promise<{ exitCode: number; stderr: string }> {
  return createCommandRunner().run('dd', [`if=${device}`, 'of=/dev/null', 'bs=4096', 'count=1', `skip=${offset / 4096}`, 'iflag=direct'], { reject: false, timeoutMs: 90_000 });
}

describe('the simulated kernel over a real tgtd', { timeout: 120_000 }, () => {
  it.skipIf(!available)('makes /dev/sdX a block device whose bytes are the LUN file', async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-simhost-real-'));
    tgtd = await startTgtd(dir);
    const lunFile = await oneLun(tgtd, dir);
    sim = await SimulatedHost.start({ targetAccess: new RealTargetAccess({ workDir: dir }) });
    const services = sim.hostServices();
    const { sid, host } = await loginManual(sim, services, VOL1, tgtd.portal);
    await services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 1');
    const byPath = `/dev/disk/by-path/ip-${tgtd.portal}-iscsi-${VOL1}-lun-1`;
    await services.waiter.waitForPath(byPath, { timeoutMs: 30_000 });
    const st = await services.fs.stat('/dev/sda');
    expect(st?.isBlockDevice).toBe(true);
    expect(await services.fs.readFile('/sys/block/sda/device/wwid')).toBe('naa.60000000000000000e00000000010001\n');
    expect((await services.runner.run('blockdev', ['--getsize64', byPath])).stdout).toBe(`${16 << 20}\n`);
    const handle = await fsp.open(services.fs.resolve('/dev/sda'), 'r+');
    await handle.write(Buffer.from('through the simulated sda'), 0, 25, 4096);
    await handle.close();
    expect((await services.runner.run('blockdev', ['--flushbufs', '/dev/sda'])).exitCode).toBe(0);
    expect((await fsp.readFile(lunFile)).subarray(4096, 4096 + 25).toString()).toBe('through the simulated sda');
    expect((await iscsiadm(services, ...node(VOL1, tgtd.portal), '--logout')).exitCode).toBe(0);
    expect(await services.fs.exists('/dev/sda')).toBe(false);
    expect((await sim.state()).sessions.find((s) => s.sid === sid)).toBeUndefined();
  });

  it.skipIf(!available)('deletes 6 disks written together: each write returns with its disk gone, the backings go side by side, a rescan brings them back', async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-simhost-real-'));
    tgtd = await startTgtd(dir);
    await tgtd.admin('--op', 'new', '--mode', 'target', '--tid', '1', '-T', VOL1);
    const luns = [1, 2, 3, 4, 5, 6];
    for (const lun of luns) {
      const file = path.join(dir, `lun${lun}.img`);
      await fsp.writeFile(file, Buffer.alloc(0));
      await fsp.truncate(file, 4 << 20);
      await tgtd.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', String(lun), '-b', file);
    }
    await tgtd.admin('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
    // The backings' teardowns (`losetup --detach` of each disk's loop device) are held until two
    // are in flight: one after another, the first would wait out the deadline alone.
    let detaching = 0;
    let mostDetaching = 0;
    let open: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const real = createCommandRunner();
    const runner: CommandRunner = {
      async run(file, args, options) {
        const detach = file === 'losetup' && args[0] === '--detach';
        if (detach) {
          mostDetaching = Math.max(mostDetaching, ++detaching);
          if (mostDetaching >= 2) open();
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([gate, new Promise<void>((resolve) => (timer = setTimeout(resolve, 20_000)))]);
          clearTimeout(timer);
        }
        try {
          return await real.run(file, args, options);
        } finally {
          if (detach) detaching -= 1;
        }
      },
    };
    sim = await SimulatedHost.start({ targetAccess: new RealTargetAccess({ workDir: dir, runner }) });
    const services = sim.hostServices();
    const { host } = await loginManual(sim, services, VOL1, tgtd.portal);
    const names = ['sda', 'sdb', 'sdc', 'sdd', 'sde', 'sdf'];
    const scanAll = async (): Promise<void> => {
      expect((await services.runner.run('tee', ['-a', `/sys/class/scsi_host/host${host}/scan`], { input: '- - -' })).exitCode).toBe(0);
      for (const name of names) expect((await services.fs.stat(`/dev/${name}`))?.isBlockDevice).toBe(true);
    };
    await scanAll();
    await Promise.all(
      names.map(async (name) => {
        // os-brick's way: `tee -a .../delete` returns once the kernel has removed the disk.
        const r = await services.runner.run('tee', ['-a', `/sys/block/${name}/device/delete`], { input: '1' });
        expect(r.exitCode).toBe(0);
        expect(await services.fs.exists(`/dev/${name}`)).toBe(false);
        expect(await services.fs.exists(`/sys/block/${name}`)).toBe(false);
      }),
    );
    // The same LUNs again at once, while (or after) their old backings are released.
    await scanAll();
    const handle = await fsp.open(services.fs.resolve('/dev/sdf'), 'r+');
    await handle.write(Buffer.from('after the rescan'), 0, 16, 8192);
    await handle.close();
    expect((await services.runner.run('blockdev', ['--flushbufs', '/dev/sdf'])).exitCode).toBe(0);
    const lunOf = (await sim.state()).sessions[0]!.luns.find((l) => l.device === 'sdf')!.targetLun;
    expect((await fsp.readFile(path.join(dir, `lun${lunOf}.img`))).subarray(8192, 8192 + 16).toString()).toBe('after the rescan');
    expect(mostDetaching).toBeGreaterThan(1);
    expect((await iscsiadm(services, ...node(VOL1, tgtd.portal), '--logout')).exitCode).toBe(0);
    await sim.stop();
    sim = undefined;
    expect(await sweepStrays(dir)).toEqual({ loopDevices: [], daemonPids: [], mounts: [], dirs: [] });
  });

  it.skipIf(!available)('a tgtd that died: the session fails at the first unanswered ping, and its disk fails its I/O once recovery_tmo passed, as the kernel does', async () => {
    const { services, portal, sda } = await watchedDisk({ noop: 1, recovery: 2 });
    expect((await directRead(sda, 0)).exitCode).toBe(0);
    await tgtd!.signal('SIGKILL');
    // Without the watch this read waited for ever, in D state, and with it every `losetup --list`.
    const read = await directRead(sda, 1 << 20);
    expect(read.exitCode).not.toBe(0);
    expect(read.stderr).toMatch(/Input\/output error/);
    expect(await states(sim!)).toEqual({ session: 'FREE', disk: 'transport-offline' });
    expect(await services.fs.readFile('/sys/block/sda/device/state')).toBe('transport-offline\n');
    await logoutClean(services, portal);
  });

  it.skipIf(!available)('a tgtd that stops answering past recovery_tmo: the session expires (EIO), and once the portal answers again iscsid revives it: LOGGED_IN, running, I/O works on the same /dev/sda', async () => {
    // replacement_timeout 2 s in the node record, as a user would set it (not 120 s).
    const { services, portal, sda } = await watchedDisk({ noop: 1, recovery: 2 });
    const before = (await fsp.stat(sda)).rdev;
    await tgtd!.signal('SIGSTOP');
    try {
      await vi.waitFor(async () => expect(await states(sim!)).toEqual({ session: 'FREE', disk: 'transport-offline' }), { timeout: 30_000, interval: 100 });
      // I/O issued while the session is expired fails.
      const failed = await directRead(sda, 1 << 20);
      expect(failed.exitCode).not.toBe(0);
      expect(failed.stderr).toMatch(/Input\/output error/);
    } finally {
      await tgtd!.signal('SIGCONT');
    }
    await vi.waitFor(async () => expect(await states(sim!)).toEqual({ session: 'LOGGED_IN', disk: 'running' }), { timeout: 30_000, interval: 100 });
    expect(await services.fs.readFile('/sys/block/sda/device/state')).toBe('running\n');
    const p3 = await iscsiadm(services, '-m', 'session', '-P', '3');
    expect(p3.exitCode).toBe(0);
    expect(p3.stdout).toMatch(/iSCSI Session State: LOGGED_IN/);
    expect(p3.stdout).toMatch(/Attached scsi disk sda\s+State: running/);
    // The same node (same device numbers), and new I/O reaches the LUN file again.
    expect((await fsp.stat(sda)).rdev).toBe(before);
    expect((await directRead(sda, 2 << 20)).exitCode).toBe(0);
    const handle = await fsp.open(sda, 'r+');
    try {
      await handle.write(Buffer.from('after the revival'), 0, 17, 3 << 20);
    } finally {
      await handle.close();
    }
    expect((await services.runner.run('blockdev', ['--flushbufs', '/dev/sda'])).exitCode).toBe(0);
    expect((await fsp.readFile(path.join(dir!, 'lun1.img'))).subarray(3 << 20, (3 << 20) + 17).toString()).toBe('after the revival');
    await logoutClean(services, portal);
  });

  it.skipIf(!available)('a tgtd that stops answering for less than recovery_tmo: FAILED and blocked, then back, and the read that waited completes', async () => {
    const { services, portal, sda } = await watchedDisk({ noop: 1, recovery: 60 });
    await tgtd!.signal('SIGSTOP');
    await vi.waitFor(async () => expect(await states(sim!)).toEqual({ session: 'FAILED', disk: 'blocked' }), { timeout: 20_000, interval: 100 });
    const read = directRead(sda, 2 << 20);
    await tgtd!.signal('SIGCONT');
    expect((await read).exitCode).toBe(0);
    await vi.waitFor(async () => expect(await states(sim!)).toEqual({ session: 'LOGGED_IN', disk: 'running' }), { timeout: 20_000, interval: 100 });
    await logoutClean(services, portal);
  });
});
