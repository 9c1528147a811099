import { BerthError, EXIT_CODES } from '@berth/core/errors';

/** Exit code of an error berth did not expect (a bug, or a failure outside its error model). */
export const UNEXPECTED_EXIT_CODE = 1;

/** What the CLI prints for a failed command, and the exit code it ends with. */
export interface ErrorReport {
  /** A BerthError code, or `UNEXPECTED` for anything else. */
  code: string;
  message: string;
  hint?: string;
  exitCode: number;
  /** Only filled when debugging is on: users never see a stack for their own mistakes. */
  stack?: string;
}

/** The shape oclif gives its own errors (flag parsing, missing arguments). */
interface OclifErrorShape {
  oclif?: { exit?: number };
  parse?: unknown;
}

// oclif decorates its messages with ANSI colours; JSON consumers and logs want plain text.
const ANSI = /\u001B\[[0-9;]*m/g;

function plain(text: string): string {
  return text.replace(ANSI, '').trim();
}

function isOclifUsageError(error: unknown): error is Error & OclifErrorShape {
  if (!(error instanceof Error)) return false;
  const shape = error as Error & OclifErrorShape;
  // Parse errors from oclif's parser carry `parse` and exit 2; both mean "the command line is wrong".
  return shape.parse !== undefined || shape.oclif?.exit === 2;
}

/** oclif's parse errors, reworded as berth words its own errors: lower case, one line, flags with `--`. */
function usageMessage(error: Error & OclifErrorShape): string {
  const args = (error as { args?: Array<{ name?: string; description?: string }> }).args;
  if (error.message.startsWith('Missing ') && Array.isArray(args) && args.length > 0) {
    return args.map((arg) => `missing argument ${(arg.name ?? '').toUpperCase()}${arg.description === undefined ? '' : ` (${arg.description})`}`).join('; ');
  }
  const lines = plain(error.message)
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith('See more help with') && !/^The following errors? occurred:?$/.test(line));
  const reworded = lines.map((line) =>
    line
      .replace(/^Missing required flag (\S+)$/, 'missing required flag --$1')
      .replace(/^Nonexistent flags?: /, 'unknown flag ')
      .replace(/^Unexpected arguments?: /, 'unexpected argument ')
      .replace(/^[A-Z](?=[a-z])/, (first) => first.toLowerCase()),
  );
  return reworded.join('; ') || 'the command line is not valid';
}

/**
 * Turn anything a command threw into what the user sees; `debug` adds the stack, `example` (the
 * command's first example) goes into the hint of a usage error.
 */
export function reportError(error: unknown, options: { commandId?: string; debug?: boolean; example?: string } = {}): ErrorReport {
  let report: ErrorReport;
  if (BerthError.is(error)) {
    report = {
      code: error.code,
      message: error.message,
      ...(error.hint === undefined ? {} : { hint: error.hint }),
      exitCode: EXIT_CODES[error.code] ?? UNEXPECTED_EXIT_CODE,
    };
  } else if (isOclifUsageError(error)) {
    const command = options.commandId === undefined ? '' : ` ${options.commandId.replaceAll(':', ' ')}`;
    const help = `\`berth${command} --help\``;
    report = {
      code: 'VALIDATION',
      message: usageMessage(error),
      hint: options.example === undefined ? `see ${help}` : `for example \`${options.example}\`; more in ${help}`,
      exitCode: EXIT_CODES.VALIDATION,
    };
  } else if (environmentReport(error) !== undefined) {
    report = environmentReport(error)!;
  } else {
    const message = error instanceof Error ? error.message : String(error);
    report = {
      code: 'UNEXPECTED',
      message: `unexpected error: ${plain(message) || 'no message'}`,
      hint: 'run again with DEBUG=1 to see where it happened, and report it if it persists',
      exitCode: UNEXPECTED_EXIT_CODE,
    };
  }
  if (options.debug === true && error instanceof Error && error.stack !== undefined) report.stack = error.stack;
  return report;
}

/**
 * A file-system failure that escaped as a plain Node error (a full disk, a read-only or forbidden
 * directory), as the error berth's own code gives for it: its own message and hint, not "unexpected".
 */
function environmentReport(error: unknown): ErrorReport | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  const path = (error as { path?: unknown } | null)?.path;
  const where = typeof path === 'string' ? ` (${path})` : '';
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return {
      code: 'HOST_UNSUPPORTED',
      message: `the disk is full${where}`,
      hint: 'free space on that file system (`df -h`), then run the command again; `berth volume list` still works',
      exitCode: EXIT_CODES.HOST_UNSUPPORTED,
    };
  }
  if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') {
    return {
      code: 'PERMISSION_DENIED',
      message: `cannot write${where}: ${code === 'EROFS' ? 'the file system is read-only' : 'permission denied'}`,
      hint: 'make berth\'s data dir writable for this user (`findmnt -T <dir>`, `ls -ld <dir>`), or point --data-dir elsewhere; `berth volume list` still works',
      exitCode: EXIT_CODES.PERMISSION_DENIED,
    };
  }
  return undefined;
}

/** The `--json` body of a failed command. */
export function errorJson(report: ErrorReport): { error: { code: string; message: string; hint?: string } } {
  return {
    error: {
      code: report.code,
      message: report.message,
      ...(report.hint === undefined ? {} : { hint: report.hint }),
    },
  };
}

/** The human lines of a failed command (for stderr). */
export function errorLines(report: ErrorReport): string[] {
  const lines = [`Error: ${report.message}`];
  if (report.hint !== undefined) lines.push(`Hint: ${report.hint}`);
  if (report.stack !== undefined) lines.push(report.stack);
  return lines;
}

/** What a failure prints (on stdout with `--json`, else on stderr) and the exit code it ends with. */
export function failureOutput(error: unknown, options: { json: boolean; commandId?: string; debug?: boolean; example?: string }): { stdout?: string; stderr?: string; exitCode: number } {
  const report = reportError(error, options);
  return options.json
    ? { stdout: JSON.stringify(errorJson(report), null, 2), exitCode: report.exitCode }
    : { stderr: errorLines(report).join('\n'), exitCode: report.exitCode };
}
