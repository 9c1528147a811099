import { chmod, mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostServices, hostFacts, type CommandResult, type HostServices } from '@berth/host';
import { userPaths } from './export-records.js';
import { checkUserHost, checkUserHostCached, userInitiatorName } from './host-check.js';

/** A host whose commands answer from `answers` (keyed by the command and its first argument); a missing one is ENOENT. */
function fakeHost(answers: Record<string, Partial<CommandResult>>, files: string[]): { host: HostServices; started: string[]; most: () => number } {
  const started: string[] = [];
  let running = 0;
  let most = 0;
  const host = {
    runner: {
      run: async (command: string, args: string[]) => {
        const key = `${command} ${args[0] ?? ''}`;
        started.push(key);
        running += 1;
        most = Math.max(most, running);
        // Answer on a later turn of the event loop, as a real process does.
        await new Promise((resolve) => setImmediate(resolve));
        running -= 1;
        const answer = answers[key];
        if (answer === undefined) throw Object.assign(new Error(`spawn ${command} ENOENT`), { code: 'ENOENT' });
        return { command: key, exitCode: 0, stdout: '', stderr: '', durationMs: 1, ...answer };
      },
    },
    fs: { exists: async (file: string) => files.includes(file) },
  } as unknown as HostServices;
  return { host, started, most: () => most };
}

const devices = ['/dev/fuse', '/dev/loop-control'];

describe('checkUserHost', () => {
  it('starts every look before any answers, and reports each in the usual order', async () => {
    const { host, started, most } = fakeHost(
      {
        'qsd --version': { stdout: 'qemu-storage-daemon version 7.2.19\nCopyright' },
        'qsd --blockdev': { exitCode: 1, stderr: 'qemu-storage-daemon: --blockdev driver=iscsi: iSCSI: Failed to connect to LUN : Connection refused\n' },
        'losetup --version': { stdout: 'losetup from util-linux 2.38.1' },
      },
      devices,
    );
    const result = await checkUserHost(host, 'qsd', 1_000);
    expect(started).toEqual(['qsd --version', 'qsd --blockdev', 'losetup --version']);
    expect(most()).toBe(3);
    expect(result.checks.map((c) => c.name)).toEqual([
      'qemu-storage-daemon present',
      'iSCSI block driver (qemu-block-extra)',
      '/dev/fuse present',
      'losetup present',
      '/dev/loop-control present',
      'running as root',
    ]);
    expect(result.checks.slice(0, 5).every((c) => c.ok)).toBe(true);
    expect(result.checks[0]?.detail).toBe('qemu-storage-daemon version 7.2.19');
  });

  it('a missing binary fails its two checks with the install hint, once', async () => {
    const { host } = fakeHost({ 'losetup --version': {} }, devices);
    const result = await checkUserHost(host, 'qsd', 1_000);
    expect(result.essential).toBe(false);
    expect(result.checks[0]).toMatchObject({ ok: false, detail: 'qsd not found' });
    expect(result.checks.map((c) => c.name)).not.toContain('iSCSI block driver (qemu-block-extra)');
    expect(result.fixes.filter((f) => /qemu/i.test(f))).toHaveLength(1);
  });

  it('a binary without the iscsi driver says what it answered', async () => {
    const { host } = fakeHost(
      {
        'qsd --version': { stdout: 'qemu-storage-daemon version 7.2.19' },
        'qsd --blockdev': { exitCode: 1, stderr: "qemu-storage-daemon: --blockdev driver=iscsi: Unknown driver 'iscsi'\n" },
        'losetup --version': {},
      },
      devices,
    );
    const result = await checkUserHost(host, 'qsd', 1_000);
    expect(result.essential).toBe(false);
    expect(result.checks[1]).toMatchObject({ ok: false, detail: "qemu-storage-daemon: --blockdev driver=iscsi: Unknown driver 'iscsi'" });
  });
});

describe('checkUserHostCached', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'berth-host-check-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Executable stand-ins for the binaries in `bin` (the commands themselves are answered by the fake runner). */
  async function tools(bin: string, names: string[]): Promise<void> {
    await mkdir(bin, { recursive: true });
    for (const name of names) {
      await writeFile(path.join(bin, name), '#!/bin/true\n');
      await chmod(path.join(bin, name), 0o755);
    }
  }

  const answers = (pathVar: string): Record<string, Partial<CommandResult>> => ({
    'printenv PATH': { stdout: `${pathVar}\n` },
    'qsd --version': { stdout: 'qemu-storage-daemon version 7.2.19' },
    'qsd --blockdev': { exitCode: 1, stderr: 'qemu-storage-daemon: iSCSI: Failed to connect to LUN\n' },
    'losetup --version': { stdout: 'losetup from util-linux 2.38.1' },
  });
  const spawned = (started: string[]) => started.filter((s) => s !== 'printenv PATH');

  it('runs the commands once, then answers from the file while the binaries on the runner\'s PATH stay the same', async () => {
    const bin = path.join(dir, 'a', 'bin');
    await tools(bin, ['qsd', 'losetup']);
    const file = path.join(dir, 'a', 'kept.json');
    const first = fakeHost(answers(bin), devices);
    const fresh = await checkUserHostCached(first.host, 'qsd', 1_000, file);
    expect(spawned(first.started)).toEqual(['qsd --version', 'qsd --blockdev', 'losetup --version']);
    const second = fakeHost(answers(bin), devices);
    const kept = await checkUserHostCached(second.host, 'qsd', 1_000, file);
    expect(second.started).toEqual(['printenv PATH']);
    expect(kept).toEqual(fresh);
    expect(kept.essential).toBe(hostFacts().isRoot);

    // The binary replaced (its times change): the commands run again.
    await utimes(path.join(bin, 'qsd'), new Date(), new Date(Date.now() + 5_000));
    const third = fakeHost(answers(bin), devices);
    await checkUserHostCached(third.host, 'qsd', 1_000, file);
    expect(spawned(third.started)).toHaveLength(3);
  });

  it('a directory the runner puts before PATH with its own binary runs the commands again', async () => {
    const bin = path.join(dir, 'b', 'bin');
    const prepended = path.join(dir, 'b', 'fake');
    await tools(bin, ['qsd', 'losetup']);
    await tools(prepended, ['qsd']);
    const file = path.join(dir, 'b', 'kept.json');
    await checkUserHostCached(fakeHost(answers(bin), devices).host, 'qsd', 1_000, file);
    const other = fakeHost(answers(`${prepended}${path.delimiter}${bin}`), devices);
    await checkUserHostCached(other.host, 'qsd', 1_000, file);
    expect(spawned(other.started)).toHaveLength(3);
  });

  it('the device nodes are looked at each time; without printenv nothing is kept', async () => {
    const bin = path.join(dir, 'c', 'bin');
    await tools(bin, ['qsd', 'losetup']);
    const file = path.join(dir, 'c', 'kept.json');
    await checkUserHostCached(fakeHost(answers(bin), devices).host, 'qsd', 1_000, file);
    const noFuse = await checkUserHostCached(fakeHost(answers(bin), ['/dev/loop-control']).host, 'qsd', 1_000, file);
    expect(noFuse.checks.find((c) => c.name === '/dev/fuse present')?.ok).toBe(false);
    const { 'printenv PATH': _printenv, ...withoutPrintenv } = answers(bin);
    const other = path.join(dir, 'c', 'other.json');
    await checkUserHostCached(fakeHost(withoutPrintenv, devices).host, 'qsd', 1_000, other);
    const again = fakeHost(withoutPrintenv, devices);
    await checkUserHostCached(again.host, 'qsd', 1_000, other);
    expect(spawned(again.started)).toHaveLength(3);
  });

  it('a runner that tells its search path is not asked with printenv, and its path is the key', async () => {
    const bin = path.join(dir, 'd', 'bin');
    const prepended = path.join(dir, 'd', 'fake');
    await tools(bin, ['qsd', 'losetup']);
    await tools(prepended, ['qsd']);
    const file = path.join(dir, 'd', 'kept.json');
    const telling = (dirs: string[]) => {
      const fake = fakeHost(answers('/printenv/must/not/be/asked'), devices);
      Object.assign(fake.host.runner, { searchPath: () => dirs });
      return fake;
    };
    const first = telling([bin]);
    await checkUserHostCached(first.host, 'qsd', 1_000, file);
    expect(first.started).toEqual(['qsd --version', 'qsd --blockdev', 'losetup --version']);
    const second = telling([bin]);
    await checkUserHostCached(second.host, 'qsd', 1_000, file);
    expect(second.started).toEqual([]);
    const third = telling([prepended, bin]);
    await checkUserHostCached(third.host, 'qsd', 1_000, file);
    expect(third.started).toHaveLength(3);
  });
});

describe('userInitiatorName', () => {
  it('makes one name for the host however many processes ask at once, and keeps it', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-user-initiator-'));
    try {
      // A host root without open-iscsi's /etc/iscsi/initiatorname.iscsi: the name is berth's own.
      const host = createHostServices({ root: path.join(dir, 'root') });
      const paths = userPaths(path.join(dir, 'data'));
      const names = await Promise.all(Array.from({ length: 8 }, () => userInitiatorName(host, paths)));
      expect(new Set(names).size).toBe(1);
      expect(names[0]).toMatch(/^iqn\.2026-11\.io\.berth:user-[0-9a-f]{12}$/);
      expect(await userInitiatorName(host, paths)).toBe(names[0]);
      expect((await readdir(path.dirname(paths.initiatorName))).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
