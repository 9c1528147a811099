import { closeSync, mkdirSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { destination, levels, pino } from 'pino';
import { SECRET_KEYS, type Logger } from '@berth/core';

/** Keys whose values never reach a log line: every CHAP secret core knows (`*_in` included), tokens, headers. */
const SECRET_LOG_KEYS = [...new Set([...SECRET_KEYS, 'token', 'authorization'])];

/** Paths pino redacts in every log line (three levels deep): secrets never reach a log. */
export const REDACT_PATHS = [
  ...SECRET_LOG_KEYS.flatMap((key) => [key, `*.${key}`, `*.*.${key}`, `*.*.*.${key}`]),
  'req.headers.authorization',
];

/** A log file is moved to `<file>.1` (replacing the previous one) when it passes this size. */
export const LOG_FILE_ROTATE_BYTES = 10 * 1024 * 1024;

/**
 * berth's logger: JSON lines, secrets redacted; on stderr, or appended to `file` (created with its
 * directory, readable by its owner only) when one is given. pino (with its redaction, compiled when
 * it is made) and the file are made at the first line at an enabled level: most CLI commands log
 * nothing at the default `warn`, and making them was ~20 ms of each start (a loaded machine).
 *
 * A log line never fails what logged it: when the file cannot be made or written (a full disk, a
 * read-only data dir, an I/O error) the line is dropped and `notice` (default: stderr) gets one
 * line saying so, once; later lines try the file again, so the log resumes once there is room.
 */
export function createLogger(level: string, file?: string, notice: (text: string) => void = stderrNotice): Logger {
  const options = { level, base: { app: 'berth' }, redact: { paths: REDACT_PATHS, censor: '***' } };
  const make = (): Logger => {
    if (file === undefined) return pino(options, destination(2)) as unknown as Logger;
    rotate(file);
    return pino(options, new LogFileSink(file, notice)) as unknown as Logger;
  };
  const threshold = level === 'silent' ? Number.POSITIVE_INFINITY : levels.values[level];
  // A level pino does not know: made now, so that pino's own error says so where it did before.
  if (threshold === undefined) return make();
  let root: Logger | undefined;
  return deferredLogger(() => (root ??= make()), threshold);
}

type LogMethod = 'debug' | 'info' | 'warn' | 'error';

/** A logger whose lines at `threshold` and above go to `made()`'s (made at the first one); the rest are dropped. */
function deferredLogger(made: () => Logger, threshold: number): Logger {
  let logger: Logger | undefined;
  const real = (): Logger => (logger ??= made());
  const method =
    (name: LogMethod) =>
    (obj: Record<string, unknown>, msg?: string): void => {
      if ((levels.values[name] ?? 0) < threshold) return;
      // Passed on as called, with or without a message.
      if (msg === undefined) real()[name](obj);
      else real()[name](obj, msg);
    };
  return {
    debug: method('debug'),
    info: method('info'),
    warn: method('warn'),
    error: method('error'),
    child: (bindings) => deferredLogger(() => real().child(bindings), threshold),
  };
}

function stderrNotice(text: string): void {
  try {
    writeSync(2, `${text}\n`);
  } catch {
    // Not even stderr: nothing left to tell.
  }
}

/**
 * The log file as pino's destination: each line appended with a synchronous write (a CLI process
 * may exit right after its last line). A line the file system refuses is dropped, never thrown:
 * pino's own file destination threw ENOSPC out of `logger.warn`, and so failed `berth volume list`
 * on a full disk.
 */
export class LogFileSink {
  private fd: number | undefined;
  private noticed = false;
  /** A line was cut short by a failed write: the next one starts on a line of its own. */
  private torn = false;

  constructor(
    private readonly file: string,
    private readonly notice: (text: string) => void,
  ) {}

  write(line: string): boolean {
    let written = 0;
    try {
      if (this.fd === undefined) {
        mkdirSync(dirname(this.file), { recursive: true });
        this.fd = openSync(this.file, 'a', 0o600);
      }
      const data = Buffer.from(this.torn ? `\n${line}` : line);
      while (written < data.length) written += writeSync(this.fd, data, written);
      this.torn = false;
    } catch (error) {
      if (written > 0) this.torn = true;
      this.drop(error);
    }
    return true;
  }

  private drop(error: unknown): void {
    // Opened again at the next line: the file may have been removed, or the error may pass.
    if (this.fd !== undefined) {
      try {
        closeSync(this.fd);
      } catch {
        // Closing a file that failed a write: nothing more to do.
      }
      this.fd = undefined;
    }
    if (this.noticed) return;
    this.noticed = true;
    const code = (error as { code?: unknown } | null)?.code;
    const reason = typeof code === 'string' ? code : error instanceof Error ? error.message : String(error);
    this.notice(`berth: cannot write the log file ${this.file} (${reason}); its log lines are dropped`);
  }
}

function rotate(file: string): void {
  try {
    if (statSync(file).size > LOG_FILE_ROTATE_BYTES) renameSync(file, `${file}.1`);
  } catch {
    // No file yet (or it cannot be read): pino creates it or reports why.
  }
}
