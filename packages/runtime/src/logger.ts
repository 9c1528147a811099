import { destination, pino } from 'pino';
import type { Logger } from '@berth/core';

/** Paths pino redacts in every log line: secrets never reach a log. */
export const REDACT_PATHS = [
  'auth_password',
  'discovery_auth_password',
  'password',
  'token',
  'authorization',
  '*.auth_password',
  '*.discovery_auth_password',
  '*.password',
  '*.token',
  '*.authorization',
  '*.*.auth_password',
  '*.*.discovery_auth_password',
  'req.headers.authorization',
];

/** berth's logger: JSON lines on stderr, secrets redacted. */
export function createLogger(level: string): Logger {
  return pino({ level, base: { app: 'berth' }, redact: { paths: REDACT_PATHS, censor: '***' } }, destination(2)) as unknown as Logger;
}
