/**
 * The narrow contracts of `@berth/host`: everything berth does to the machine goes through these.
 * Drivers and backends receive them from the plugin context; the simulated host in
 * `@berth/simhost` supplies the same interfaces pointed at its own root and PATH.
 */

/** Options of one command run. */
export interface RunOptions {
  /** Kill the command after this many milliseconds (default: the runner's default, 30 s). */
  timeoutMs?: number;
  /** Abort the command (SIGTERM, then SIGKILL) when this signal fires. */
  signal?: AbortSignal;
  /** Text written to the command's standard input. */
  input?: string;
  /** Extra environment variables (merged over the runner's environment). */
  env?: Record<string, string>;
  /** Values to replace with `***` wherever the command line or output is logged or put in an error. */
  secrets?: readonly string[];
  /** When false, a non-zero exit code is returned, not thrown (default: true). */
  reject?: boolean;
  /**
   * Only for a command that changes nothing (a listing, a read): when SIGKILL does not end it —
   * it sleeps in the kernel (D state) on I/O that does not answer — the call fails 3 s later
   * without it (`stuckPid`) instead of waiting as long as that I/O hangs. Never for a command that
   * acts (a logout, a detach, a flush): it may still act when its I/O ends, after the caller let go
   * of the locks that keep others off what it acts on. Default false: wait for it to end.
   */
  abandonIfStuck?: boolean;
}

/** What a finished command returned. */
export interface CommandResult {
  /** The command line for humans, secrets redacted. */
  command: string;
  /** Exit code; -1 when the process was killed (timeout, abort, signal). */
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
  /** True when the command was killed because its timeout passed. */
  timedOut: boolean;
  /** True when the command was killed because its signal fired. */
  aborted: boolean;
  /** True when the executable was not found (only set then); `exitCode` is -1. */
  notFound?: boolean;
  /**
   * Set when the command was killed (timeout, abort) but SIGKILL did not end it: it sleeps in the
   * kernel (D state, I/O that does not answer) and was left running as this pid; the call failed
   * without waiting for it. Whatever it was doing may still happen when that I/O ends.
   */
  stuckPid?: number;
}

/** Runs external programs: an executable and an argument array, never a shell. */
export interface CommandRunner {
  /** Run `file` with `args`; throws `CommandError` on failure unless `reject: false`. */
  run(file: string, args: readonly string[], options?: RunOptions): Promise<CommandResult>;
  /**
   * The directories a command run without an `env.PATH` of its own is looked up in, in order (the
   * PATH its process gets). Optional: a runner that cannot tell (a replay, a wrapper) leaves it out,
   * and callers then ask a process (`printenv PATH`).
   */
  searchPath?(): readonly string[];
}

/** Minimal stat of a path on the host. */
export interface HostStat {
  isFile: boolean;
  isDirectory: boolean;
  isSymbolicLink: boolean;
  isBlockDevice: boolean;
  size: number;
}

/**
 * The machine's filesystem seen from a root: host paths such as `/sys/block` or `/dev/berth`
 * are resolved under `root` (`/` in production, the simulated host's directory in tests).
 */
export interface HostFs {
  /** The root every host path is resolved under. */
  readonly root: string;
  /** The real path of a host path (`/dev/sda` → `<root>/dev/sda`). */
  resolve(hostPath: string): string;
  /** The host path of a real path under root (inverse of `resolve`). */
  toHostPath(realPath: string): string;
  readFile(hostPath: string): Promise<string>;
  /** Read a file, or `undefined` when it does not exist. */
  readFileIfExists(hostPath: string): Promise<string | undefined>;
  writeFile(hostPath: string, data: string, options?: { mode?: number }): Promise<void>;
  exists(hostPath: string): Promise<boolean>;
  /** Entries of a directory, `[]` when it does not exist. */
  readdir(hostPath: string): Promise<string[]>;
  /** Target of a symlink, or `undefined` when the path is not a symlink. */
  readlink(hostPath: string): Promise<string | undefined>;
  /** Create (or atomically replace) a symlink at `linkHostPath` pointing at `target`. */
  symlink(target: string, linkHostPath: string): Promise<void>;
  /** Remove a file or symlink; no error when it is already gone. */
  unlink(hostPath: string): Promise<void>;
  mkdir(hostPath: string, options?: { mode?: number }): Promise<void>;
  /** Remove a directory tree; no error when it is already gone. */
  rm(hostPath: string): Promise<void>;
  stat(hostPath: string): Promise<HostStat | undefined>;
  /** Resolve symlinks, returning a host path. */
  realpath(hostPath: string): Promise<string>;
}

/** Options of a device wait. */
export interface WaitOptions {
  /** Give up after this many milliseconds. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** Fallback poll interval in ms when filesystem events are not delivered (default 50). */
  pollMs?: number;
  /** What is awaited, in words, for the timeout error (default: derived from the path). */
  what?: string;
}

/** Waits for host paths (device nodes, sysfs entries) to appear or disappear, waking on fs events. */
export interface DeviceWaiter {
  /** Resolve when `hostPath` exists; throws `WaitTimeoutError` when the deadline passes. */
  waitForPath(hostPath: string, options: WaitOptions): Promise<void>;
  /** Resolve when `hostPath` no longer exists; throws `WaitTimeoutError` at the deadline. */
  waitForGone(hostPath: string, options: WaitOptions): Promise<void>;
  /**
   * Resolve with the first non-undefined value of `probe`, re-run whenever something changes
   * under `watchHostDir` (and at the poll interval); throws `WaitTimeoutError` at the deadline.
   */
  waitUntil<T>(
    watchHostDir: string,
    probe: () => Promise<T | undefined>,
    options: WaitOptions,
  ): Promise<T>;
}

/** Everything a plugin may use to reach the machine. */
export interface HostServices {
  runner: CommandRunner;
  fs: HostFs;
  waiter: DeviceWaiter;
}
