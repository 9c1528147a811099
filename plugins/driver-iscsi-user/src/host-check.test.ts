import { describe, expect, it } from 'vitest';
import type { CommandResult, HostServices } from '@berth/host';
import { checkUserHost } from './host-check.js';

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
