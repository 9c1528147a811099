/**
 * The safety net: when a test dies between openLun and close, `sweepStrays` removes the loop
 * device, the daemon, its FUSE mount and the directory; and close() still works afterwards.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RealLunDisk } from './real-lun-disk.js';
import { RealTargetAccess } from './real-target-access.js';
import type { RealTargetSession } from './real-target-session.js';
import { sweepStrays } from './sweep-strays.js';
import { isMounted, loopBackingFile } from './test-real-state.js';
import { startTgtd, type TestTgtd } from './tgtd-harness.js';

const IQN = 'iqn.2026-01.test.berth:sweep-vol';
const canRun = process.getuid?.() === 0 && existsSync('/dev/fuse') && existsSync('/usr/sbin/tgtd') && existsSync('/usr/bin/qemu-storage-daemon');
// As root (CI, and `npm run test:all`, which installs the tools) the suite must run: a skip there would hide it.
if (process.getuid?.() === 0 && !canRun) throw new Error('this suite needs tgtd, qemu-storage-daemon, libiscsi-bin and /dev/fuse: run `npm run test:all` (it installs them)');

let workDir: string;
let tgtd: TestTgtd | undefined;

async function openDisk(access: RealTargetAccess): Promise<{ session: RealTargetSession; disk: RealLunDisk; pid: number }> {
  const { session } = await access.login({ portal: tgtd?.portal ?? '', iqn: IQN, initiator: 'iqn.2026-01.test.berth:sweeper' });
  const s = session as RealTargetSession;
  const disk = (await s.openLun(1)) as RealLunDisk;
  return { session: s, disk, pid: s.daemonPid ?? -1 };
}

describe.skipIf(!canRun)('sweepStrays (e2e)', () => {
  beforeAll(async () => {
    workDir = await mkdtemp(path.join(tmpdir(), 'berth-sweep-e2e-'));
    tgtd = await startTgtd(workDir);
    const file = path.join(workDir, 'lun.img');
    await writeFile(file, '');
    await truncate(file, 16 * 1024 * 1024);
    await tgtd.admin('--op', 'new', '--mode', 'target', '--tid', '1', '--targetname', IQN);
    await tgtd.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '--backing-store', file);
    await tgtd.admin('--op', 'bind', '--mode', 'target', '--tid', '1', '--initiator-address', 'ALL');
  }, 60_000);

  afterAll(async () => {
    try {
      if (workDir) await sweepStrays(workDir);
    } finally {
      try {
        await tgtd?.stop();
      } finally {
        if (workDir) await rm(workDir, { recursive: true, force: true });
      }
    }
  }, 60_000);

  it('removes what an abandoned access left: loop device, running daemon, FUSE mount, directory', async () => {
    const access = new RealTargetAccess({ workDir });
    const { disk, pid } = await openDisk(access);
    const report = await sweepStrays(workDir);
    expect(report.loopDevices).toEqual([disk.backingPath]);
    expect(report.daemonPids).toEqual([pid]);
    expect(report.dirs).toHaveLength(1);
    expect(await loopBackingFile(disk.backingPath)).not.toBe(disk.plumbing.fuseFile);
    expect(await isMounted(disk.plumbing.fuseFile)).toBe(false);
    // Exited: gone, or a zombie its parent has not reaped yet (empty command line; seen in CI).
    expect(await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).toBe('');
    // The abandoned access can still be closed: everything is gone already.
    await access.close();
  });

  it('unmounts the FUSE export of a daemon that was killed (SIGKILL)', async () => {
    const access = new RealTargetAccess({ workDir });
    const { disk, pid } = await openDisk(access);
    process.kill(pid, 'SIGKILL');
    const report = await sweepStrays(workDir);
    expect(report.loopDevices).toEqual([disk.backingPath]);
    expect(report.mounts).toEqual([disk.plumbing.fuseFile]);
    expect(await isMounted(disk.plumbing.fuseFile)).toBe(false);
    await access.close();
    expect(await sweepStrays(workDir)).toEqual({ loopDevices: [], daemonPids: [], mounts: [], dirs: [] });
  });

  it('cleans up in close() after its daemon died under an open disk', async () => {
    const access = new RealTargetAccess({ workDir });
    const { disk, pid } = await openDisk(access);
    process.kill(pid, 'SIGKILL');
    await access.close();
    expect(await loopBackingFile(disk.backingPath)).not.toBe(disk.plumbing.fuseFile);
    expect(await isMounted(disk.plumbing.fuseFile)).toBe(false);
    expect(await sweepStrays(workDir)).toEqual({ loopDevices: [], daemonPids: [], mounts: [], dirs: [] });
  });
});
