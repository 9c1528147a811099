import { execFileSync } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RealTargetAccess } from './real/index.js';
import { startTgtd, type TestTgtd } from './real/tgtd-harness.js';
import { SimulatedHost } from './simulated-host.js';
import { VOL1, iscsiadm, loginManual, node } from './test-helpers.js';

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

describe('the simulated kernel over a real tgtd', { timeout: 120_000 }, () => {
  it.skipIf(!available)('makes /dev/sdX a block device whose bytes are the LUN file', async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-simhost-real-'));
    tgtd = await startTgtd(dir);
    const lunFile = path.join(dir, 'lun1.img');
    await fsp.writeFile(lunFile, Buffer.alloc(0));
    await fsp.truncate(lunFile, 16 << 20);
    await tgtd.admin('--op', 'new', '--mode', 'target', '--tid', '1', '-T', VOL1);
    await tgtd.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', lunFile);
    await tgtd.admin('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
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
});
