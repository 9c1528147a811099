import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { berth, loopDevicesUnder, removeLoopDevicesUnder, startBerth, until } from './test-cli.js';

// Ctrl-C on `berth attach` / `berth detach` (embedded, real loop devices): the first SIGINT
// cancels the operation, which rolls back before the command exits (CANCELLED, exit 11); a second
// one exits at once (130), and the next berth command's recovery finishes the rollback. Before,
// SIGINT killed the process as `kill -9` does. SIGINT goes to berth's whole process group, as a
// terminal sends it: the commands berth started are in groups of their own and never get it.

const dirs: string[] = [];
const fds: number[] = [];
const mounts: string[] = [];

afterEach(() => {
  for (const fd of fds.splice(0)) closeSync(fd);
  for (const mount of mounts.splice(0).reverse()) execFileSync('umount', [mount]);
  for (const dir of dirs) removeLoopDevicesUnder(dir);
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

async function dataDirWithVolume(): Promise<string> {
  const dataDir = mkdtempSync(join(tmpdir(), 'berth-cli-interrupt-'));
  dirs.push(dataDir);
  // A holder of the device is waited for long enough for the test's Ctrl-C to land in the wait.
  writeFileSync(join(dataDir, 'config.json'), JSON.stringify({ pluginOptions: { '@berth/driver-loop': { holderGraceMs: 60_000 } } }));
  expect((await berth(dataDir, ['volume', 'create', 'a', '--size', '1MiB'])).exitCode).toBe(0);
  return dataDir;
}

async function volumeStatus(dataDir: string): Promise<string | undefined> {
  const [volume] = JSON.parse((await berth(dataDir, ['volume', 'list', '--json'])).stdout) as Array<{ status: string }>;
  return volume?.status;
}

describe('Ctrl-C', () => {
  it('during an attach rolls it back: exit 11, the volume available, no loop device left', async () => {
    const dataDir = await dataDirWithVolume();
    // The connect is done, then the attach lingers: Ctrl-C lands with a loop device to undo.
    const run = startBerth(dataDir, ['attach', 'a'], { BERTH_FAULTS: 'attach.connect.after=delay:60000' });
    await until('the attach to connect its loop device', () => loopDevicesUnder(dataDir).length === 1);
    run.ctrlC();
    const ended = await run.ended;
    expect(ended.exitCode, ended.stderr).toBe(11);
    expect(ended.stderr).toContain('Interrupted: rolling back the attach (Ctrl-C again stops at once)');
    expect(ended.stderr).toContain('Error: the attach was cancelled: interrupted (Ctrl-C)');
    // Rolled back by the command itself, before it exited (nothing for recovery to do).
    expect(loopDevicesUnder(dataDir)).toEqual([]);
    const [operation] = JSON.parse((await berth(dataDir, ['operation', 'list', '--json'])).stdout) as Array<{ kind: string; state: string }>;
    expect(operation).toEqual(expect.objectContaining({ kind: 'attach', state: 'rolled_back' }));
    expect(await volumeStatus(dataDir)).toBe('available');
  }, 120_000);

  it('during a detach waiting for a holder of the device rolls it back: still attached, its link back, the device untouched', async () => {
    const dataDir = await dataDirWithVolume();
    const attached = JSON.parse((await berth(dataDir, ['attach', 'a', '--json'])).stdout) as { attachment: { id: string; device: { path: string }; publishedPath: string } };
    const { device, publishedPath } = attached.attachment;
    // This test holds the device open: the detach waits for it to be closed.
    fds.push(openSync(device.path, 'r'));
    const run = startBerth(dataDir, ['detach', 'a']);
    // Unpublished: the detach is in its disconnect, waiting for the holder.
    await until('the detach to remove the link', () => !existsSync(publishedPath));
    run.ctrlC();
    const ended = await run.ended;
    expect(ended.exitCode, ended.stderr).toBe(11);
    expect(ended.stderr).toContain('Error: the detach was cancelled: interrupted (Ctrl-C)');
    expect(ended.stderr).not.toContain('error_detaching');
    const [attachment] = JSON.parse((await berth(dataDir, ['attachment', 'list', '--json'])).stdout) as Array<{ status: string; device: { path: string } }>;
    expect(attachment).toEqual(expect.objectContaining({ status: 'attached', device: expect.objectContaining({ path: device.path }) }));
    expect(readlinkSync(publishedPath)).toBe(device.path);
    expect(loopDevicesUnder(dataDir)).toEqual([device.path]);
    // Let go: the detach goes through.
    closeSync(fds.pop()!);
    expect((await berth(dataDir, ['detach', 'a'])).exitCode).toBe(0);
    expect(loopDevicesUnder(dataDir)).toEqual([]);
  }, 120_000);

  it('twice stops at once (exit 130); the next command rolls the attach back', async () => {
    const dataDir = await dataDirWithVolume();
    const run = startBerth(dataDir, ['attach', 'a'], { BERTH_FAULTS: 'attach.connect.after=delay:60000' });
    await until('the attach to connect its loop device', () => loopDevicesUnder(dataDir).length === 1);
    // Held open, the device keeps the rollback's disconnect waiting: the second Ctrl-C lands in it.
    fds.push(openSync(loopDevicesUnder(dataDir)[0]!, 'r'));
    let stderr = '';
    run.child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    run.ctrlC();
    await until('the attach to say it rolls back', () => stderr.includes('Interrupted: rolling back the attach'));
    run.ctrlC();
    const ended = await run.ended;
    expect(ended.exitCode, ended.stderr).toBe(130);
    expect(ended.stderr).toContain('Stopped at once: the next berth command finishes the rollback of the attach');
    closeSync(fds.pop()!);
    // Any next command recovers the operation whose process is gone.
    expect(await volumeStatus(dataDir)).toBe('available');
    expect(loopDevicesUnder(dataDir)).toEqual([]);
  }, 120_000);

  it('killed, and the data dir read-only: volume show says what stopped and who finishes it; once writable, the next command does', async () => {
    const dataDir = await dataDirWithVolume();
    const run = startBerth(dataDir, ['attach', 'a'], { BERTH_FAULTS: 'attach.connect.after=delay:60000' });
    await until('the attach to connect its loop device', () => loopDevicesUnder(dataDir).length === 1);
    run.child.kill('SIGKILL');
    await run.ended;
    execFileSync('mount', ['--bind', dataDir, dataDir]);
    mounts.push(dataDir);
    execFileSync('mount', ['-o', 'remount,ro,bind', dataDir]);
    const shown = await berth(dataDir, ['volume', 'show', 'a']);
    expect(shown.exitCode, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(/^status: +attaching$/m);
    expect(shown.stdout).toMatch(/^Note: its attach \(operation [0-9a-f-]{36}\) lost its process \(\d+\); the next berth command that can write to the data dir finishes it \(or rolls it back\), or run `berth reconcile`$/m);
    execFileSync('umount', [mounts.pop()!]);
    expect(await volumeStatus(dataDir)).toBe('available');
    expect(loopDevicesUnder(dataDir)).toEqual([]);
    expect((await berth(dataDir, ['volume', 'show', 'a'])).stdout).not.toContain('Note:');
  }, 120_000);
});
