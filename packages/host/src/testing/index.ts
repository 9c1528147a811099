/**
 * Test helpers of `@berth/host` for other packages' tests (not part of berth's runtime API).
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createDeviceWaiter } from '../device-waiter.js';
import { createHostFs } from '../host-fs.js';

// The built package, seen from dist/testing/ or src/testing/ alike (this package's own tests run the sources).
const HOST_ENTRY = new URL('../../dist/index.js', import.meta.url).href;

/** A berth-like process SIGKILLed while a command it ran through its spawner still runs. */
export interface KilledWithCommand {
  /** The dead process's pid. */
  pid: number;
  /** The command's pid (still running until `finish`, or its timeout). */
  command: number;
  /** Let the command end (it waits on a FIFO until then). */
  finish(): Promise<void>;
  /** Kill the command if it still runs, and remove the temp directory. */
  dispose(): Promise<void>;
}

/**
 * Start a Node process that (first taking the file lock `lock`, when given) runs `sh` through
 * `@berth/host`'s runner with `timeoutMs` — a command that waits for `finish()` (`trapTerm`: and
 * ignores SIGTERM and SIGHUP) — and SIGKILL it (or signal its whole group) once the command runs. What a berth process killed in the middle
 * of an `iscsiadm --logout` leaves: its command, alone.
 */
export async function killedWithCommand(options: {
  timeoutMs: number;
  lock?: string;
  /** The command ignores SIGTERM and SIGHUP. */
  trapTerm?: boolean;
  /** Send this to the process's whole process group (its own: started detached) instead of SIGKILL to it alone. */
  groupSignal?: NodeJS.Signals;
  beforeKill?: (pid: number) => Promise<void>;
}): Promise<KilledWithCommand> {
  const dir = await mkdtemp(path.join(tmpdir(), 'berth-orphan-'));
  const gate = path.join(dir, 'gate');
  const pidFile = path.join(dir, 'pid');
  let command = 0;
  const dispose = async (): Promise<void> => {
    if (command > 0) {
      try {
        process.kill(command, 'SIGKILL');
      } catch {
        // ended
      }
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await promisify(execFile)('mkfifo', [gate]);
    const script = `${options.trapTerm === true ? "trap '' TERM HUP; " : ''}echo $$ > ${pidFile}.tmp && mv ${pidFile}.tmp ${pidFile}; read x < ${gate}`;
    const code = [
      `const host = await import(${JSON.stringify(HOST_ENTRY)});`,
      options.lock === undefined ? '' : `await host.acquireFileLock(${JSON.stringify(options.lock)}, { timeoutMs: 10000, what: 'a test lock' });`,
      `host.createCommandRunner().run('sh', ['-c', ${JSON.stringify(script)}], { reject: false, timeoutMs: ${options.timeoutMs} });`,
      'setInterval(() => undefined, 1000);',
    ].join('\n');
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: 'ignore', detached: options.groupSignal !== undefined });
    const exited = once(child, 'exit');
    try {
      await once(child, 'spawn');
      await options.beforeKill?.(child.pid ?? 0);
      await createDeviceWaiter(createHostFs()).waitForPath(pidFile, { timeoutMs: 10_000, signal: AbortSignal.timeout(15_000) });
    } finally {
      if (options.groupSignal !== undefined && child.pid !== undefined) process.kill(-child.pid, options.groupSignal);
      else child.kill('SIGKILL');
      await exited;
    }
    command = Number((await readFile(pidFile, 'utf8')).trim());
    return { pid: child.pid ?? 0, command, finish: () => writeFile(gate, 'go\n'), dispose };
  } catch (error) {
    await dispose();
    throw error;
  }
}

/**
 * Write zeros into `<dir>/filler` until its file system is full (a real ENOSPC for disk-full
 * tests, on a tmpfs the test mounted); the filler's path, to delete for room again.
 */
export function fillFileSystem(dir: string): string {
  const filler = path.join(dir, 'filler');
  const fd = openSync(filler, 'w');
  try {
    for (;;) writeSync(fd, Buffer.alloc(4096));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    closeSync(fd);
  }
  return filler;
}
