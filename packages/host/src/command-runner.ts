import { performance } from 'node:perf_hooks';
import { delimiter } from 'node:path';
import { CommandError } from './errors.js';
import { formatCommand, redact } from './redact.js';
import type { CommandResult, CommandRunner, RunOptions } from './types.js';

/** The slice of a logger the runner writes to (pino's shape). */
export interface CommandLogger {
  debug(obj: Record<string, unknown>, msg?: string): void;
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
}

/** The default timeout of a command, in ms. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

// execa and its ~130 modules load with the first command, not with the package: a CLI command that
// runs nothing on the host (`berth volume list`) starts without them.
let execaModule: Promise<typeof import('execa')> | undefined;
function loadExeca(): Promise<typeof import('execa')> {
  execaModule ??= import('execa');
  return execaModule;
}

// After SIGTERM, a command that ignores it gets SIGKILL this much later.
const FORCE_KILL_AFTER_MS = 2_000;

/** A CommandRunner over execa: argument arrays, a timeout on every command, never a shell. */
export function createCommandRunner(options: CommandRunnerOptions = {}): CommandRunner {
  const defaultTimeoutMs = options.defaultTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  const pathPrepend = options.pathPrepend ?? [];
  const logger = options.logger;

  function environment(extra: Record<string, string> | undefined): Record<string, string> {
    const env: Record<string, string> = { ...options.env, ...extra };
    if (pathPrepend.length > 0) {
      const base = env.PATH ?? process.env.PATH ?? '';
      env.PATH = [...pathPrepend, ...(base ? [base] : [])].join(delimiter);
    }
    return env;
  }

  function finish(result: CommandResult, reject: boolean, error?: CommandError): CommandResult {
    logger?.debug(
      {
        command: result.command,
        exitCode: result.exitCode,
        durationMs: Math.round(result.durationMs * 10) / 10,
        ...(result.timedOut ? { timedOut: true } : {}),
        ...(result.aborted ? { aborted: true } : {}),
        ...(error?.notFound ? { notFound: true } : {}),
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

      const { execa } = await loadExeca();
      const started = performance.now();
      const outcome = await execa(file, [...args], {
        timeout: runOptions.timeoutMs ?? defaultTimeoutMs,
        ...(signal ? { cancelSignal: signal } : {}),
        ...(runOptions.input !== undefined ? { input: runOptions.input } : { stdin: 'ignore' as const }),
        env: environment(runOptions.env),
        extendEnv: true,
        reject: false,
        shell: false,
        stripFinalNewline: false,
        forceKillAfterDelay: FORCE_KILL_AFTER_MS,
        encoding: 'utf8',
      });
      const durationMs = performance.now() - started;

      const stdout = typeof outcome.stdout === 'string' ? outcome.stdout : '';
      const stderr = typeof outcome.stderr === 'string' ? outcome.stderr : '';
      const result: CommandResult = {
        command,
        exitCode: outcome.exitCode ?? -1,
        stdout,
        stderr,
        durationMs,
        timedOut: outcome.timedOut,
        aborted: outcome.isCanceled,
      };
      if (!outcome.failed) return finish(result, reject);

      const notFound = outcome.code === 'ENOENT';
      if (notFound) result.notFound = true;
      // The error carries copies with secrets masked; execa's own error is not kept as the cause
      // because its message repeats the unmasked command line.
      const masked: CommandResult = { ...result, stdout: redact(stdout, secrets), stderr: redact(stderr, secrets) };
      const cause = outcome.isCanceled
        ? signal?.reason
        : new Error(redact(outcome.originalMessage ?? outcome.shortMessage ?? 'command failed', secrets));
      const error = new CommandError(masked, { notFound, cause });
      // With `reject: false` the caller gets the real output back, as for a success: it may parse it.
      return finish(result, reject, error);
    },
  };
}
