import { performance } from 'node:perf_hooks';
import { delimiter } from 'node:path';
import { CommandError } from './errors.js';
import { formatCommand, redact } from './redact.js';
import { startCommand, type Child } from './spawner.js';
import type { CommandResult, CommandRunner, RunOptions } from './types.js';

/** The slice of a logger the runner writes to (pino's shape). */
export interface CommandLogger {
  debug(obj: Record<string, unknown>, msg?: string): void;
  /** A command left running because SIGKILL did not end it (`CommandResult.stuckPid`). */
  warn?(obj: Record<string, unknown>, msg?: string): void;
}

/** Options of `createCommandRunner`. */
export interface CommandRunnerOptions {
  /** Timeout of a command that names none, in ms (default 30 000). */
  defaultTimeoutMs?: number;
  /** Environment added to every command, over the process's own. */
  env?: Record<string, string>;
  /** Directories searched before PATH (the simulated host puts its fake tools here). */
  pathPrepend?: readonly string[];
  /** Where each finished command is logged at debug level, secrets masked. */
  logger?: CommandLogger;
  /**
   * Start commands with Node's own spawn even when berth-spawner was built (default false: the
   * spawner, when there is one; see `commandStarter()`).
   */
  nodeSpawn?: boolean;
}

/** The default timeout of a command, in ms. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

// After SIGTERM, a command that ignores it gets SIGKILL this much later.
const FORCE_KILL_AFTER_MS = 2_000;

/**
 * After SIGKILL, a command still there this much later is left running and the call fails, when
 * the caller said it changes nothing (`RunOptions.abandonIfStuck`): it sleeps uninterruptibly in
 * the kernel (D state: I/O to a device or mount that does not answer, a dead iSCSI target, a FUSE
 * server that stopped), where no signal reaches it until that I/O ends — which may be never.
 * Waiting for a listing would hold the step (and its locks) past its deadline. A command that acts
 * is waited for: it may still act when its I/O ends, and its caller's locks must cover that.
 */
export const ABANDON_AFTER_KILL_MS = 3_000;

/** More output than this on one stream stops the command (a runaway tool, not a result to parse). */
const MAX_OUTPUT_CHARS = 100_000_000;

/** How one spawned command ended, before it becomes a CommandResult. */
interface Outcome {
  exitCode: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  aborted: boolean;
  /** Set when the command failed: not started, killed, non-zero exit, or too much output. */
  failure?: { message: string; notFound: boolean };
  /** The pid of a command that SIGKILL did not end, left running (`CommandResult.stuckPid`). */
  stuckPid?: number;
}

/**
 * Start `file` (never through a shell) and collect its output as UTF-8. No wrapper library: execa
 * cost ~130 modules (0.5 s to import on a loaded 2-core host, paid by every `berth attach`) and
 * ~2 ms of CPU per call over this. The command is started by berth-spawner when the build made it
 * (`spawner.ts`: this process never forks), else by Node's spawn.
 */
function spawnCommand(
  file: string,
  args: readonly string[],
  options: { timeoutMs: number; signal: AbortSignal | undefined; input: string | undefined; env: NodeJS.ProcessEnv; command: string; nodeSpawn: boolean; abandonIfStuck: boolean },
): Promise<Outcome> {
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let aborted = false;
    let overflow = false;
    let spawnError: NodeJS.ErrnoException | undefined;
    let forceKill: NodeJS.Timeout | undefined;
    // Set once the command started (its close clears it, whenever that comes).
    let timer: NodeJS.Timeout | undefined = undefined;
    let child: Child | undefined;
    let abandon: NodeJS.Timeout | undefined;
    let settled = false;
    const stop = (): void => {
      if (child === undefined || child.ended) return;
      child.kill('SIGTERM');
      const running = child;
      forceKill ??= setTimeout(() => {
        running.kill('SIGKILL');
        if (!options.abandonIfStuck) return;
        abandon = setTimeout(() => giveUp(running), ABANDON_AFTER_KILL_MS);
        abandon.unref();
      }, FORCE_KILL_AFTER_MS);
      forceKill.unref();
    };
    // The command outlived SIGKILL: the call ends without it (see ABANDON_AFTER_KILL_MS).
    const giveUp = (running: Child): void => {
      if (settled || running.ended) return;
      settled = true;
      options.signal?.removeEventListener('abort', onAbort);
      clearTimeout(timer);
      const stuckPid = running.abandon();
      const which = stuckPid === undefined ? 'it' : `pid ${stuckPid}`;
      const message = `${failureMessage(null, 'SIGKILL')}; it did not exit ${ABANDON_AFTER_KILL_MS} ms after SIGKILL and was left running (${which}): it is stuck in the kernel (D state), likely on I/O to a device or mount that does not answer`;
      resolve({ exitCode: -1, stdout, stderr, timedOut, aborted, failure: { message, notFound: false }, ...(stuckPid === undefined ? {} : { stuckPid }) });
    };
    const failureMessage = (code: number | null, signal: NodeJS.Signals | null): string =>
      spawnError !== undefined
        ? `${spawnError.message}: ${options.command}`
        : timedOut
          ? `Command timed out after ${options.timeoutMs} milliseconds: ${options.command}`
          : aborted
            ? `Command was canceled: ${options.command}`
            : overflow
              ? `Command's output was larger than ${MAX_OUTPUT_CHARS} characters: ${options.command}`
              : signal !== null
                ? `Command was killed with ${signal}: ${options.command}`
                : `Command failed with exit code ${code ?? -1}: ${options.command}`;
    const onAbort = (): void => {
      aborted = true;
      stop();
    };
    try {
      child = startCommand(file, args, { env: options.env, input: options.input, node: options.nodeSpawn, timeoutMs: options.timeoutMs }, {
        stdout(chunk) {
          stdout += chunk;
          if (stdout.length > MAX_OUTPUT_CHARS && !overflow) {
            overflow = true;
            stop();
          }
        },
        stderr(chunk) {
          stderr += chunk;
          if (stderr.length > MAX_OUTPUT_CHARS && !overflow) {
            overflow = true;
            stop();
          }
        },
        error(error) {
          spawnError ??= error;
        },
        close(code, signal) {
          clearTimeout(timer);
          clearTimeout(forceKill);
          clearTimeout(abandon);
          if (settled) return;
          settled = true;
          options.signal?.removeEventListener('abort', onAbort);
          // A command killed (by us or by a signal) or never started has no exit code of its own.
          const exitCode = code === null || spawnError !== undefined || timedOut || aborted ? -1 : code;
          const out = { exitCode, stdout, stderr, timedOut, aborted };
          const failed = spawnError !== undefined || timedOut || aborted || overflow || code !== 0;
          if (!failed) {
            resolve(out);
            return;
          }
          resolve({ ...out, failure: { message: failureMessage(code, signal), notFound: spawnError?.code === 'ENOENT' } });
        },
      });
    } catch (error) {
      // An argument Node refuses (a NUL byte): nothing was started.
      const message = `${error instanceof Error ? error.message : String(error)}: ${options.command}`;
      resolve({ exitCode: -1, stdout: '', stderr: '', timedOut: false, aborted: false, failure: { message, notFound: false } });
      return;
    }
    if (child.ended) return;
    timer = setTimeout(() => {
      timedOut = true;
      stop();
    }, options.timeoutMs);
    options.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A CommandRunner over node:child_process: argument arrays, a timeout on every command, never a shell. */
export function createCommandRunner(options: CommandRunnerOptions = {}): CommandRunner {
  const defaultTimeoutMs = options.defaultTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  const pathPrepend = options.pathPrepend ?? [];
  const logger = options.logger;

  function environment(extra: Record<string, string> | undefined): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...process.env, ...options.env, ...extra };
    if (pathPrepend.length > 0) {
      const base = env.PATH ?? '';
      env.PATH = [...pathPrepend, ...(base ? [base] : [])].join(delimiter);
    }
    return env;
  }

  function finish(result: CommandResult, reject: boolean, error?: CommandError): CommandResult {
    if (result.stuckPid !== undefined) {
      logger?.warn?.({ command: result.command, pid: result.stuckPid }, 'a command did not die of SIGKILL (stuck in the kernel, D state) and was left running');
    }
    logger?.debug(
      {
        command: result.command,
        exitCode: result.exitCode,
        durationMs: Math.round(result.durationMs * 10) / 10,
        ...(result.timedOut ? { timedOut: true } : {}),
        ...(result.aborted ? { aborted: true } : {}),
        ...(error?.notFound ? { notFound: true } : {}),
        ...(result.stuckPid === undefined ? {} : { stuckPid: result.stuckPid }),
      },
      'command finished',
    );
    if (error && reject) throw error;
    return result;
  }

  return {
    async run(file: string, args: readonly string[], runOptions: RunOptions = {}): Promise<CommandResult> {
      const secrets = runOptions.secrets ?? [];
      const reject = runOptions.reject ?? true;
      const command = formatCommand(file, args, secrets);
      const signal = runOptions.signal;

      if (signal?.aborted) {
        // Nothing was started, so there is nothing to kill: report the abort without spawning.
        const result: CommandResult = { command, exitCode: -1, stdout: '', stderr: '', durationMs: 0, timedOut: false, aborted: true };
        return finish(result, reject, new CommandError(result, { cause: signal.reason }));
      }

      const started = performance.now();
      const outcome = await spawnCommand(file, args, {
        timeoutMs: runOptions.timeoutMs ?? defaultTimeoutMs,
        signal,
        input: runOptions.input,
        env: environment(runOptions.env),
        command,
        nodeSpawn: options.nodeSpawn === true,
        abandonIfStuck: runOptions.abandonIfStuck === true,
      });
      const durationMs = performance.now() - started;

      const { stdout, stderr } = outcome;
      const result: CommandResult = {
        command,
        exitCode: outcome.exitCode,
        stdout,
        stderr,
        durationMs,
        timedOut: outcome.timedOut,
        aborted: outcome.aborted,
        ...(outcome.stuckPid === undefined ? {} : { stuckPid: outcome.stuckPid }),
      };
      if (outcome.failure === undefined) return finish(result, reject);

      const { notFound } = outcome.failure;
      if (notFound) result.notFound = true;
      // The error carries copies with secrets masked; the cause's message names the command only
      // as `command` does (masked), and a killed command's cause is the signal's reason.
      const masked: CommandResult = { ...result, stdout: redact(stdout, secrets), stderr: redact(stderr, secrets) };
      const cause = outcome.aborted ? signal?.reason : new Error(redact(outcome.failure.message, secrets));
      const error = new CommandError(masked, { notFound, cause });
      // With `reject: false` the caller gets the real output back, as for a success: it may parse it.
      return finish(result, reject, error);
    },
    searchPath(): readonly string[] {
      const value = environment(undefined).PATH ?? '';
      return value === '' ? [] : value.split(delimiter);
    },
  };
}
