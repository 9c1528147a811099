import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { fillFileSystem } from '@berth/host/testing';
import { berth, loopDevicesUnder, removeLoopDevicesUnder } from './test-cli.js';

// A full data dir, for real (a small tmpfs; this runs as root): read-only commands work, a log line
// the disk refuses never fails a command, and a full disk is exit 13 with a hint, never exit 70.

const mounts: string[] = [];
const dirs: string[] = [];

function tmpfs(size: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'berth-cli-full-'));
  dirs.push(dir);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'berth-cli-full', dir]);
  mounts.push(dir);
  return dir;
}

afterEach(() => {
  for (const dir of dirs) removeLoopDevicesUnder(dir);
  for (const mount of mounts.splice(0).reverse()) execFileSync('umount', ['--lazy', mount]);
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('a full data dir', () => {
  it('volume list, volume show and attachment list still work, with one notice that the log file cannot be written', async () => {
    const dataDir = tmpfs('2m');
    expect((await berth(dataDir, ['volume', 'create', 'a', '--size', '1MiB'])).exitCode).toBe(0);
    fillFileSystem(dataDir);
    for (const args of [['volume', 'list', '--json'], ['volume', 'show', 'a', '--json'], ['attachment', 'list', '--json'], ['volume', 'list']]) {
      const run = await berth(dataDir, args);
      expect({ args, exitCode: run.exitCode, stderr: run.stderr }).toEqual({
        args,
        exitCode: 0,
        stderr: `berth: cannot write the log file ${join(dataDir, 'logs', 'berth.log')} (ENOSPC); its log lines are dropped\n`,
      });
    }
    const [volume] = JSON.parse((await berth(dataDir, ['volume', 'list', '--json'])).stdout) as Array<{ name: string; status: string }>;
    expect(volume).toEqual(expect.objectContaining({ name: 'a', status: 'available' }));
  }, 120_000);

  it('a log directory whose disk is full fails no command: attach and detach at debug level succeed', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'berth-cli-full-'));
    dirs.push(dataDir);
    writeFileSync(join(dataDir, 'config.json'), JSON.stringify({ logLevel: 'debug' }));
    expect((await berth(dataDir, ['volume', 'create', 'a', '--size', '1MiB'])).exitCode).toBe(0);
    // Only the log fills up: every log line of attach and detach hits a real ENOSPC.
    const logs = join(dataDir, 'logs');
    mkdirSync(logs, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'berth-cli-full', logs]);
    mounts.push(logs);
    fillFileSystem(logs);
    for (const args of [['attach', 'a', '--json'], ['attachment', 'list', '--json'], ['detach', 'a', '--json']]) {
      const run = await berth(dataDir, args);
      // At most the one notice (a command may log nothing).
      expect({ args, exitCode: run.exitCode }).toEqual({ args, exitCode: 0 });
      expect(['', `berth: cannot write the log file ${join(logs, 'berth.log')} (ENOSPC); its log lines are dropped\n`]).toContain(run.stderr);
    }
    expect(loopDevicesUnder(dataDir)).toEqual([]);
  }, 120_000);

  it('attach on an almost-full disk: exit 0 or 13 with a hint (never 70 or 1); once there is room, the volume ends available with no loop device', async () => {
    const dataDir = tmpfs('4m');
    expect((await berth(dataDir, ['volume', 'create', 'a', '--size', '1MiB'])).exitCode).toBe(0);
    const filler = fillFileSystem(dataDir);
    let size = Number(execFileSync('stat', ['-c', '%s', filler], { encoding: 'utf8' }).trim());
    for (const freed of [64, 80, 96, 112, 128]) {
      size = Math.max(0, size - freed * 1024);
      truncateSync(filler, size);
      for (const command of ['attach', 'detach']) {
        const run = await berth(dataDir, [command, 'a']);
        expect([0, 4, 5, 13], `${command} with ${freed} KiB more freed: ${run.stderr}`).toContain(run.exitCode);
        if (run.exitCode === 13) expect(run.stderr).toMatch(/^Error: .*the disk .*is full.*\nHint: \S/m);
      }
    }
    // Room again: recovery (at the next commands) undoes what a failed attach left.
    rmSync(filler);
    await berth(dataDir, ['detach', 'a']);
    const [volume] = JSON.parse((await berth(dataDir, ['volume', 'list', '--json'])).stdout) as Array<{ status: string }>;
    expect(volume?.status).toBe('available');
    expect(loopDevicesUnder(dataDir)).toEqual([]);
  }, 300_000);
});
