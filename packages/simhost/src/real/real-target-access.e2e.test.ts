/**
 * RealTargetAccess against a private, real tgtd on 127.0.0.1: real logins (CHAP, ACL, missing
 * target, unreachable portal) and real disks (loop device over a qemu-storage-daemon FUSE export),
 * with every byte written compared with tgtd's LUN backing file.
 */
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { accessSync, closeSync, constants, existsSync, openSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createCommandRunner } from '@berth/host';
import { fuseMountsUnder } from '@berth/qemu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LoginAuth, LoginRequest } from '../target-access.js';
import { RealLunDisk } from './real-lun-disk.js';
import { RealTargetAccess } from './real-target-access.js';
import type { RealTargetSession } from './real-target-session.js';
import { sweepStrays } from './sweep-strays.js';
import { hostFs, isMounted, loopBackingFile } from './test-real-state.js';
import { startTgtd, type TestTgtd } from './tgtd-harness.js';
import { tgtLunIdentity } from '../tgt-identity.js';
import { tgtVpdPg80, tgtVpdPg83 } from './tgt-identity.js';

const MiB = 1024 * 1024;
const IQN1 = 'iqn.2026-01.test.berth:rta-vol1';
const IQN2 = 'iqn.2026-01.test.berth:rta-vol2';
const IQN3 = 'iqn.2026-01.test.berth:rta-vol3';
const INITIATOR_A = 'iqn.2026-01.test.berth:initiator-a';
const INITIATOR_B = 'iqn.2026-01.test.berth:initiator-b';

function onPath(tool: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => {
    try {
      accessSync(path.join(dir, tool), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

const canRun =
  process.getuid?.() === 0 &&
  existsSync('/dev/fuse') &&
  ['tgtd', 'tgtadm', 'iscsi-ls', 'iscsi-inq', 'iscsi-readcapacity16', 'qemu-storage-daemon', 'losetup', 'dd'].every(onPath);
// As root (CI, and `npm run test:all`, which installs the tools) the suite must run: a skip there would hide it.
if (process.getuid?.() === 0 && !canRun) throw new Error('this suite needs tgtd, qemu-storage-daemon, libiscsi-bin and /dev/fuse: run `npm run test:all` (it installs them)');

const runner = createCommandRunner({ defaultTimeoutMs: 60_000 });

let workDir: string;
let tgtd: TestTgtd | undefined;
let access: RealTargetAccess;
let lun1File: string;
let lun2File: string;
const chap: LoginAuth = { method: 'CHAP', username: 'chapuser', password: `pw-${randomBytes(6).toString('hex')}` };
const mutual = { usernameIn: 'chaptarget', passwordIn: `tpw-${randomBytes(6).toString('hex')}` };

function timing(what: string, started: number): void {
  console.log(`[real-target-access timing] ${what}: ${(performance.now() - started).toFixed(1)} ms`);
}

function request(overrides: Partial<LoginRequest> = {}): LoginRequest {
  return { portal: tgtd?.portal ?? '', iqn: IQN1, initiator: INITIATOR_A, auth: chap, ...overrides };
}

async function loginOk(overrides: Partial<LoginRequest> = {}): Promise<RealTargetSession> {
  const { result, session } = await access.login(request(overrides));
  expect(result).toEqual({ ok: true, tpgt: 1 });
  return session as RealTargetSession;
}

async function readRange(file: string, offset: number, length: number): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, offset);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** Write `data` at `offset` through the page cache and fsync (any offset and length). */
async function writeBuffered(device: string, offset: number, data: Buffer): Promise<void> {
  const handle = await open(device, 'r+');
  try {
    await handle.write(data, 0, data.length, offset);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Write a pattern file with O_DIRECT (`dd oflag=direct`, which aligns its buffers), `bs`-sized blocks at block `seek`. */
async function writeDirect(device: string, patternFile: string, bs: number, seek: number, count: number): Promise<void> {
  await runner.run('dd', [`if=${patternFile}`, `of=${device}`, `bs=${bs}`, `seek=${seek}`, `count=${count}`, 'oflag=direct', 'conv=notrunc,fsync', 'status=none']);
}

async function patternFile(name: string, size: number): Promise<{ file: string; data: Buffer }> {
  const data = randomBytes(size);
  const file = path.join(workDir, name);
  await writeFile(file, data);
  return { file, data };
}

/** Where the bytes differ, for a readable failure. */
function firstDifference(a: Buffer, b: Buffer): string {
  if (a.equals(b)) return 'identical';
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return `first difference at byte ${i} of ${n} (lengths ${a.length}/${b.length})`;
  return `lengths differ: ${a.length}/${b.length}`;
}

async function expectBytesAt(file: string, offset: number, data: Buffer): Promise<void> {
  const actual = await readRange(file, offset, data.length);
  expect(firstDifference(actual, data), `${file} at ${offset}`).toBe('identical');
}

/** A `sleep` with `device` open on its stdin; `release` kills it and waits for its exit. */
function holdOpen(device: string): { release(): Promise<void> } {
  const fd = openSync(device, 'r');
  const child = spawn('sleep', ['1000'], { stdio: [fd, 'ignore', 'ignore'] });
  closeSync(fd);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    async release() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Whether `pid` is still a qemu-storage-daemon (a zombie, or no process, is gone). */
function processState(pid: number): 'qsd' | 'gone' {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return 'gone';
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0]?.endsWith('qemu-storage-daemon') === true ? 'qsd' : 'gone';
  } catch {
    return 'gone';
  }
}

async function expectDiskGone(disk: RealLunDisk, daemonPid: number | undefined): Promise<void> {
  const backing = await loopBackingFile(disk.backingPath);
  expect(backing === undefined || !backing.startsWith(disk.plumbing.fuseFile)).toBe(true);
  expect(await isMounted(disk.plumbing.fuseFile)).toBe(false);
  expect(existsSync(disk.plumbing.fuseFile)).toBe(false);
  if (daemonPid !== undefined) expect(existsSync(`/proc/${daemonPid}/cmdline`) && (await readFile(`/proc/${daemonPid}/cmdline`, 'utf8')) !== '').toBe(false);
}

describe.skipIf(!canRun)('RealTargetAccess against a real tgtd (e2e)', () => {
  beforeAll(async () => {
    workDir = await mkdtemp(path.join(tmpdir(), 'berth-rta-e2e-'));
    tgtd = await startTgtd(workDir);
    lun1File = path.join(workDir, 'lun1.img');
    lun2File = path.join(workDir, 'lun2.img');
    await writeFile(lun1File, '');
    await truncate(lun1File, 64 * MiB);
    await writeFile(lun2File, '');
    await truncate(lun2File, 32 * MiB);
    const t = tgtd;
    // tid 1: CHAP (incoming + outgoing for mutual CHAP), ACL naming initiator-a only.
    await t.admin('--op', 'new', '--mode', 'target', '--tid', '1', '--targetname', IQN1);
    await t.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '--backing-store', lun1File);
    await t.admin('--op', 'new', '--mode', 'account', '--user', chap.username, '--password', chap.password);
    await t.admin('--op', 'bind', '--mode', 'account', '--tid', '1', '--user', chap.username);
    await t.admin('--op', 'new', '--mode', 'account', '--user', mutual.usernameIn, '--password', mutual.passwordIn);
    await t.admin('--op', 'bind', '--mode', 'account', '--tid', '1', '--user', mutual.usernameIn, '--outgoing');
    await t.admin('--op', 'bind', '--mode', 'target', '--tid', '1', '--initiator-name', INITIATOR_A);
    // tid 2: no CHAP, open to all initiators (used by the grow test).
    await t.admin('--op', 'new', '--mode', 'target', '--tid', '2', '--targetname', IQN2);
    await t.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '2', '--lun', '1', '--backing-store', lun2File);
    await t.admin('--op', 'bind', '--mode', 'target', '--tid', '2', '--initiator-address', 'ALL');
    access = new RealTargetAccess({ workDir });
  }, 60_000);

  afterAll(async () => {
    try {
      await access?.close();
    } finally {
      try {
        if (workDir) await sweepStrays(workDir);
      } finally {
        try {
          await tgtd?.stop();
        } finally {
          if (workDir) await rm(workDir, { recursive: true, force: true });
        }
      }
    }
  }, 60_000);

  describe('login', () => {
    it('logs in with the right CHAP secret, and REPORT LUNS lists LUN 0 and 1', async () => {
      const started = performance.now();
      const session = await loginOk();
      timing('login (iscsi-inq of LUN 0)', started);
      expect(await session.reportLuns()).toEqual([0, 1]);
      await session.logout();
    });

    it("lists a target's LUNs while another target with other CHAP credentials admits the same initiator (two volumes attached at once)", async () => {
      // iscsi-ls -s logs in to every listed target with this session's credentials and stops at the
      // first that refuses them (tgtd lists the newest first: tid 3's, before tid 1): the LUNs are
      // then asked one by one.
      const t = tgtd!;
      const other: LoginAuth = { method: 'CHAP', username: 'chapuser3', password: `pw3-${randomBytes(6).toString('hex')}` };
      const lun3File = path.join(workDir, 'lun3.img');
      await writeFile(lun3File, '');
      await truncate(lun3File, 16 * MiB);
      await t.admin('--op', 'new', '--mode', 'target', '--tid', '3', '--targetname', IQN3);
      try {
        await t.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '3', '--lun', '1', '--backing-store', lun3File);
        await t.admin('--op', 'new', '--mode', 'account', '--user', other.username, '--password', other.password);
        await t.admin('--op', 'bind', '--mode', 'account', '--tid', '3', '--user', other.username);
        await t.admin('--op', 'bind', '--mode', 'target', '--tid', '3', '--initiator-name', INITIATOR_A);
        expect(await (await loginOk({ iqn: IQN3, auth: other })).logout()).toBeUndefined();
        const session = await loginOk();
        try {
          expect(await session.reportLuns()).toEqual([0, 1]);
        } finally {
          await session.logout();
        }
      } finally {
        await t.admin('--op', 'delete', '--mode', 'target', '--tid', '3', '--force').catch(() => undefined);
        await t.admin('--op', 'delete', '--mode', 'account', '--user', other.username).catch(() => undefined);
      }
    });

    it('logs in with mutual CHAP, and fails with 24 when the target secret is wrong', async () => {
      await (await loginOk({ auth: { ...chap, ...mutual } })).logout();
      const { result, session } = await access.login(request({ auth: { ...chap, usernameIn: mutual.usernameIn, passwordIn: 'not-the-target-secret' } }));
      expect(session).toBeUndefined();
      expect(result).toMatchObject({ ok: false, exitCode: 24 });
    });

    it('fails with 24 on a wrong CHAP password, and on no CHAP at all, without echoing the secret', async () => {
      const wrong = await access.login(request({ auth: { ...chap, password: 'wrong-password-123' } }));
      expect(wrong.result).toMatchObject({ ok: false, exitCode: 24 });
      expect(wrong.session).toBeUndefined();
      expect(JSON.stringify(wrong.result)).not.toContain('wrong-password-123');
      const none = await access.login(request({ auth: undefined }));
      expect(none.result).toMatchObject({ ok: false, exitCode: 24 });
    });

    it('fails with 19 for an unknown target', async () => {
      const { result } = await access.login(request({ iqn: 'iqn.2026-01.test.berth:no-such-target' }));
      expect(result).toMatchObject({ ok: false, exitCode: 19 });
    });

    it('fails with 19 for an initiator the ACL does not name', async () => {
      const { result } = await access.login(request({ initiator: INITIATOR_B }));
      expect(result).toMatchObject({ ok: false, exitCode: 19 });
    });

    it('fails with 8, quickly, when nothing listens at the portal', async () => {
      const started = performance.now();
      const { result } = await access.login(request({ portal: `127.0.0.9:${tgtd?.port}` }));
      expect(result).toMatchObject({ ok: false, exitCode: 8 });
      expect(performance.now() - started).toBeLessThan(2000);
    });

    it('refuses input that would leave the URL (validation), and honours an aborted signal', async () => {
      await expect(access.login(request({ iqn: 'iqn.x/../y' }))).rejects.toMatchObject({ code: 'VALIDATION' });
      await expect(access.login(request({ signal: AbortSignal.abort() }))).rejects.toMatchObject({ code: 'CANCELLED' });
    });
  });

  describe('discover', () => {
    it('lists the targets whose ACL admits the initiator, with tpgt 1 and the asked portal', async () => {
      const a = await access.discover(tgtd?.portal ?? '', INITIATOR_A);
      expect(a.ok && a.targets.sort((x, y) => x.iqn.localeCompare(y.iqn))).toEqual([
        { portal: tgtd?.portal, tpgt: 1, iqn: IQN1 },
        { portal: tgtd?.portal, tpgt: 1, iqn: IQN2 },
      ]);
      const b = await access.discover(tgtd?.portal ?? '', INITIATOR_B);
      expect(b.ok && b.targets).toEqual([{ portal: tgtd?.portal, tpgt: 1, iqn: IQN2 }]);
      const unreachable = await access.discover(`127.0.0.9:${tgtd?.port}`, INITIATOR_A);
      expect(unreachable).toMatchObject({ ok: false, exitCode: 11 });
    });
  });

  describe('disks', () => {
    it('has no disk for LUN 0 (the controller) or a missing LUN, but the controller answers INQUIRY', async () => {
      const session = await loginOk();
      try {
        expect(await session.openLun(0)).toBeUndefined();
        expect(await session.openLun(7)).toBeUndefined();
        expect(session.daemonPid).toBeUndefined();
        const controller = await session.inquiry(0);
        expect(controller).toMatchObject({ type: 0x0c, vendor: 'IET     ', model: 'Controller      ', rev: '0001', wwid: 'naa.60000000000000000e00000000010000' });
        // The pure simulation's identity of tgtd's controller is what the real tgtd answers.
        const model = tgtLunIdentity(1, 0);
        expect(controller?.vpdPg83?.equals(model.vpdPg83)).toBe(true);
        expect(controller?.vpdPg80?.equals(model.vpdPg80)).toBe(true);
        expect(await session.inquiry(7)).toBeUndefined();
      } finally {
        await session.logout();
      }
    });

    it('opens LUN 1 as a real loop device with tgtd identity, and every byte written lands in the LUN file', async () => {
      const session = await loginOk();
      let disk: RealLunDisk | undefined;
      let daemonPid: number | undefined;
      try {
        const started = performance.now();
        disk = (await session.openLun(1)) as RealLunDisk;
        timing('openLun (identity + qemu-storage-daemon start + blockdev-add + FUSE export + losetup)', started);
        daemonPid = session.daemonPid;
        expect(disk).toBeInstanceOf(RealLunDisk);
        expect(disk.backingPath).toMatch(/^\/dev\/loop\d+$/);
        expect(disk.isBlockDevice).toBe(true);
        expect(statSync(disk.backingPath).isBlockDevice()).toBe(true);
        expect(disk.sizeBytes).toBe(64 * MiB);
        expect({ vendor: disk.vendor, model: disk.model, rev: disk.rev }).toEqual({ vendor: 'IET     ', model: 'VIRTUAL-DISK    ', rev: '0001' });
        expect(disk.wwid).toBe('naa.60000000000000000e00000000010001');
        expect(disk.vpdPg83.equals(tgtVpdPg83('IET     00010001', 1, 1))).toBe(true);
        expect(disk.vpdPg80.equals(tgtVpdPg80('beaf11'))).toBe(true);
        // ... and it is the identity the pure simulation gives the same LU.
        const model = tgtLunIdentity(1, 1);
        expect({ vendor: disk.vendor, model: disk.model, rev: disk.rev, wwid: disk.wwid }).toEqual({ vendor: model.vendor, model: model.model, rev: model.rev, wwid: model.wwid });
        expect(disk.vpdPg83.equals(model.vpdPg83) && disk.vpdPg80.equals(model.vpdPg80)).toBe(true);
        // The FUSE export is mounted, and the loop device does NOT use direct I/O (qemu 7.2 bug).
        expect(await isMounted(disk.plumbing.fuseFile)).toBe(true);
        const sysLoop = `/sys/block/${path.basename(disk.backingPath)}/loop`;
        expect((await readFile(`${sysLoop}/dio`, 'utf8')).trim()).toBe('0');
        expect((await readFile(`${sysLoop}/backing_file`, 'utf8')).trim()).toBe(disk.plumbing.fuseFile);

        const dev = disk.backingPath;
        const p4k = await patternFile('p4k.bin', 4096);
        const p4m = await patternFile('p4m.bin', 4 * MiB);
        const podd = await patternFile('podd.bin', 7 * 512);
        // O_DIRECT: 4 KiB at 0, 4 x 1 MiB at 8 MiB (the case that corrupts on a dio loop), 3.5 KiB at a 512-aligned odd offset.
        await writeDirect(dev, p4k.file, 4096, 0, 1);
        await writeDirect(dev, p4m.file, MiB, 8, 4);
        await writeDirect(dev, podd.file, 512, (20 * MiB) / 512 + 3, 7);
        // Buffered: unaligned offset and length, 1 MiB, and the last 4 KiB of the disk.
        const unaligned = randomBytes(12_345);
        const oneMiB = randomBytes(MiB);
        const tail = randomBytes(4096);
        await writeBuffered(dev, 30 * MiB + 777, unaligned);
        await writeBuffered(dev, 40 * MiB, oneMiB);
        await writeBuffered(dev, 64 * MiB - 4096, tail);

        const expected: Array<[number, Buffer]> = [
          [0, p4k.data],
          [8 * MiB, p4m.data],
          [20 * MiB + 3 * 512, podd.data],
          [30 * MiB + 777, unaligned],
          [40 * MiB, oneMiB],
          [64 * MiB - 4096, tail],
        ];
        for (const [offset, data] of expected) {
          await expectBytesAt(lun1File, offset, data); // tgtd's backing file
          await expectBytesAt(dev, offset, data); // and read back through the device
        }
      } finally {
        const started = performance.now();
        await disk?.close();
        timing('disk.close (losetup -d, block-export-del, blockdev-del, qemu-storage-daemon quit)', started);
        await session.logout();
      }
      await expectDiskGone(disk, daemonPid);
      // close() is idempotent.
      await disk.close();
    });

    it('keeps 4 parallel writers (O_DIRECT and buffered) apart', async () => {
      const session = await loginOk();
      let disk: RealLunDisk | undefined;
      try {
        disk = (await session.openLun(1)) as RealLunDisk;
        const dev = disk.backingPath;
        const direct = await patternFile('par-direct.bin', 4 * MiB);
        const buffered = Array.from({ length: 4 }, () => randomBytes(2 * MiB));
        // Each dd writes its own 4 MiB region at 16 + 4i MiB, from the same pattern file region.
        await Promise.all([0, 1, 2, 3].map((i) => runner.run('dd', [`if=${direct.file}`, `of=${dev}`, 'bs=1M', `skip=${i}`, `seek=${16 + i}`, 'count=1', 'oflag=direct', 'conv=notrunc,fsync', 'status=none'])));
        await Promise.all(buffered.map((data, i) => writeBuffered(dev, 48 * MiB + i * 2 * MiB, data)));
        await expectBytesAt(lun1File, 16 * MiB, direct.data);
        for (const [i, data] of buffered.entries()) await expectBytesAt(lun1File, 48 * MiB + i * 2 * MiB, data);
      } finally {
        await disk?.close();
        await session.logout();
      }
    });

    it('shows a LUN that grew on the target after refresh(), and writes past the old end land in the file', async () => {
      const session = await loginOk({ iqn: IQN2, auth: undefined, initiator: INITIATOR_B });
      let disk: RealLunDisk | undefined;
      try {
        disk = (await session.openLun(1)) as RealLunDisk;
        expect(disk.sizeBytes).toBe(32 * MiB);
        expect(disk.wwid).toBe('naa.60000000000000000e00000000020001');
        // Grow the backing file, and re-create the LUN so tgtd re-reads its size (the session stays).
        await truncate(lun2File, 48 * MiB);
        await tgtd?.admin('--op', 'delete', '--mode', 'logicalunit', '--tid', '2', '--lun', '1');
        await tgtd?.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '2', '--lun', '1', '--backing-store', lun2File);
        const started = performance.now();
        await disk.refresh();
        timing('disk.refresh (READ CAPACITY + block_resize + losetup --set-capacity)', started);
        expect(disk.sizeBytes).toBe(48 * MiB);
        expect(Number((await readFile(`/sys/block/${path.basename(disk.backingPath)}/size`, 'utf8')).trim()) * 512).toBe(48 * MiB);
        const data = randomBytes(MiB);
        await writeBuffered(disk.backingPath, 40 * MiB, data);
        await expectBytesAt(lun2File, 40 * MiB, data);
        // Nothing changed: refresh keeps the size.
        await disk.refresh();
        expect(disk.sizeBytes).toBe(48 * MiB);
      } finally {
        await disk?.close();
        await session.logout();
      }
    });

    it('closes every disk and the daemon on logout, and refuses use afterwards', async () => {
      const session = await loginOk();
      const first = (await session.openLun(1)) as RealLunDisk;
      const second = (await session.openLun(1)) as RealLunDisk;
      expect(second.backingPath).not.toBe(first.backingPath);
      const daemonPid = session.daemonPid;
      expect(daemonPid).toBeGreaterThan(0);
      await session.logout();
      await expectDiskGone(first, daemonPid);
      await expectDiskGone(second, daemonPid);
      await expect(session.openLun(1)).rejects.toMatchObject({ code: 'INVALID_STATE' });
      await session.logout();
    });

    it('a disk whose loop device is held open is kept, not forgotten: logout fails at once, and the disk is released once the holder lets go', async () => {
      const session = await loginOk();
      const disk = (await session.openLun(1)) as RealLunDisk;
      const daemonPid = session.daemonPid;
      const holder = holdOpen(disk.backingPath);
      try {
        const started = performance.now();
        await expect(session.logout()).rejects.toMatchObject({ code: 'CONFLICT', details: { reason: 'held-open', device: disk.backingPath } });
        // Refused after detachFuseLoop's holder grace, not a wait for a detach that cannot come.
        expect(performance.now() - started).toBeLessThan(5_000);
        expect(access.heldLoopDevices).toEqual([disk.backingPath]);
        // Still bound to its live export: the holder's reads still reach the target.
        expect(await loopBackingFile(disk.backingPath)).toBe(disk.plumbing.fuseFile);
        expect(await isMounted(disk.plumbing.fuseFile)).toBe(true);
      } finally {
        await holder.release();
      }
      // Tried again on its own (every 2 s): released, its daemon stopped.
      const deadline = Date.now() + 15_000;
      while (access.heldLoopDevices.length > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
      expect(access.heldLoopDevices).toEqual([]);
      await expectDiskGone(disk, daemonPid);
    }, 30_000);

    it('a loop device still held when the access closes is detached the kernel\'s way and reported; it goes at the holder\'s last close', async () => {
      const session = await loginOk();
      const disk = (await session.openLun(1)) as RealLunDisk;
      const holder = holdOpen(disk.backingPath);
      try {
        await expect(access.close()).rejects.toMatchObject({ code: 'CONFLICT', details: { reason: 'held-open', devices: [disk.backingPath] } });
        expect(readFileSync(`/sys/block/${path.basename(disk.backingPath)}/loop/autoclear`, 'utf8').trim()).toBe('1');
      } finally {
        await holder.release();
        access = new RealTargetAccess({ workDir });
      }
      const deadline = Date.now() + 10_000;
      while ((await loopBackingFile(disk.backingPath)) === disk.plumbing.fuseFile && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(await loopBackingFile(disk.backingPath)).not.toBe(disk.plumbing.fuseFile);
      expect(await sweepStrays(workDir)).toEqual({ loopDevices: [], daemonPids: [], mounts: [], dirs: [] });
    }, 30_000);

    it('a daemon that stops answering QMP while a disk is released is killed at the deadline: after close no process, mount, socket or directory of it is left', async () => {
      // Its own access, with a short QMP deadline (the release's `block-export-del` waits that long).
      const quick = new RealTargetAccess({ workDir, daemonTimeoutMs: 1_500 });
      let pid: number | undefined;
      let daemonDir: string | undefined;
      try {
        const { result, session } = await quick.login(request());
        expect(result).toEqual({ ok: true, tpgt: 1 });
        const real = session as RealTargetSession;
        const disk = (await real.openLun(1)) as RealLunDisk;
        pid = real.daemonPid;
        expect(pid).toBeGreaterThan(0);
        daemonDir = path.dirname(disk.plumbing.fuseFile);
        // The monitor (and FUSE) stop answering, as a main loop hung on a dead tgtd does.
        process.kill(pid as number, 'SIGSTOP');
        const started = performance.now();
        await quick.close();
        // One QMP deadline, the kill and its wait; not a wait per disk, nor for ever.
        expect(performance.now() - started).toBeLessThan(10_000);
        expect(processState(pid as number)).toBe('gone');
        expect(await isMounted(disk.plumbing.fuseFile)).toBe(false);
        expect(existsSync(daemonDir)).toBe(false);
        expect(await loopBackingFile(disk.backingPath)).not.toBe(disk.plumbing.fuseFile);
        expect(await sweepStrays(workDir)).toEqual({ loopDevices: [], daemonPids: [], mounts: [], dirs: [] });
      } finally {
        // Whatever failed above: the stopped daemon must not outlive the test.
        if (pid !== undefined && processState(pid) === 'qsd') process.kill(pid, 'SIGKILL');
        await quick.close().catch(() => undefined);
      }
    }, 30_000);

    it('leaves nothing behind: no daemon, FUSE mount or loop device under the work directory', async () => {
      const session = await loginOk();
      await session.openLun(1);
      await access.close();
      expect(await fuseMountsUnder(hostFs, workDir)).toEqual([]);
      expect(await sweepStrays(workDir)).toEqual({ loopDevices: [], daemonPids: [], mounts: [], dirs: [] });
      access = new RealTargetAccess({ workDir });
    });
  });
});
