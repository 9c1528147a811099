import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeSync } from 'node:fs';
import path from 'node:path';
import { constants } from 'node:os';
import { StringDecoder } from 'node:string_decoder';
import { getSystemErrorName } from 'node:util';
import { fileURLToPath } from 'node:url';
import { liveStartTicks, processCommandLines, processRunsSync, readProcStatSync } from './proc-stat.js';

/** What the runner hears from a command it started, whoever started it. */
export interface ChildEvents {
  stdout(chunk: string): void;
  stderr(chunk: string): void;
  /** The command could not be started (ENOENT, EACCES, ...); `close` follows. */
  error(error: NodeJS.ErrnoException): void;
  /** It exited and closed its output (Node's `close`): the exit code, or the signal that killed it. */
  close(code: number | null, signal: NodeJS.Signals | null): void;
}

/** A started command, as the runner handles it. */
export interface Child {
  /** Send `signal` (nothing once it ended). */
  kill(signal: NodeJS.Signals): void;
  /** It exited (or was never started). */
  readonly ended: boolean;
  /**
   * Stop waiting for it: it no longer keeps this process alive and its end is never reported.
   * For a command that SIGKILL did not end (uninterruptible sleep in the kernel). Its pid, when known.
   */
  abandon(): number | undefined;
}

/** What a command starts with: its environment, and its stdin (`undefined`: /dev/null). */
export interface StartOptions {
  env: NodeJS.ProcessEnv;
  input: string | undefined;
  /** Start it with Node's spawn even when there is a spawner. */
  node?: boolean;
  /**
   * The runner's timeout of the command (ms): the spawner applies it itself only once this process
   * is gone (it then stays until its commands ended; see the C file).
   */
  timeoutMs?: number;
}

/** Starts `file` with `args` (no shell); throws at once for what Node refuses (a NUL byte). */
export type StartCommand = (file: string, args: readonly string[], options: StartOptions, events: ChildEvents) => Child;

// Commands still running when this process exits normally get SIGTERM instead of outliving it.
const running = new Set<ChildProcess>();
let exitHookInstalled = false;
function onExit(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const c of running) c.kill('SIGTERM');
    broker?.terminateAllSync();
  });
}

/** `startTicksOf` could not read /proc for another reason than the process being gone (EMFILE, say). */
const UNREADABLE = '?';

/**
 * The start time of a live process, read synchronously (berth signals from its exit hook too);
 * undefined when it is gone or a zombie, `UNREADABLE` when /proc could not be read for another
 * reason.
 */
function startTicksOf(pid: number): string | undefined {
  const stat = readProcStatSync(pid);
  return stat === 'unreadable' ? UNREADABLE : liveStartTicks(stat);
}

/**
 * Send `signal` to the command the spawner started for `job`, if it still runs. Its pid is not
 * berth's child (the spawner reaps it, or init once the spawner is gone), so the pid may have
 * been reused by the time berth signals (this machine's pid_max is 32768): only a process with
 * the start time seen when it started is signalled.
 */
function signalOwn(job: { pid?: number; startTicks?: string }, signal: NodeJS.Signals): void {
  if (job.pid === undefined || job.startTicks === undefined) return;
  // Where /proc could not be read (then or now), the pid is signalled as Node's spawn would.
  const now = startTicksOf(job.pid);
  if (now === undefined || (now !== job.startTicks && now !== UNREADABLE && job.startTicks !== UNREADABLE)) return;
  try {
    process.kill(job.pid, signal);
  } catch {
    // ESRCH: it ended in between.
  }
}

/** Start the command with Node's own `child_process.spawn` (a fork of this process). */
export const startWithNode: StartCommand = (file, args, options, events) => {
  // Its own process group (`detached`), as berth-spawner starts it: a terminal's Ctrl-C reaches
  // berth, which cancels and rolls back, never the command half-way through.
  const child = spawn(file, [...args], { env: options.env, shell: false, detached: true, stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  if (child.pid !== undefined) {
    onExit();
    running.add(child);
  }
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', events.stdout);
  child.stderr?.on('data', events.stderr);
  if (child.stdin) {
    // A command that exits without reading its input closes the pipe: EPIPE is no failure of ours.
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input);
  }
  child.once('error', events.error);
  child.once('close', (code: number | null, signal: NodeJS.Signals | null) => {
    running.delete(child);
    events.close(code, signal);
  });
  return {
    kill: (signal) => {
      child.kill(signal);
    },
    get ended() {
      return child.exitCode !== null || child.signalCode !== null;
    },
    abandon: () => {
      running.delete(child);
      child.removeAllListeners('close');
      // A pending write to a command that never reads it would keep this process alive.
      child.stdin?.destroy();
      child.stdout?.destroy();
      child.stderr?.destroy();
      child.unref();
      return child.pid;
    },
  };
};

/** Signal names by number; where two share one (SIGABRT/SIGIOT, SIGIO/SIGPOLL), the first, as Node names it. */
const SIGNAL_NAMES = new Map<number, NodeJS.Signals>();
for (const [name, number] of Object.entries(constants.signals)) if (!SIGNAL_NAMES.has(number)) SIGNAL_NAMES.set(number, name as NodeJS.Signals);

/** The error Node's spawn gives for a command it could not start (`spawn losetup ENOENT`). */
function startError(file: string, errno: number): NodeJS.ErrnoException {
  const code = getSystemErrorName(-errno);
  return Object.assign(new Error(`spawn ${file} ${code}`), { code, errno: -errno, syscall: `spawn ${file}`, path: file });
}

interface Job {
  file: string;
  events: ChildEvents;
  out: StringDecoder;
  err: StringDecoder;
  /** The command's pid, once the spawner started it. */
  pid?: number;
  /** Its start time then (`startTicksOf`): a signal goes to that process only, never to a pid reused since. */
  startTicks?: string;
  ended: boolean;
  /** Start it with Node instead (the spawner could not be started at all, so it never ran). */
  rerun: () => void;
  /** What Node started after `rerun`. */
  replacement?: Child;
}

/**
 * The client of `berth-spawner` (src/spawner/berth-spawner.c, built into dist/): one small
 * process per Node process that starts the commands with posix_spawn, so that this process,
 * however large, never forks for a command (see the C file and the README). The runner keeps every
 * policy; the spawner only starts, relays, signals and reaps.
 */
class Broker {
  private readonly jobs = new Map<number, Job>();
  private nextId = 1;
  private buffered: Buffer = Buffer.alloc(0);
  private alive = true;

  constructor(private readonly child: ChildProcess) {
    child.stdout?.on('data', (chunk: Buffer) => this.receive(chunk));
    child.stdin?.on('error', () => undefined);
    // Could not be started at all: nothing it was given ran; Node starts it instead.
    child.once('error', () => this.lost(true));
    // 'close', not 'exit': what it wrote before it died (finished commands' ends) is read first.
    child.once('close', () => this.lost(false));
    this.idle();
  }

  get usable(): boolean {
    return this.alive;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  start(file: string, args: readonly string[], options: StartOptions, events: ChildEvents): Child {
    const id = this.nextId;
    this.nextId = id >= 0xffff_ffff ? 1 : id + 1;
    const job: Job = {
      file,
      events,
      out: new StringDecoder('utf8'),
      err: new StringDecoder('utf8'),
      ended: false,
      rerun: () => {
        job.replacement = startWithNode(file, args, options, events);
      },
    };
    this.jobs.set(id, job);
    if (this.jobs.size === 1) this.busy();
    onExit();
    this.child.stdin?.write(runFrame(id, file, args, options));
    return {
      kill: (signal) => {
        if (job.replacement) job.replacement.kill(signal);
        else if (!job.ended && this.alive) this.child.stdin?.write(killFrame(id, constants.signals[signal]));
      },
      get ended() {
        return job.replacement ? job.replacement.ended : job.ended;
      },
      abandon: () => {
        if (job.replacement) return job.replacement.abandon();
        // Its frames (output, end) are dropped from now on; the spawner still reaps it.
        if (!job.ended) this.end(id, job);
        return job.pid;
      },
    };
  }

  /**
   * SIGTERM to every command still running (from the process's `exit`, so synchronously): by pid
   * to those the spawner started; a kill frame for those it has not started yet, when nothing else
   * is waiting in the pipe (a frame written into the middle of another would garble both). One
   * whose start is still in the pipe behind a large write is never started: the spawner exits at
   * the end of its input.
   */
  terminateAllSync(): void {
    const stdin = this.child.stdin as (NodeJS.WritableStream & { writableLength?: number; _handle?: { fd?: number } }) | null;
    const fd = stdin?._handle?.fd;
    for (const [id, job] of this.jobs) {
      if (job.ended || job.replacement) continue;
      if (job.pid !== undefined) {
        signalOwn(job, 'SIGTERM');
        continue;
      }
      if (fd === undefined || fd < 0 || !this.alive || (stdin?.writableLength ?? 1) !== 0) continue;
      try {
        writeSync(fd, killFrame(id, constants.signals.SIGTERM));
      } catch {
        return;
      }
    }
  }

  private busy(): void {
    this.child.ref();
    (this.child.stdout as { ref?: () => void } | null)?.ref?.();
  }

  private idle(): void {
    this.child.unref();
    (this.child.stdout as { unref?: () => void } | null)?.unref?.();
    (this.child.stdin as { unref?: () => void } | null)?.unref?.();
  }

  private receive(chunk: Buffer): void {
    let data = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    let at = 0;
    while (data.length - at >= 9) {
      const length = data.readUInt32LE(at + 1);
      if (data.length - at - 5 < length) break;
      const type = String.fromCharCode(data[at] ?? 0);
      const id = data.readUInt32LE(at + 5);
      this.frame(type, id, data.subarray(at + 9, at + 5 + length));
      at += 5 + length;
    }
    data = data.subarray(at);
    // A copy, so that the chunk Node handed over is not kept alive by a small remainder.
    this.buffered = data.length === 0 ? Buffer.alloc(0) : Buffer.from(data);
  }

  private frame(type: string, id: number, body: Buffer): void {
    const job = this.jobs.get(id);
    if (job === undefined) return;
    switch (type) {
      case 'P':
        job.pid = body.readInt32LE(0);
        {
          // Read by the spawner before it could reap the command; read here only from an older one.
          const ticks = body.length >= 12 ? body.readBigUInt64LE(4) : 0n;
          job.startTicks = ticks > 0n ? ticks.toString() : startTicksOf(job.pid);
        }
        return;
      case 'O': {
        const text = job.out.write(body);
        if (text !== '') job.events.stdout(text);
        return;
      }
      case 'E': {
        const text = job.err.write(body);
        if (text !== '') job.events.stderr(text);
        return;
      }
      case 'F': {
        const errno = body.readInt32LE(0);
        this.end(id, job);
        // ENOSYS: this spawner cannot change directory (glibc < 2.29); it started nothing.
        if (errno === constants.errno.ENOSYS) {
          job.rerun();
          return;
        }
        job.events.error(startError(job.file, errno));
        job.events.close(null, null);
        return;
      }
      case 'X': {
        this.end(id, job);
        const rest = job.out.end();
        if (rest !== '') job.events.stdout(rest);
        const restErr = job.err.end();
        if (restErr !== '') job.events.stderr(restErr);
        const code = body.readInt32LE(0);
        const signal = body.readInt32LE(4);
        job.events.close(signal === 0 ? code : null, signal === 0 ? null : (SIGNAL_NAMES.get(signal) ?? null));
        return;
      }
      default:
        return;
    }
  }

  private end(id: number, job: Job): void {
    job.ended = true;
    this.jobs.delete(id);
    if (this.jobs.size === 0) this.idle();
  }

  /**
   * The spawner is gone. `neverRan`: it could not be started, so nothing it was given ran and
   * Node starts those commands; otherwise what it was running has an unknown end, reported as a
   * failure. Later commands are started by Node.
   */
  private lost(neverRan: boolean): void {
    if (!this.alive) return;
    this.alive = false;
    broker = undefined;
    spawnerUnusable = true;
    for (const [id, job] of [...this.jobs]) {
      this.end(id, job);
      if (neverRan) {
        job.rerun();
        continue;
      }
      // Reported failed, so it must not go on behind berth's back (a retry would run it twice).
      signalOwn(job, 'SIGTERM');
      job.events.error(Object.assign(new Error('berth-spawner exited while the command ran'), { code: 'ESPAWNER' }));
      job.events.close(null, null);
    }
  }
}

function str(value: string): Buffer {
  const bytes = Buffer.from(value, 'utf8');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32LE(bytes.length, 0);
  return Buffer.concat([head, bytes]);
}

function u32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(value >>> 0, 0);
  return b;
}

function withHead(type: string, body: Buffer): Buffer {
  const head = Buffer.allocUnsafe(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32LE(body.length, 1);
  return Buffer.concat([head, body]);
}

function runFrame(id: number, file: string, args: readonly string[], options: StartOptions): Buffer {
  const env = Object.entries(options.env).filter((entry): entry is [string, string] => entry[1] !== undefined);
  const timeout = options.timeoutMs === undefined || !Number.isFinite(options.timeoutMs) ? 0 : Math.min(Math.max(1, Math.ceil(options.timeoutMs)), 0xffff_ffff);
  const parts: Buffer[] = [u32(id), u32(options.input === undefined ? 0 : 1), u32(timeout), str(workingDirectory()), u32(args.length + 1), str(file)];
  for (const arg of args) parts.push(str(arg));
  parts.push(u32(env.length));
  for (const [name, value] of env) parts.push(str(`${name}=${value}`));
  if (options.input !== undefined) parts.push(str(options.input));
  return withHead('R', Buffer.concat(parts));
}

/** This process's working directory, or undefined when it was removed. */
function currentDirectory(): string | undefined {
  try {
    return process.cwd();
  } catch {
    return undefined;
  }
}

/** Where the spawner started: its own working directory, which its commands inherit. */
let spawnerDirectory: string | undefined;

/**
 * The directory a command must run in, when it is not the spawner's own: '' when this process
 * has not moved since the spawner started (the common case: no chdir in the child), or when its
 * directory was removed (Node's spawn would inherit it as it is; the spawner's is the nearest).
 */
function workingDirectory(): string {
  const now = currentDirectory();
  return now === undefined || now === spawnerDirectory ? '' : now;
}

function killFrame(id: number, signal: number): Buffer {
  return withHead('K', Buffer.concat([u32(id), u32(signal)]));
}

/**
 * The spawner's executable, when the build made it: beside this module in dist/, or in dist/ seen
 * from src/ (tests run the sources).
 */
const SPAWNER_PATH = [new URL('./berth-spawner', import.meta.url), new URL('../dist/berth-spawner', import.meta.url)].map((url) => fileURLToPath(url)).find((file) => existsSync(file));

let broker: Broker | undefined;
let spawnerUnusable = false;

/**
 * Who starts this process's commands: `berth-spawner`, or `node` (Node's spawn) when the build
 * made no spawner, when `BERTH_SPAWNER=0`, or after the spawner was lost.
 */
export function commandStarter(): 'berth-spawner' | 'node' {
  return SPAWNER_PATH !== undefined && process.env.BERTH_SPAWNER !== '0' && !spawnerUnusable ? 'berth-spawner' : 'node';
}

/** The pid of this process's berth-spawner while it runs (its children are the commands: benches read their CPU there). */
export function spawnerPid(): number | undefined {
  return broker?.usable ? broker.pid : undefined;
}

function theBroker(): Broker | undefined {
  if (broker?.usable) return broker;
  if (SPAWNER_PATH === undefined || commandStarter() === 'node') return undefined;
  // One fork of this process, once; the spawner's own stderr is not the commands' (they have pipes).
  spawnerDirectory = currentDirectory();
  let child: ChildProcess;
  try {
    // Its command line names this process for good (pid and start time): while this process's
    // commands outlive it, the spawner stands for them (`commandsOutlive`).
    child = spawn(SPAWNER_PATH, [SPAWNER_FOR, `${process.pid}:${ownStartTicks()}`], { stdio: ['pipe', 'pipe', 'ignore'], env: {} });
  } catch {
    // Node throws at once for some errors (ETXTBSY while a build rewrites the file): Node's spawn then.
    spawnerUnusable = true;
    return undefined;
  }
  broker = new Broker(child);
  return broker;
}

/** This process's start time (`/proc/self/stat`), '' when it cannot be read. */
function ownStartTicks(): string {
  const ticks = startTicksOf(process.pid);
  return ticks === undefined || ticks === UNREADABLE ? '' : ticks;
}

const SPAWNER_FOR = '--for';

/**
 * Whether commands that process `pid` (started at `startTicks`, when known; any dead process when
 * `pid` is undefined) ran through its berth-spawner may still run though the process itself is gone: a live berth-spawner started for
 * it (`berth-spawner --for <pid>:<ticks>`) stays until the last of them ended (or its timeout
 * killed it). A lock, marker or operation of a dead process counts as held while this is true: a
 * `iscsiadm --logout` its SIGKILLed berth left running must end before another process acts on
 * the target. One read of /proc and of each process's command line (a zombie's is empty): callers
 * ask only after finding the process itself dead. Synchronous: lease checks are.
 */
export function commandsOutlive(pid?: number, startTicks?: string): boolean {
  for (const { argv } of processCommandLines()) {
    if (path.basename(argv[0] ?? '') !== 'berth-spawner' || argv[1] !== SPAWNER_FOR) continue;
    // `<pid>:<start time>`, the argument after `--for`.
    const [forPid = '', ticks = ''] = (argv[2] ?? '').split(':');
    if (pid === undefined) {
      // Any process's: only one that is gone (a live berth's spawner stands for nobody dead).
      if (Number(forPid) > 0 && processRunsSync(Number(forPid)) === false) return true;
      continue;
    }
    if (forPid !== String(pid)) continue;
    if (startTicks === undefined || startTicks === '' || ticks === '' || ticks === startTicks) return true;
  }
  return false;
}

const hasNul = (value: string): boolean => value.includes('\0');

/**
 * Start the command through berth-spawner when there is one, else with Node's spawn. What Node
 * refuses before starting anything (a NUL byte in the file, an argument or the environment) goes
 * to Node's spawn, so that the refusal reads as Node's.
 */
export const startCommand: StartCommand = (file, args, options, events) => {
  if (options.node === true || file === '' || hasNul(file) || args.some(hasNul) || Object.entries(options.env).some(([k, v]) => hasNul(k) || (v !== undefined && hasNul(v)))) {
    return startWithNode(file, args, options, events);
  }
  return theBroker()?.start(file, args, options, events) ?? startWithNode(file, args, options, events);
};
