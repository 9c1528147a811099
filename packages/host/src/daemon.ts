import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomically } from './atomic-file.js';
import { errnoOf } from './errors.js';
import { liveStartTicks, parseProcStat, processCommandLines, type ProcStat } from './proc-stat.js';

/** Options of `startDaemon`. */
export interface StartDaemonOptions {
  /** The executable (a name looked up on PATH, or a path). */
  file: string;
  /** Its arguments, passed as they are (never through a shell). */
  args: readonly string[];
  /** Where the daemon's stdout and stderr go (appended; created with mode 0600). */
  logFile: string;
  /** Where its pid is recorded (written atomically; the directory must exist). */
  pidFile: string;
  /** Extra environment variables, merged over this process's own. */
  env?: Record<string, string>;
}

/** What `daemonStatus` found. */
export interface DaemonStatus {
  /** True when the recorded pid is alive, not a zombie, and still runs the recorded executable. */
  running: boolean;
  /** The recorded pid (also when it is no longer running). */
  pid?: number;
}

/** Options of `stopDaemon`. */
export interface StopDaemonOptions {
  /** How long to wait for the daemon to exit after the first signal, before SIGKILL. */
  timeoutMs: number;
  /**
   * The first signal (default SIGTERM). `null` sends none: the caller already asked the daemon to
   * leave another way (its own control command) and only wants the wait and the SIGKILL fallback.
   */
  signal?: NodeJS.Signals | null;
}

/** What `stopDaemon` did. */
export interface StopDaemonResult {
  /** True when a daemon was running when the call began. */
  wasRunning: boolean;
  pid?: number;
  /** True when it had to be killed with SIGKILL. */
  killed: boolean;
}

/** A daemon could not be started (missing executable, already running, spawn failure). */
export class DaemonError extends Error {
  override readonly name = 'DaemonError';
  constructor(
    message: string,
    /** Why: the executable is missing, the pid file names a live daemon, or the spawn failed. */
    readonly reason: 'not-found' | 'already-running' | 'spawn-failed',
    options: { cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
  }
}

/** What the pid file holds: enough to tell the daemon from a process that reused its pid. */
interface PidRecord {
  pid: number;
  /** The executable as started (compared with argv[0] in /proc/<pid>/cmdline). */
  file?: string;
  /** Field 22 of /proc/<pid>/stat: the start time in clock ticks since boot. */
  startTicks?: string;
}

// After SIGKILL the kernel needs a moment to tear the process down (longer when it is in D state).
const KILL_WAIT_MS = 5_000;
const FIRST_POLL_MS = 2;
const MAX_POLL_MS = 50;

// Exit promises of the daemons this process started: waiting on them wakes at the exit itself,
// where a daemon started by another process can only be polled (/proc sends no events).
const exits = new Map<number, Promise<void>>();

/**
 * Start `file` as a daemon that outlives this process: its own session (setsid), stdin from
 * /dev/null, stdout and stderr appended to `logFile`, not holding this process's event loop.
 * Records `{pid, file, startTicks}` in `pidFile` (atomic rename). Throws `DaemonError` when the
 * executable is missing or when the pid file names a daemon that is still running.
 */
export async function startDaemon(options: StartDaemonOptions): Promise<{ pid: number }> {
  const current = await daemonStatus(options.pidFile);
  if (current.running) {
    throw new DaemonError(`${options.file} is already running as pid ${current.pid} (${options.pidFile})`, 'already-running');
  }
  // Before the spawn: who starts what. Killed between the spawn and the record below, this process
  // leaves a daemon no pid file names; the next `daemonStatus` finds it by its command line and
  // adopts it (`adoptStarted`) instead of starting a second one beside it — or, for tgtd, finding
  // "a tgtd berth did not start" on its control port for good.
  const starter = { pid: process.pid, startTicks: (await startTicksOf(process.pid)) ?? '' };
  await writeFileAtomically(options.pidFile, `${JSON.stringify({ starting: starter, file: options.file, args: options.args })}\n`);
  const logFd = openSync(options.logFile, 'a', 0o600);
  let child: ChildProcess;
  let exited: Promise<void>;
  try {
    child = spawn(options.file, [...options.args], {
      detached: true,
      shell: false,
      stdio: ['ignore', logFd, logFd],
      env: { ...process.env, ...options.env },
    });
    // Listen before anything else runs, so even an instant exit is seen.
    exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        child.off('spawn', onSpawn);
        reject(
          error.code === 'ENOENT'
            ? new DaemonError(`${options.file}: command not found`, 'not-found', { cause: error })
            : new DaemonError(`cannot start ${options.file}: ${error.message}`, 'spawn-failed', { cause: error }),
        );
      };
      const onSpawn = (): void => {
        child.off('error', onError);
        resolve();
      };
      child.once('error', onError);
      child.once('spawn', onSpawn);
    });
  } catch (error) {
    // Nothing started: the "starting" record names nothing.
    await rm(options.pidFile, { force: true });
    throw error;
  } finally {
    // The child holds its own copy of the descriptor.
    closeSync(logFd);
  }
  const pid = child.pid;
  if (pid === undefined) throw new DaemonError(`cannot start ${options.file}: no pid`, 'spawn-failed');
  exits.set(pid, exited);
  void exited.then(() => exits.delete(pid));
  child.unref();
  const startTicks = await startTicksOf(pid);
  const record: PidRecord = { pid, file: options.file, ...(startTicks === undefined ? {} : { startTicks }) };
  await writeFileAtomically(options.pidFile, `${JSON.stringify(record)}\n`);
  return { pid };
}

/**
 * Whether the daemon recorded in `pidFile` runs: the pid exists, is not a zombie, started when the
 * record says, and its argv[0] is the recorded executable — a recycled pid is not mistaken for it.
 * A pid file holding only a number (written by another tool) is checked for life alone.
 */
export async function daemonStatus(pidFile: string): Promise<DaemonStatus> {
  const record = (await readPidRecord(pidFile)) ?? (await adoptStarted(pidFile));
  if (record === undefined) return { running: false };
  return { running: await isSameProcess(record), pid: record.pid };
}

/** What `startDaemon` writes before its spawn. */
interface StartingRecord {
  starting: { pid: number; startTicks: string };
  file: string;
  args: string[];
}

/**
 * A pid file that still says "starting": its starter died between the spawn and the record (or
 * is at it now). While the starter runs, nothing is decided. Once it is dead, the daemon it may
 * have started is the process whose command line is exactly the file and arguments it recorded (a
 * pid file path, a control port or socket in them makes that one daemon's): adopted — its record
 * written — or, when there is none, the stale record removed.
 */
async function adoptStarted(pidFile: string): Promise<PidRecord | undefined> {
  const starting = await readStartingRecord(pidFile);
  if (starting === undefined) return undefined;
  if (await processRuns(starting.starting.pid, starting.starting.startTicks)) return undefined;
  const wanted = [starting.file, ...starting.args].join('\0');
  for (const { pid, argv } of processCommandLines()) {
    if (argv.join('\0') !== wanted) continue;
    const startTicks = await startTicksOf(pid);
    const record: PidRecord = { pid, file: starting.file, ...(startTicks === undefined ? {} : { startTicks }) };
    await writeFileAtomically(pidFile, `${JSON.stringify(record)}\n`);
    return record;
  }
  await rm(pidFile, { force: true });
  return undefined;
}

async function readStartingRecord(pidFile: string): Promise<StartingRecord | undefined> {
  const text = await readFile(pidFile, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const value = JSON.parse(text) as Partial<StartingRecord>;
    const starter = value.starting;
    if (typeof starter?.pid !== 'number' || typeof starter.startTicks !== 'string' || typeof value.file !== 'string' || !Array.isArray(value.args)) return undefined;
    if (!value.args.every((arg): arg is string => typeof arg === 'string')) return undefined;
    return { starting: { pid: starter.pid, startTicks: starter.startTicks }, file: value.file, args: value.args };
  } catch {
    return undefined;
  }
}

/**
 * Stop the daemon recorded in `pidFile`: send `signal` (default SIGTERM), wait up to `timeoutMs`
 * for it to exit (waking on its exit when this process started it, otherwise on short polls of
 * /proc), then SIGKILL and wait again. Removes the pid file. A daemon that is not running is
 * success (`wasRunning: false`).
 */
export async function stopDaemon(pidFile: string, options: StopDaemonOptions): Promise<StopDaemonResult> {
  const record = (await readPidRecord(pidFile)) ?? (await adoptStarted(pidFile));
  if (record === undefined || !(await isSameProcess(record))) {
    await removePidFile(pidFile, record?.pid);
    return { wasRunning: false, ...(record ? { pid: record.pid } : {}), killed: false };
  }
  const signal = options.signal === undefined ? 'SIGTERM' : options.signal;
  if (signal !== null) sendSignal(record.pid, signal);
  let killed = false;
  if (!(await waitForExit(record, options.timeoutMs))) {
    killed = true;
    sendSignal(record.pid, 'SIGKILL');
    if (!(await waitForExit(record, KILL_WAIT_MS))) {
      throw new Error(`pid ${record.pid} (${record.file ?? 'daemon'}) did not exit ${KILL_WAIT_MS} ms after SIGKILL`);
    }
  }
  await removePidFile(pidFile, record.pid);
  return { wasRunning: true, pid: record.pid, killed };
}

async function readPidRecord(pidFile: string): Promise<PidRecord | undefined> {
  let text: string;
  try {
    text = await readFile(pidFile, 'utf8');
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return undefined;
    throw error;
  }
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return { pid: Number(trimmed) };
  try {
    const parsed: unknown = JSON.parse(trimmed);
    if (typeof parsed !== 'object' || parsed === null) return undefined;
    const { pid, file, startTicks } = parsed as Record<string, unknown>;
    if (typeof pid !== 'number' || !Number.isInteger(pid) || pid <= 0) return undefined;
    return {
      pid,
      ...(typeof file === 'string' ? { file } : {}),
      ...(typeof startTicks === 'string' ? { startTicks } : {}),
    };
  } catch {
    // A torn or foreign pid file names no daemon berth can vouch for.
    return undefined;
  }
}

async function isSameProcess(record: PidRecord): Promise<boolean> {
  const stat = await readProcStat(record.pid);
  if (stat === undefined || stat.state === 'Z' || stat.state === 'X') return false;
  if (record.startTicks !== undefined && stat.startTicks !== record.startTicks) return false;
  if (record.file !== undefined) {
    const cmdline = await readFile(`/proc/${record.pid}/cmdline`, 'utf8').catch(() => '');
    const argv0 = cmdline.split('\0')[0] ?? '';
    if (argv0 !== record.file && path.basename(argv0) !== path.basename(record.file)) return false;
  }
  return true;
}

/**
 * Whether the process has finished exiting. Not `!isSameProcess`: while a process exits, its
 * cmdline reads empty before its files (a listening socket) are closed, so only its end as a
 * zombie, or its disappearance, says the resources are free.
 */
async function isGone(record: PidRecord): Promise<boolean> {
  return !(await processRuns(record.pid, record.startTicks));
}

async function readProcStat(pid: number): Promise<ProcStat | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  return parseProcStat(text);
}

async function startTicksOf(pid: number): Promise<string | undefined> {
  return (await readProcStat(pid))?.startTicks;
}

/**
 * The start time of a live process (field 22 of /proc/<pid>/stat, clock ticks since boot), or
 * undefined when it is gone or a zombie. With the pid it names one process for good: a lock or pid
 * file that records both is not fooled by a recycled pid.
 */
export async function processStartTicks(pid: number): Promise<string | undefined> {
  return liveStartTicks(await readProcStat(pid));
}

/**
 * Whether the process a lock, marker or pid file names still runs: `pid` is not gone (nor a
 * zombie) and, unless `startTicks` is empty or absent, started at that time (a recycled pid is
 * another process).
 */
export async function processRuns(pid: number, startTicks: string | undefined): Promise<boolean> {
  const ticks = await processStartTicks(pid);
  return ticks !== undefined && (startTicks === undefined || startTicks === '' || ticks === startTicks);
}

/** Wait until the process is gone (or a zombie); false when `timeoutMs` passes first. */
async function waitForExit(record: PidRecord, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  const exited = exits.get(record.pid);
  let pollMs = FIRST_POLL_MS;
  for (;;) {
    if (await isGone(record)) return true;
    const left = deadline - Date.now();
    if (left <= 0) return false;
    const wait = Math.min(pollMs, left);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, wait);
      }),
      ...(exited ? [exited] : []),
    ]);
    clearTimeout(timer);
    pollMs = Math.min(pollMs * 2, MAX_POLL_MS);
  }
}

function sendSignal(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (error) {
    // ESRCH: it exited between the check and the signal, which is what was wanted.
    if (errnoOf(error) !== 'ESRCH') throw error;
  }
}

/** Remove the pid file unless it now names another pid (a daemon started meanwhile). */
async function removePidFile(pidFile: string, pid: number | undefined): Promise<void> {
  const now = await readPidRecord(pidFile).catch(() => undefined);
  if (now !== undefined && pid !== undefined && now.pid !== pid) return;
  await rm(pidFile, { force: true });
}
