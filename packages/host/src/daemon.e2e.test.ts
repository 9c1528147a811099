import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { DaemonError, daemonStatus, processStartTicks, startDaemon, stopDaemon } from './daemon.js';

const NODE = process.execPath;
// A stand-in daemon: says hello on both streams and lives until killed. With IGNORE_TERM it
// ignores SIGTERM, as tgtd 1.0.85 does.
const DAEMON_SCRIPT = [
  "process.stdout.write('daemon up\\n');",
  "process.stderr.write('daemon warning\\n');",
  "if (process.env.IGNORE_TERM === '1') process.on('SIGTERM', () => {});",
  'setInterval(() => {}, 1 << 30);',
].join(' ');

const temps: string[] = [];
// Every pid file a test used: its daemon is stopped after the test, pass or fail.
const pidFiles: string[] = [];

afterEach(async () => {
  for (const pidFile of pidFiles.splice(0)) {
    await stopDaemon(pidFile, { timeoutMs: 100, signal: 'SIGKILL' }).catch(() => undefined);
  }
  await Promise.all(temps.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'berth-daemon-'));
  temps.push(dir);
  return dir;
}

async function files(): Promise<{ dir: string; logFile: string; pidFile: string }> {
  const dir = await tempDir();
  const pidFile = path.join(dir, 'd.pid');
  pidFiles.push(pidFile);
  return { dir, logFile: path.join(dir, 'd.log'), pidFile };
}

/** Wait (bounded) until `probe` is true; the daemon writes its log asynchronously. */
async function eventually(probe: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let pause = 2;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error('condition not met before the deadline');
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 50);
  }
}

function alive(pid: number): boolean {
  try {
    const state = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0];
    return state !== undefined && state !== 'Z';
  } catch {
    return false;
  }
}

describe('startDaemon / daemonStatus / stopDaemon', () => {
  it('starts a detached daemon in its own session, logging to the file, and records its pid', async () => {
    const { logFile, pidFile } = await files();
    const { pid } = await startDaemon({ file: NODE, args: ['-e', DAEMON_SCRIPT], logFile, pidFile });
    expect(await daemonStatus(pidFile)).toEqual({ running: true, pid });

    const record = JSON.parse(await readFile(pidFile, 'utf8')) as { pid: number; file: string; startTicks: string };
    expect(record).toMatchObject({ pid, file: NODE });
    expect(record.startTicks).toMatch(/^\d+$/);

    // Own session and process group (setsid): a terminal's or a CLI's signals do not reach it.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    expect(fields[2]).toBe(String(pid)); // pgrp
    expect(fields[3]).toBe(String(pid)); // session
    expect(await readlink(`/proc/${pid}/fd/0`)).toBe('/dev/null');
    expect(await readlink(`/proc/${pid}/fd/1`)).toBe(logFile);
    await eventually(async () => (await readFile(logFile, 'utf8')).includes('daemon warning'));
    expect(await readFile(logFile, 'utf8')).toContain('daemon up\n');
    expect((await stat(logFile)).mode & 0o777).toBe(0o600);
  });

  it('outlives the short-lived process that started it', async () => {
    const { logFile, pidFile } = await files();
    const dist = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../dist/daemon.js');
    expect(existsSync(dist), `build @berth/host first (npx tsc -p tsconfig.build.json): ${dist} is missing`).toBe(true);
    const starter = [
      `const { startDaemon } = await import(${JSON.stringify(dist)});`,
      `const { pid } = await startDaemon({ file: ${JSON.stringify(NODE)}, args: ['-e', ${JSON.stringify(DAEMON_SCRIPT)}], logFile: ${JSON.stringify(logFile)}, pidFile: ${JSON.stringify(pidFile)} });`,
      'process.stdout.write(String(pid));',
    ].join('\n');
    const child = spawn(NODE, ['--input-type=module', '-e', starter], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    // The starter exited by itself: the daemon did not hold its event loop open.
    expect(code).toBe(0);
    const pid = Number(out);
    expect(pid).toBeGreaterThan(0);
    expect(await daemonStatus(pidFile)).toEqual({ running: true, pid });
  });

  it('refuses to start a second copy over a running one', async () => {
    const { logFile, pidFile } = await files();
    const { pid } = await startDaemon({ file: NODE, args: ['-e', DAEMON_SCRIPT], logFile, pidFile });
    const error = await startDaemon({ file: NODE, args: ['-e', DAEMON_SCRIPT], logFile, pidFile }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DaemonError);
    expect((error as DaemonError).reason).toBe('already-running');
    expect(await daemonStatus(pidFile)).toEqual({ running: true, pid });
  });

  it('says not-found for a missing executable and writes no pid file', async () => {
    const { logFile, pidFile } = await files();
    const error = await startDaemon({ file: 'berth-no-such-daemon', args: [], logFile, pidFile }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DaemonError);
    expect((error as DaemonError).reason).toBe('not-found');
    expect(existsSync(pidFile)).toBe(false);
  });

  it('passes env and arguments literally (no shell)', async () => {
    const { logFile, pidFile } = await files();
    const script = "process.stdout.write(process.argv[1] + '|' + process.env.BERTH_DAEMON_TEST + '\\n'); setInterval(() => {}, 1 << 30);";
    await startDaemon({ file: NODE, args: ['-e', script, '$(echo no); *'], logFile, pidFile, env: { BERTH_DAEMON_TEST: 'yes' } });
    await eventually(async () => (await readFile(logFile, 'utf8')).includes('\n'));
    expect(await readFile(logFile, 'utf8')).toBe('$(echo no); *|yes\n');
  });

  it('stops with SIGTERM, removes the pid file, and a second stop is a no-op', { timeout: 60_000 }, async () => {
    const { logFile, pidFile } = await files();
    const { pid } = await startDaemon({ file: NODE, args: ['-e', DAEMON_SCRIPT], logFile, pidFile });
    const started = Date.now();
    expect(await stopDaemon(pidFile, { timeoutMs: 60_000 })).toEqual({ wasRunning: true, pid, killed: false });
    // It woke on the exit, not at the deadline (half of it: a margin no load on a shared machine eats).
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(alive(pid)).toBe(false);
    expect(existsSync(pidFile)).toBe(false);
    expect(await daemonStatus(pidFile)).toEqual({ running: false });
    expect(await stopDaemon(pidFile, { timeoutMs: 100 })).toEqual({ wasRunning: false, killed: false });
  });

  it('falls back to SIGKILL when the daemon ignores SIGTERM', async () => {
    const { logFile, pidFile } = await files();
    const { pid } = await startDaemon({ file: NODE, args: ['-e', DAEMON_SCRIPT], logFile, pidFile, env: { IGNORE_TERM: '1' } });
    await eventually(async () => (await readFile(logFile, 'utf8')).includes('daemon up'));
    const result = await stopDaemon(pidFile, { timeoutMs: 150 });
    expect(result).toEqual({ wasRunning: true, pid, killed: true });
    expect(alive(pid)).toBe(false);
  });

  it('does not take a recycled pid for the daemon', async () => {
    const { dir, logFile, pidFile } = await files();
    const { pid } = await startDaemon({ file: NODE, args: ['-e', DAEMON_SCRIPT], logFile, pidFile });
    const record = JSON.parse(await readFile(pidFile, 'utf8')) as { pid: number; file: string; startTicks: string };

    // The same live pid, but another executable recorded: a pid reused by something else.
    const otherFile = path.join(dir, 'other.pid');
    await writeFile(otherFile, JSON.stringify({ pid, file: '/usr/sbin/tgtd' }));
    expect(await daemonStatus(otherFile)).toEqual({ running: false, pid });

    // The same pid and executable, but another start time: the pid was recycled.
    const recycled = path.join(dir, 'recycled.pid');
    await writeFile(recycled, JSON.stringify({ ...record, startTicks: String(Number(record.startTicks) - 1) }));
    expect(await daemonStatus(recycled)).toEqual({ running: false, pid });

    // Stopping through a stale record must not kill the live process that now has the pid.
    expect(await stopDaemon(recycled, { timeoutMs: 100 })).toEqual({ wasRunning: false, pid, killed: false });
    expect(alive(pid)).toBe(true);
    expect(existsSync(recycled)).toBe(false);
  });

  it('reads a plain-number pid file, and calls a missing or garbled one not running', async () => {
    const { dir } = await files();
    const plain = path.join(dir, 'plain.pid');
    await writeFile(plain, `${process.pid}\n`);
    expect(await daemonStatus(plain)).toEqual({ running: true, pid: process.pid });
    const garbled = path.join(dir, 'garbled.pid');
    await writeFile(garbled, '{"pid": "x"');
    expect(await daemonStatus(garbled)).toEqual({ running: false });
    expect(await daemonStatus(path.join(dir, 'missing.pid'))).toEqual({ running: false });
  });

  it('sees a daemon that died as not running (no zombie counted as alive)', async () => {
    const { logFile, pidFile } = await files();
    const { pid } = await startDaemon({ file: NODE, args: ['-e', 'process.exit(3)'], logFile, pidFile });
    await eventually(() => !alive(pid));
    expect(await daemonStatus(pidFile)).toEqual({ running: false, pid });
  });
});

describe('a daemon whose starter died before recording its pid', () => {
  it('is adopted by its command line (not started a second time); with none, the stale record goes; a live starter\'s record is left alone', async () => {
    const { dir, logFile, pidFile } = await files();
    // A starter that is gone (its pid and a start time no process has).
    const starter = spawn(NODE, ['-e', '0'], { stdio: 'ignore' });
    await new Promise((resolve) => starter.once('exit', resolve));
    // After `--`: node takes an unknown `--option` after `-e <script>` for its own, and exits 9.
    const args = ['-e', DAEMON_SCRIPT, '--', `--berth-test-daemon=${dir}`];
    const starting = (by: { pid: number; startTicks: string }): string => `${JSON.stringify({ starting: by, file: NODE, args })}\n`;
    // Nothing matches its command line: not running, and the stale record is removed.
    await writeFile(pidFile, starting({ pid: starter.pid ?? 0, startTicks: '1' }));
    expect(await daemonStatus(pidFile)).toEqual({ running: false });
    expect(existsSync(pidFile)).toBe(false);
    // The starter got as far as the spawn: the daemon runs, no pid file names it.
    const orphan = spawn(NODE, args, { detached: true, stdio: 'ignore' });
    orphan.unref();
    try {
      await writeFile(pidFile, starting({ pid: starter.pid ?? 0, startTicks: '1' }));
      const status = await daemonStatus(pidFile);
      expect(status).toEqual({ running: true, pid: orphan.pid });
      expect(JSON.parse(await readFile(pidFile, 'utf8'))).toMatchObject({ pid: orphan.pid, file: NODE });
      // Before: not running — a second daemon started beside the first.
      await expect(startDaemon({ file: NODE, args, logFile, pidFile })).rejects.toMatchObject({ reason: 'already-running' });
      expect((await stopDaemon(pidFile, { timeoutMs: 5_000 })).wasRunning).toBe(true);
      // A starter that is alive (this process) is at it now: nothing is decided, nothing removed.
      await writeFile(pidFile, starting({ pid: process.pid, startTicks: (await processStartTicks(process.pid)) ?? '' }));
      expect(await daemonStatus(pidFile)).toEqual({ running: false });
      expect(existsSync(pidFile)).toBe(true);
    } finally {
      try {
        process.kill(orphan.pid ?? 0, 'SIGKILL');
      } catch {
        // stopped
      }
    }
  });
});

describe('processStartTicks', () => {
  it('names a live process, and nothing for a gone one', async () => {
    expect(await processStartTicks(process.pid)).toMatch(/^\d+$/);
    expect(await processStartTicks(2 ** 22 + 1)).toBeUndefined();
  });
});
