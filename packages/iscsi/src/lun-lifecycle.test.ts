import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '@berth/core';
import { createHostServices, type CommandResult, type CommandRunner, type HostFs } from '@berth/host';
import { iscsiTransportKit } from './transport-kit.js';
import type { LunLifecycle } from './lun-lifecycle.js';
import type { LunTarget } from './lun-device.js';
import { toPortal } from './target.js';
import { addLun, buildSessions } from './test-kernel-tree.js';
import { FailureList } from './failure-list.js';

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

/** A lifecycle on the test root through `fs` (default: the root's own) with a recording runner. */
function lifecycleOn(runner: CommandRunner, fs?: HostFs): LunLifecycle {
  const host = createHostServices({ root });
  return iscsiTransportKit({ ...host, runner, ...(fs === undefined ? {} : { fs }) }, silentLogger, KIT_OPTIONS).lifecycle;
}

/** The kernel finishes LUN `lun`'s scan: its disk in sysfs and its /dev node. */
async function diskAppears(lun: number, device: string, wwid: string): Promise<void> {
  await addLun(root, { host: 2, sid: 1 }, { lun, device, wwid });
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
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sdc'], [], yes)).toBe(false);
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sdb', 'sdc'], ['sdb'], yes)).toBe(true);
    expect(await lifecycle.sessionStillNeeded(TARGET, ['sdc'], ['sdb'], yes)).toBe(true);
  });

  it('needs no session that is not there', async () => {
    expect(await lifecycle.sessionStillNeeded(TARGET, [], [], async () => false)).toBe(false);
  });
});

describe('the logout decisions of many LUNs queued together (closeSessionIfUnused)', () => {
  it('decides the ones waiting behind a kept session from one reading of sysfs, and each alike', async () => {
    await session([
      { lun: 1, device: 'sdb', wwid: WWID_1 },
      { lun: 2, device: 'sdc', wwid: WWID_2 },
      { lun: 3, device: 'sdd', wwid: 'naa.60000000000000000e00000000010003' },
    ]);
    const host = createHostServices({ root });
    let readdirs = 0;
    const fs = new Proxy(host.fs, {
      get(target, property, receiver) {
        if (property === 'readdir') readdirs += 1;
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
  });
});

describe('connects in flight and the logout decision', () => {
  it('counts a connect in flight as it was before sysfs was read: one kept during the reading keeps the session', async () => {
    await session([{ lun: 1, device: 'sdb', wwid: WWID_1 }]);
    await mkdir(path.join(root, 'dev'), { recursive: true });
    const host = createHostServices({ root });
    // The decision's listing of the session's LUNs is held (already read) until `go`: meanwhile
    // the connect of LUN 2 finds its disk and is kept.
    let listing: () => void = () => undefined;
    const listed = new Promise<void>((resolve) => (listing = resolve));
    let go: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (go = resolve));
    let armed = false;
    let scanning: () => void = () => undefined;
    const scanned = new Promise<void>((resolve) => (scanning = resolve));
    const fs: HostFs = {
      ...host.fs,
      async writeFile(hostPath, data, options) {
        await host.fs.writeFile(hostPath, data, options);
        if (hostPath.endsWith('/scan')) scanning();
      },
      async readdir(hostPath) {
        const names = await host.fs.readdir(hostPath);
        if (armed && hostPath.endsWith('/target2:0:0')) {
          armed = false;
          listing();
          await gate;
        }
        return names;
      },
    };
    const { runner, runs } = recordingRunner();
    const one = lifecycleOn(runner, fs);
    const lun2 = { ...TARGET, lun: 2, kernelLun: 2 };
    const connecting = one.connect(lun2, { signal: AbortSignal.timeout(10_000) });
    // Its scan is written once it is counted in flight.
    await scanned;
    armed = true;
    const deciding = one.closeSessionIfUnused(TARGET, ['sdb'], { signal: undefined, failures: new FailureList(false), mark: one.closeMark(TARGET) });
    await listed;
    await diskAppears(2, 'sdc', WWID_2);
    const connected = await connecting;
    one.keep(lun2, connected.progress);
    go();
    expect(await deciding).toBe('kept');
    expect(logouts(runs)).toEqual([]);
  });
});
