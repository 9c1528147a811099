import type { CommandResult } from './types.js';

/** A command exited non-zero, timed out, was aborted, or could not be started. */
export class CommandError extends Error {
  override readonly name = 'CommandError';
  /** The redacted result; `exitCode` is -1 when the process was killed or never started. */
  readonly result: CommandResult;
  /** True when the executable does not exist (ENOENT): a missing tool, not a failing one. */
  readonly notFound: boolean;

  constructor(result: CommandResult, options: { notFound?: boolean; cause?: unknown } = {}) {
    super(CommandError.describe(result, options.notFound ?? false), { cause: options.cause });
    this.result = result;
    this.notFound = options.notFound ?? false;
  }

  private static describe(r: CommandResult, notFound: boolean): string {
    if (notFound) return `${r.command}: command not found`;
    const stuck = r.stuckPid === undefined ? '' : `; it did not die of SIGKILL and was left running as pid ${r.stuckPid} (stuck in the kernel, D state: I/O to a device or mount that does not answer)`;
    if (r.timedOut) return `${r.command}: timed out after ${Math.round(r.durationMs)} ms${stuck}`;
    if (r.aborted) return `${r.command}: aborted${stuck}`;
    const detail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-3).join(' | ');
    return `${r.command}: exit ${r.exitCode}${detail ? `: ${detail}` : ''}`;
  }
}

/** A device wait passed its deadline. */
export class WaitTimeoutError extends Error {
  override readonly name = 'WaitTimeoutError';
  constructor(
    readonly what: string,
    readonly timeoutMs: number,
  ) {
    super(`timed out after ${timeoutMs} ms waiting for ${what}`);
  }
}

/** A file lock stayed held by another live process past the deadline (`acquireFileLock`). */
export class LockTimeoutError extends Error {
  override readonly name = 'LockTimeoutError';
  constructor(
    /** The lock file. */
    readonly lockPath: string,
    /** What the lock protects, in words. */
    readonly what: string,
    readonly timeoutMs: number,
    /** The holder's pid; undefined while the holder is still writing the file. */
    readonly holderPid: number | undefined,
  ) {
    super(`${what}: the lock ${lockPath} is held by ${holderPid === undefined ? 'a process that is still writing it' : `pid ${holderPid}`} for more than ${timeoutMs} ms`);
  }
}

/** The errno code (`'ENOENT'`, `'EEXIST'`, …) of a Node system error; undefined for anything else. */
export function errnoOf(error: unknown): string | undefined {
  return error instanceof Error && 'code' in error && typeof error.code === 'string' ? error.code : undefined;
}

/** Whether a Node system error means "there is nothing at this path" (ENOENT, or ENOTDIR: a file where a directory was). */
export function isMissing(error: unknown): boolean {
  const code = errnoOf(error);
  return code === 'ENOENT' || code === 'ENOTDIR';
}
