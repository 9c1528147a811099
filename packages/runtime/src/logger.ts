import { renameSync, statSync } from 'node:fs';
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
 */
export function createLogger(level: string, file?: string): Logger {
  const options = { level, base: { app: 'berth' }, redact: { paths: REDACT_PATHS, censor: '***' } };
  const make = (): Logger => {
    if (file === undefined) return pino(options, destination(2)) as unknown as Logger;
    rotate(file);
    // Synchronous writes: a CLI process may exit right after its last line.
    return pino(options, destination({ dest: file, mkdir: true, sync: true, mode: 0o600 })) as unknown as Logger;
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

function rotate(file: string): void {
  try {
    if (statSync(file).size > LOG_FILE_ROTATE_BYTES) renameSync(file, `${file}.1`);
  } catch {
    // No file yet (or it cannot be read): pino creates it or reports why.
  }
}
