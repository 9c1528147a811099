import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, silentLogger } from '@berth/core';
import { acquireFileLock, commandsOutlive, createHostServices, processStartTicks, type CommandResult, type CommandRunner, type HostFs, type ReleaseLock } from '@berth/host';
import { killedWithCommand } from '@berth/host/testing';
import { iscsiTransportKit } from './transport-kit.js';
import type { LunLifecycle } from './lun-lifecycle.js';
import type { LunTarget } from './lun-device.js';
import { toPortal } from './target.js';
import { addLun, buildSessions, removeLun } from './test-kernel-tree.js';
import { FailureList } from './failure-list.js';
import { TARGET_FILES_DIR, targetFileStem } from './target-files.js';

const VOL1 = 'iqn.2026-01.test.berth:vol1';
const WWID_1 = 'naa.60000000000000000e00000000010001';
const WWID_2 = 'naa.60000000000000000e00000000010002';
const TARGET: LunTarget = { iqn: VOL1, portal: toPortal('127.0.0.1:3260'), portalText: '127.0.0.1:3260', lun: 1, kernelLun: 1 };

let root: string;
let lifecycle: LunLifecycle;
/** Short timeouts, one scan, no login retries: the tests' transport options. */
const KIT_OPTIONS = {
  transport: 'iscsi',
  iface: 'default',
  startup: 'manual',
  deviceTimeoutMs: 1_000,
  scanAttempts: 1,
  commandTimeoutMs: 1_000,
  targetLockTimeoutMs: 10_000,
  loginRetries: 0,
} as const;

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-lifecycle-'));
  const host = createHostServices({ root });
  lifecycle = iscsiTransportKit(host, silentLogger, KIT_OPTIONS).lifecycle;
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** One session to TARGET with `luns`. */
async function session(luns: Array<{ lun: number; device: string; wwid: string }>): Promise<void> {
  await buildSessions(root, [{ host: 2, sid: 1, iqn: VOL1, address: '127.0.0.1', port: 3260, luns }]);
}

/** A runner that runs nothing (no iscsiadm may touch this machine's /etc/iscsi): every command succeeds, argv recorded. */
function recordingRunner(): { runner: CommandRunner; runs: string[][] } {
  const runs: string[][] = [];
  const runner: CommandRunner = {
    async run(file, args): Promise<CommandResult> {
      runs.push([file, ...args]);
      return { command: [file, ...args].join(' '), exitCode: 0, stdout: '', stderr: '', durationMs: 0, timedOut: false, aborted: false };
    },
  };
  return { runner, runs };
}

/**
 * A lifecycle on the test root with `runner`, through `fs` (default: the root's own): each one
 * stands for a berth process of its own (its own queues and counts).
 */
function lifecycleOn(runner: CommandRunner, more: { fs?: HostFs; targetLockTimeoutMs?: number } = {}): LunLifecycle {
  const host = createHostServices({ root });
  const options = { ...KIT_OPTIONS, ...(more.targetLockTimeoutMs === undefined ? {} : { targetLockTimeoutMs: more.targetLockTimeoutMs }) };
  return iscsiTransportKit({ ...host, runner, ...(more.fs === undefined ? {} : { fs: more.fs }) }, silentLogger, options).lifecycle;
}

/** The decision of a disconnect of TARGET's LUN 1 whose disk, sdb, is gone (or going). */
function closeLun1(lifecycle: LunLifecycle): Promise<'closed' | 'kept' | 'already-closed'> {
  return lifecycle.closeSessionIfUnused(TARGET, ['sdb'], { signal: undefined, failures: new FailureList(false), mark: lifecycle.closeMark(TARGET) });
}

/** A promise the test resolves when something happened. */
function latch(): { reached: Promise<void>; open: () => void } {
  let open: () => void = () => undefined;
  const reached = new Promise<void>((resolve) => (open = resolve));
  return { reached, open };
}

/**
 * A fs of the test root (with the /dev a connect's wait watches) that tells when a scan is
 * written: a connect is then past its session setup, waiting for its disk.
 */
async function scanWatchingFs(): Promise<{ fs: HostFs; scanned: Promise<void> }> {
  await mkdir(path.join(root, 'dev'), { recursive: true });
  const host = createHostServices({ root });
  const scan = latch();
  const fs: HostFs = {
    ...host.fs,
    async writeFile(hostPath, data, options) {
      await host.fs.writeFile(hostPath, data, options);
      if (hostPath.endsWith('/scan')) scan.open();
    },
  };
  return { fs, scanned: scan.reached };
}

/** The real directory of TARGET's in-flight markers, and what is in it. */
const markerDir = (): string => path.join(root, TARGET_FILES_DIR, `${targetFileStem(TARGET)}.inflight`);
const markers = (): Promise<string[]> => readdir(markerDir()).catch(() => []);

/** TARGET's lock file as another berth process holds it. */
async function holdTargetLock(): Promise<ReleaseLock> {
  const dir = path.join(root, TARGET_FILES_DIR);
  await mkdir(dir, { recursive: true });
  return acquireFileLock(path.join(dir, `${targetFileStem(TARGET)}.lock`), { timeoutMs: 1_000, what: 'the test' });
}

/** The kernel finishes LUN `lun`'s scan: its disk in sysfs and its /dev node. */
async function diskAppears(lun: number, device: string, wwid: string): Promise<void> {
  await addLun(root, { host: 2, sid: 1 }, { lun, device, wwid });
  await mkdir(path.join(root, 'dev'), { recursive: true });
  await writeFile(path.join(root, 'dev', device), '');
}

/** The `--logout` runs among `runs`. */
function logouts(runs: string[][]): string[][] {
  return runs.filter((r) => r.includes('--logout'));
}

describe('the logout decision (sessionStillNeeded)', () => {
  it('lets a disk of the own LUN that the caller did not list go with the session only when lateOwn confirms it', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const asked: string[] = [];
    const yes = async (d: string): Promise<boolean> => {
      asked.push(d);
      return true;
    };
    expect(await lifecycle.sessionStillNeeded(TARGET, [], [], yes)).toBe(false);
    expect(asked).toEqual(['sdb']);
    expect(await lifecycle.sessionStillNeeded(TARGET, [], [], async () => false)).toBe(true);
    // No predicate: as before, an unlisted disk keeps the session.
    expect(await lifecycle.sessionStillNeeded(TARGET, [])).toBe(true);
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sdb'])).toBe(false);
  });

  it('keeps the session for a disk of another LUN whatever lateOwn says, and for a disk in keep', async () => {
    await session([
      { lun: 1, device: 'sdb', wwid: WWID_1 },
      { lun: 2, device: 'sdc', wwid: WWID_2 },
    ]);
    const asked: string[] = [];
    const yes = async (d: string): Promise<boolean> => {
      asked.push(d);
      return true;
    };
    expect(await lifecycle.sessionStillNeeded(TARGET, [], [], yes)).toBe(true);
    expect(asked).not.toContain('sdc');
    // A name the caller lists is its own only at its LUN (below).
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sdc'], [], yes)).toBe(true);
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sdb'], [], yes)).toBe(true);
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sdb', 'sdc'], ['sdb'], yes)).toBe(true);
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sdc'], ['sdb'], yes)).toBe(true);
  });

  it("keeps the session for another LUN's disk that took the caller's old name", async () => {
    // LUN 1's disk, sda, was deleted; the sd driver gave the lowest free name to LUN 2's disk,
    // which a connect racing this disconnect had just scanned in (a CI run met it).
    await session([{ lun: 2, device: 'sda', wwid: WWID_2 }]);
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sda'])).toBe(true);
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sda'], [], async () => true)).toBe(true);
    const { runner, runs } = recordingRunner();
    const decider = lifecycleOn(runner);
    expect(await decider.closeSessionIfUnused(TARGET, ['sda'], { signal: undefined, failures: new FailureList(false), mark: decider.closeMark(TARGET) })).toBe('kept');
    expect(logouts(runs)).toEqual([]);
  });

  it('needs no session that is not there', async () => {
    expect(await lifecycle.sessionStillNeeded(TARGET, [], [], async () => false)).toBe(false);
  });
});

describe("a disk's removal (removeDisk) when the kernel gives its name to another disk", () => {
  it('counts the disk gone once its SCSI device is, though a disk of another LUN took its name meanwhile', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const host = createHostServices({ root });
    const deletes: string[] = [];
    // The kernel acts on the write to `delete`; a connect running beside it gets LUN 2 as sdb at once.
    const fs: HostFs = {
      ...host.fs,
      async writeFile(hostPath, data, options) {
        if (!hostPath.endsWith('/delete')) return host.fs.writeFile(hostPath, data, options);
        deletes.push(hostPath);
        await rm(path.join(root, 'dev/sdb'), { force: true });
        await removeLun(root, { host: 2, sid: 1 }, { lun: 1, device: 'sdb', wwid: WWID_1 });
        await diskAppears(2, 'sdb', WWID_2);
      },
    };
    await mkdir(path.join(root, 'dev'), { recursive: true });
    await writeFile(path.join(root, 'dev/sdb'), '');
    const remover = iscsiTransportKit({ ...host, fs }, silentLogger, KIT_OPTIONS).lifecycle;
    const failures = new FailureList(true);
    const started = Date.now();
    expect(await remover.removeDisk('sdb', { signal: undefined, failures, flush: false })).toBe('deleted');
    expect(failures.size, 'no timeout waiting for a name another disk holds').toBe(0);
    expect(Date.now() - started).toBeLessThan(KIT_OPTIONS.deviceTimeoutMs);
    expect(deletes).toEqual([expect.stringMatching(/2:0:0:1\/delete$/)]);
    // LUN 2's disk is untouched.
    expect(await lifecycle.sessionStillNeeded({ ...TARGET, lun: 2, kernelLun: 2 }, [])).toBe(true);
  });
});

describe('the logout decisions of many LUNs queued together (closeSessionIfUnused)', () => {
  it('decides the ones waiting behind a kept session from one reading of sysfs under one taking of the lock file, and each alike', async () => {
    await session([
      { lun: 1, device: 'sdb', wwid: WWID_1 },
      { lun: 2, device: 'sdc', wwid: WWID_2 },
      { lun: 3, device: 'sdd', wwid: 'naa.60000000000000000e00000000010003' },
    ]);
    const host = createHostServices({ root });
    let readdirs = 0;
    let locks = 0;
    // The lock file's directory is made right before each taking of it.
    const mkdir: HostFs['mkdir'] = async (hostPath, options) => {
      if (hostPath === TARGET_FILES_DIR) locks += 1;
      await host.fs.mkdir(hostPath, options);
    };
    const fs = new Proxy(host.fs, {
      get(target, property, receiver) {
        if (property === 'readdir') readdirs += 1;
        if (property === 'mkdir') return mkdir;
        return Reflect.get(target, property, receiver) as unknown;
      },
    });
    const counted = iscsiTransportKit({ ...host, fs }, silentLogger, KIT_OPTIONS).lifecycle;
    const decide = (own: string, lun: number) =>
      counted.closeSessionIfUnused({ ...TARGET, lun, kernelLun: lun }, [own], { signal: undefined, failures: new FailureList(false), mark: counted.closeMark(TARGET) });
    // Each disconnect still sees the other LUNs' disks: every one keeps the session, as it would alone.
    const alone = await decide('sdb', 1);
    const readsAlone = readdirs;
    readdirs = 0;
    expect(await Promise.all([decide('sdb', 1), decide('sdc', 2), decide('sdd', 3)])).toEqual(['kept', 'kept', 'kept']);
    expect(alone).toBe('kept');
    expect(readdirs).toBe(readsAlone);
    expect(locks).toBe(2);
  });
});

describe('queued logout decisions of other LUNs', () => {
  it("settles a queued decision by its own LUN: its disk left on the session (a forced detach whose delete failed) is its own, so it logs out", async () => {
    await session([{ lun: 2, device: 'sdc', wwid: WWID_2 }]);
    const { runner, runs } = recordingRunner();
    const decider = lifecycleOn(runner);
    const decide = (own: string, lun: number) =>
      decider.closeSessionIfUnused({ ...TARGET, lun, kernelLun: lun }, [own], { signal: undefined, failures: new FailureList(true), mark: decider.closeMark(TARGET) });
    // LUN 1's decision holds the lock and sees LUN 2's disk: kept. LUN 2's, queued behind it, is
    // not settled from that reading as "another LUN's disk": sdc is its own.
    expect(await Promise.all([decide('sdb', 1), decide('sdc', 2)])).toEqual(['kept', 'closed']);
    expect(logouts(runs)).toHaveLength(1);
  });
});

describe('connects in flight and the logout decision', () => {
  it('counts a connect in flight as it was before sysfs was read: one kept during the reading keeps the session', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const watching = await scanWatchingFs();
    // The decision's listing of the session's LUNs is held (already read) until `go`: meanwhile
    // the connect of LUN 2 finds its disk and is kept.
    const listing = latch();
    const go = latch();
    let armed = false;
    const fs: HostFs = {
      ...watching.fs,
      async readdir(hostPath) {
        const names = await watching.fs.readdir(hostPath);
        if (armed && hostPath.endsWith('/target2:0:0')) {
          armed = false;
          listing.open();
          await go.reached;
        }
        return names;
      },
    };
    const { runner, runs } = recordingRunner();
    const one = lifecycleOn(runner, { fs });
    const lun2 = { ...TARGET, lun: 2, kernelLun: 2 };
    const connecting = one.connect(lun2, { signal: AbortSignal.timeout(10_000) });
    // Its scan is written once it is counted in flight.
    await watching.scanned;
    armed = true;
    const deciding = closeLun1(one);
    await listing.reached;
    await diskAppears(2, 'sdc', WWID_2);
    const connected = await connecting;
    await one.keep(lun2, connected.progress);
    go.open();
    expect(await deciding).toBe('kept');
    expect(logouts(runs)).toEqual([]);
  });
});

describe('the target lock file (other berth processes on the host)', () => {
  it('refuses a target-files directory that is a link or that others may write, touching nothing in it (PERMISSION_DENIED)', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const elsewhere = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-elsewhere-'));
    try {
      // Another user's directory, made where berth's would be: a link to a directory of theirs.
      await writeFile(path.join(elsewhere, 'precious'), 'x');
      const dir = path.join(root, TARGET_FILES_DIR);
      await mkdir(path.dirname(dir), { recursive: true });
      await symlink(elsewhere, dir);
      const { runner, runs } = recordingRunner();
      const linked = await closeLun1(lifecycleOn(runner)).catch((e: unknown) => e);
      expect(BerthError.is(linked) && linked.code).toBe('PERMISSION_DENIED');
      expect(logouts(runs)).toEqual([]);
      expect(await readdir(elsewhere)).toEqual(['precious']);
      // A real directory others may write: refused the same way.
      await rm(dir);
      await mkdir(dir);
      await chmod(dir, 0o777);
      const open = await closeLun1(lifecycleOn(runner)).catch((e: unknown) => e);
      expect(BerthError.is(open) && open.code).toBe('PERMISSION_DENIED');
      expect(logouts(runs)).toEqual([]);
    } finally {
      await rm(elsewhere, { recursive: true, force: true });
    }
  });

  it('makes a logout decision wait while another process holds it, and decide from what that process left', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const host = createHostServices({ root });
    const locking = latch();
    const fs: HostFs = {
      ...host.fs,
      async mkdir(hostPath, options) {
        await host.fs.mkdir(hostPath, options);
        if (hostPath === TARGET_FILES_DIR) locking.open();
      },
    };
    const { runner, runs } = recordingRunner();
    const release = await holdTargetLock();
    const deciding = closeLun1(lifecycleOn(runner, { fs }));
    await Promise.race([
      locking.reached,
      deciding.then((outcome) => {
        throw new Error(`decided (${outcome}) without the target's lock file`);
      }),
    ]);
    // The other process connected LUN 2 meanwhile: its disk is there when it lets go.
    await diskAppears(2, 'sdc', WWID_2);
    await release();
    expect(await deciding).toBe('kept');
    expect(logouts(runs)).toEqual([]);
  });

  it('gives a TIMEOUT naming the target and the holder when it stays held past targetLockTimeoutMs', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const { runner, runs } = recordingRunner();
    const release = await holdTargetLock();
    try {
      const error = await closeLun1(lifecycleOn(runner, { targetLockTimeoutMs: 200 })).catch((e: unknown) => e);
      expect(BerthError.is(error)).toBe(true);
      const timeout = error as BerthError;
      expect(timeout.code).toBe('TIMEOUT');
      expect(timeout.message).toContain(VOL1);
      expect(timeout.message).toContain('127.0.0.1:3260');
      expect(timeout.message).toContain(`pid ${process.pid}`);
      expect(timeout.hint).toContain('another berth process on this host is working on that target');
      expect(timeout.details).toMatchObject({ iqn: VOL1, portal: '127.0.0.1:3260', holderPid: process.pid });
    } finally {
      await release();
    }
    expect(logouts(runs)).toEqual([]);
  });

  it('is gone once the decision is made (a logout with nothing else on the session still happens)', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const { runner, runs } = recordingRunner();
    expect(await closeLun1(lifecycleOn(runner))).toBe('closed');
    expect(logouts(runs)).toHaveLength(1);
    expect(await readdir(path.join(root, TARGET_FILES_DIR))).toEqual([]);
  });
});

describe('connects in flight in another berth process (markers)', () => {
  const LUN2 = { ...TARGET, lun: 2, kernelLun: 2 };

  /**
   * A lifecycle of its own (a berth process) connecting LUN 2, which reuses the session (no login,
   * no record of its own), past its scan and waiting for the disk; `fail` cancels it and resolves
   * once its undo is done.
   */
  async function reusingConnect(): Promise<{ runs: string[][]; fail: () => Promise<void> }> {
    const { fs, scanned } = await scanWatchingFs();
    const { runner, runs } = recordingRunner();
    const cancel = new AbortController();
    const connecting = lifecycleOn(runner, { fs }).connect(LUN2, { signal: cancel.signal }).catch((error: unknown) => error);
    await scanned;
    return {
      runs,
      async fail() {
        cancel.abort(new Error('cancelled by the test'));
        expect(await connecting).toMatchObject({ message: 'cancelled by the test' });
      },
    };
  }

  it('keeps the session for a connect of another process between its session and its disk, and logs out once that disk is kept and gone', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const { fs, scanned } = await scanWatchingFs();
    const a = lifecycleOn(recordingRunner().runner, { fs });
    const { runner, runs } = recordingRunner();
    const b = lifecycleOn(runner);
    const connecting = a.connect(LUN2, { signal: AbortSignal.timeout(10_000) });
    await scanned;
    // B's disk of LUN 1 is gone; A's of LUN 2 is not there yet: only A's marker says the session is needed.
    expect(await closeLun1(b)).toBe('kept');
    expect(logouts(runs)).toEqual([]);
    const [marker] = await markers();
    expect(JSON.parse(await readFile(path.join(markerDir(), marker ?? ''), 'utf8'))).toEqual({ pid: process.pid, startTicks: await processStartTicks(process.pid) });
    await diskAppears(2, 'sdc', WWID_2);
    const connected = await connecting;
    expect(connected.device.name).toBe('sdc');
    await a.keep(LUN2, connected.progress);
    expect(await markers()).toEqual([]);
    // No connect in flight any more: the logout happens once LUN 2's disk is gone too.
    expect(await closeLun1(b)).toBe('kept');
    await removeLun(root, { host: 2, sid: 1 }, { lun: 2, device: 'sdc' });
    expect(await closeLun1(b)).toBe('closed');
    expect(logouts(runs)).toHaveLength(1);
  });

  it('removes the marker of a connect that failed, with its registration', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const { fs, scanned } = await scanWatchingFs();
    const a = lifecycleOn(recordingRunner().runner, { fs });
    const cancel = new AbortController();
    const connecting = a.connect(LUN2, { signal: cancel.signal }).catch((error: unknown) => error);
    await scanned;
    expect(await markers()).toHaveLength(1);
    cancel.abort(new Error('cancelled by the test'));
    expect(await connecting).toMatchObject({ message: 'cancelled by the test' });
    expect(await markers()).toEqual([]);
    const { runner, runs } = recordingRunner();
    expect(await closeLun1(lifecycleOn(runner))).toBe('closed');
    expect(logouts(runs)).toHaveLength(1);
  });

  it('closes, at its undo, the session a failed connect only reused when a detach kept it for that connect', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    // A's connect of LUN 2 reuses the session LUN 1's attach made.
    const mine = await reusingConnect();
    // B detaches LUN 1: its disk goes, and A's marker keeps the session for A's connect.
    await removeLun(root, { host: 2, sid: 1 }, { lun: 1, device: 'sdb' });
    const theirs = recordingRunner();
    expect(await closeLun1(lifecycleOn(theirs.runner))).toBe('kept');
    expect(logouts(theirs.runs)).toEqual([]);
    // A's connect fails: nothing uses the session any more, and A's undo is the last decision.
    await mine.fail();
    expect(logouts(mine.runs)).toHaveLength(1);
    expect(mine.runs.filter((r) => r.includes('--op') && r.includes('delete'))).toHaveLength(1);
    expect(await markers()).toEqual([]);
  });

  it('notes no deferred logout when a disk keeps the session anyway; the undo then leaves it', async () => {
    // LUN 0's disk is someone else's (an administrator's): it keeps the session whatever is in flight.
    await session([{ lun: 0, device: 'sdd', wwid: WWID_2 }, { lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const mine = await reusingConnect();
    await removeLun(root, { host: 2, sid: 1 }, { lun: 1, device: 'sdb' });
    expect(await closeLun1(lifecycleOn(recordingRunner().runner))).toBe('kept');
    expect(await readdir(path.join(root, TARGET_FILES_DIR))).not.toContain(`${targetFileStem(TARGET)}.kept`);
    // The administrator's disk goes; then the connect fails: no decision deferred a logout for it.
    await removeLun(root, { host: 2, sid: 1 }, { lun: 0, device: 'sdd' });
    await mine.fail();
    expect(logouts(mine.runs)).toEqual([]);
  });

  it('removes the note of a deferred logout when the session is logged out', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const { fs, scanned } = await scanWatchingFs();
    const a = lifecycleOn(recordingRunner().runner, { fs });
    const connecting = a.connect(LUN2, { signal: AbortSignal.timeout(10_000) });
    await scanned;
    await removeLun(root, { host: 2, sid: 1 }, { lun: 1, device: 'sdb' });
    const b = lifecycleOn(recordingRunner().runner);
    expect(await closeLun1(b)).toBe('kept');
    const note = path.join(root, TARGET_FILES_DIR, `${targetFileStem(TARGET)}.kept`);
    expect(await readFile(note, 'utf8')).toBe('1');
    // The connect succeeds and its volume is detached later: that decision logs out, and the note goes.
    await diskAppears(2, 'sdc', WWID_2);
    const connected = await connecting;
    await a.keep(LUN2, connected.progress);
    await removeLun(root, { host: 2, sid: 1 }, { lun: 2, device: 'sdc' });
    expect(await closeLun1(b)).toBe('closed');
    await expect(readFile(note, 'utf8')).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('leaves, at its undo, a reused session no logout decision kept (an administrator\'s, with no disk of berth\'s)', async () => {
    // A session with no disk: logged in by hand or at boot, not by a berth connect.
    await session([]);
    const mine = await reusingConnect();
    await mine.fail();
    expect(logouts(mine.runs)).toEqual([]);
    expect(mine.runs.filter((r) => r.includes('--op') && r.includes('delete'))).toEqual([]);
  });

  it('keeps, at its undo, a reused session that another LUN still uses', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const mine = await reusingConnect();
    await mine.fail();
    expect(logouts(mine.runs)).toEqual([]);
  });

  it('counts the marker of a SIGKILLed process while the command it started (its `iscsiadm --login`) still runs', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    // A connect in flight: its marker written, its login (a command that ends when the test says) running.
    const killed = await killedWithCommand({
      timeoutMs: 20_000,
      beforeKill: async (pid) => {
        await mkdir(markerDir(), { recursive: true });
        await writeFile(path.join(markerDir(), `${pid}-c0ffeec0ffee-1`), JSON.stringify({ pid, startTicks: await processStartTicks(pid) }));
      },
    });
    try {
      const { runner, runs } = recordingRunner();
      const b = lifecycleOn(runner);
      // Its process is dead, its login is not: the session stays for it (before: logged out under it).
      expect(await closeLun1(b)).toBe('kept');
      expect(logouts(runs)).toEqual([]);
      await killed.finish();
      await createHostServices().waiter.waitUntil('/proc', async () => (commandsOutlive(killed.pid) ? undefined : true), { timeoutMs: 10_000, signal: AbortSignal.timeout(15_000) });
      expect(await closeLun1(b)).toBe('closed');
      expect(await markers()).toEqual([]);
    } finally {
      await killed.dispose();
    }
  }, 30_000);

  it('counts a live process\'s marker, and ignores and removes a dead process\'s (or a reused pid\'s)', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 60_000)'], { stdio: 'ignore' });
    try {
      await once(child, 'spawn');
      const pid = child.pid ?? 0;
      await mkdir(markerDir(), { recursive: true });
      await writeFile(path.join(markerDir(), `${pid}-c0ffeec0ffee-1`), JSON.stringify({ pid, startTicks: await processStartTicks(pid) }));
      // This process, but another start time: a pid the kernel gave again.
      await writeFile(path.join(markerDir(), `${process.pid}-000000000000-1`), JSON.stringify({ pid: process.pid, startTicks: '1' }));
      // Not shaped like a marker: never read, never removed (the directory is berth's own, but only markers are its to clean).
      await writeFile(path.join(markerDir(), 'not-a-marker'), 'x');
      const { runner, runs } = recordingRunner();
      const b = lifecycleOn(runner);
      expect(await closeLun1(b)).toBe('kept');
      expect((await markers()).sort()).toEqual([`${pid}-c0ffeec0ffee-1`, 'not-a-marker']);
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
      expect(await closeLun1(b)).toBe('closed');
      expect(logouts(runs)).toHaveLength(1);
      expect(await markers()).toEqual(['not-a-marker']);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
