import { renameSync, statSync } from 'node:fs';
import { destination, pino } from 'pino';
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
 * directory, readable by its owner only) when one is given.
 */
export function createLogger(level: string, file?: string): Logger {
  const options = { level, base: { app: 'berth' }, redact: { paths: REDACT_PATHS, censor: '***' } };
  if (file === undefined) return pino(options, destination(2)) as unknown as Logger;
  rotate(file);
  // Synchronous writes: a CLI process may exit right after its last line.
  return pino(options, destination({ dest: file, mkdir: true, sync: true, mode: 0o600 })) as unknown as Logger;
}

function rotate(file: string): void {
  try {
    if (statSync(file).size > LOG_FILE_ROTATE_BYTES) renameSync(file, `${file}.1`);
  } catch {
    // No file yet (or it cannot be read): pino creates it or reports why.
  }
}
