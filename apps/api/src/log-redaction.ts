import { SECRET_KEYS } from '@berth/core';

/** What every secret in a log line becomes. */
export const CENSOR = '***';

/** Keys whose values never reach a log line, at any depth: tokens, headers that carry them, CHAP secrets. */
export const LOG_SECRET_KEYS: ReadonlySet<string> = new Set(['authorization', 'token', ...SECRET_KEYS]);

/**
 * Paths pino redacts in the app's logs (the fast path for the usual places; `redactDeep` covers
 * any depth): tokens and CHAP secrets, `auth_password_in` and `discovery_auth_password_in`
 * included, never reach a log line.
 */
export const API_REDACT_PATHS = [
  'req.headers.authorization',
  'headers.authorization',
  ...[...LOG_SECRET_KEYS].flatMap((key) => [key, `*.${key}`, `*.*.${key}`]),
];

// Deeper than this a log object is not walked: cut, not leaked.
const MAX_DEPTH = 12;

function isPlainObject(value: object): boolean {
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * A copy of a log object with every value under a secret key censored, at any depth (pino's
 * redaction paths cannot say "anywhere"). Only plain objects and arrays are walked: instances (a
 * request, a reply, an error) are their serializers' business. Objects without such a key come
 * back as they were.
 */
export function redactDeep(value: unknown, depth = 0): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (!Array.isArray(value) && !isPlainObject(value)) return value;
  if (depth > MAX_DEPTH) return CENSOR;
  if (Array.isArray(value)) {
    let changed = false;
    const out = value.map((item) => {
      const redacted = redactDeep(item, depth + 1);
      if (redacted !== item) changed = true;
      return redacted;
    });
    return changed ? out : value;
  }
  let out: Record<string, unknown> | undefined;
  for (const [key, item] of Object.entries(value)) {
    const redacted = LOG_SECRET_KEYS.has(key.toLowerCase()) ? CENSOR : redactDeep(item, depth + 1);
    if (redacted !== item) {
      out ??= { ...(value as Record<string, unknown>) };
      out[key] = redacted;
    }
  }
  return out ?? value;
}

/** A URL as a log line shows it: the path, and each query parameter's name with its value censored. */
export function redactUrl(url: string): string {
  const at = url.indexOf('?');
  if (at < 0) return url;
  const names = url
    .slice(at + 1)
    .split('&')
    .filter((pair) => pair !== '')
    .map((pair) => `${pair.split('=')[0] ?? ''}=${CENSOR}`);
  return `${url.slice(0, at)}?${names.join('&')}`;
}

/** The parts of a request a log line holds (fastify's own serializer logs the query string as sent). */
export interface LoggedRequest {
  method: string;
  url: string;
  host?: string;
  ip?: string;
  socket?: { remotePort?: number };
}

/** The request log serializer: fastify's fields, with the query string's values censored. */
export function serializeRequest(request: LoggedRequest): Record<string, unknown> {
  return {
    method: request.method,
    url: redactUrl(request.url),
    host: request.host,
    remoteAddress: request.ip,
    remotePort: request.socket?.remotePort,
  };
}

/** The error log serializer: what identifies an error, with any secret in its details censored. */
export function serializeError(error: Error): { [key: string]: unknown; type: string; message: string; stack: string } {
  const { code, details } = error as Error & { code?: unknown; details?: unknown };
  return {
    type: error.name,
    message: error.message,
    stack: error.stack ?? '',
    ...(code === undefined ? {} : { code }),
    ...(details === undefined ? {} : { details: redactDeep(details) }),
  };
}
