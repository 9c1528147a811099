import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync, unlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// For the CLI's end-to-end tests: the built `berth` in a data dir of the test's own, and the loop
// devices (and `/dev/berth` links) it made, found and removed by the volume files under that dir.

export const BIN = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'run.js');

/** What a finished `berth` run gave. */
export interface Run {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** The environment of a `berth` run in `dataDir`: nothing of the caller's berth settings but `extra`. */
export function berthEnv(dataDir: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, BERTH_DATA_DIR: dataDir };
  for (const key of ['BERTH_LOG_LEVEL', 'BERTH_CONFIG', 'BERTH_FAULTS', 'BERTH_API_URL', 'BERTH_STORE_URL', 'DEBUG']) delete env[key];
  return { ...env, ...extra };
}

/** Run `berth args` in `dataDir` to its end. */
export function berth(dataDir: string, args: string[], extra: NodeJS.ProcessEnv = {}): Promise<Run> {
  return berthAt(BIN, dataDir, args, extra);
}

/** `berth` run from another copy of the built package (`bin`, its `bin/run.js`). */
export function berthAt(bin: string, dataDir: string, args: string[], extra: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((done) => {
    execFile(process.execPath, [bin, ...args], { env: berthEnv(dataDir, extra), cwd: dataDir }, (error, stdout, stderr) => {
      const code = (error as { code?: unknown } | null)?.code;
      done({ exitCode: error === null ? 0 : typeof code === 'number' ? code : -1, stdout, stderr });
    });
  });
}

/**
 * Start `berth args` in `dataDir`, in a process group of its own as a shell starts a job (`ctrlC`
 * signals the whole group, as a terminal's Ctrl-C does); `ended` resolves with its exit code
 * (128 + n when signal n killed it) and output.
 */
export function startBerth(dataDir: string, args: string[], extra: NodeJS.ProcessEnv = {}): { child: ChildProcess; ended: Promise<Run>; ctrlC(): void } {
  const child = spawn(process.execPath, [BIN, ...args], { env: berthEnv(dataDir, extra), cwd: dataDir, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const ctrlC = (): void => {
    if (child.pid !== undefined) process.kill(-child.pid, 'SIGINT');
  };
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const ended = new Promise<Run>((done) => {
    child.on('close', (code, signal) => done({ exitCode: code ?? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 2), stdout, stderr }));
  });
  return { child, ended, ctrlC };
}

/** The loop devices over the volume files under `dataDir` (only a test's own: `losetup -j` per file). */
export function loopDevicesUnder(dataDir: string): string[] {
  const volumes = join(dataDir, 'volumes');
  if (!existsSync(volumes)) return [];
  return readdirSync(volumes).flatMap((name) =>
    execFileSync('losetup', ['-j', join(volumes, name)], { encoding: 'utf8' })
      .split('\n')
      .filter((line) => line.includes(':'))
      .map((line) => line.slice(0, line.indexOf(':'))),
  );
}

/** Remove what a test's berth left on the machine: the `/dev/berth` links to its loop devices, then the devices. */
export function removeLoopDevicesUnder(dataDir: string): void {
  const devices = loopDevicesUnder(dataDir);
  if (existsSync('/dev/berth')) {
    for (const name of readdirSync('/dev/berth')) {
      const link = join('/dev/berth', name);
      try {
        if (devices.includes(readlinkSync(link))) unlinkSync(link);
      } catch {
        // Not a link, or gone already.
      }
    }
  }
  for (const device of devices) execFileSync('losetup', ['--detach', device]);
}

/** Resolve once `check` holds (looked at every 20 ms), or fail naming `what` after `timeoutMs`. */
export async function until(what: string, check: () => boolean, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`gave up waiting for ${what} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
