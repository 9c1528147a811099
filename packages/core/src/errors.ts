import type { z } from 'zod';

/** Every error code berth can raise; stable strings shared by the CLI, the HTTP app and logs. */
export const ERROR_CODES = [
  'VALIDATION',
  'NOT_FOUND',
  'CONFLICT',
  'INVALID_STATE',
  'UNPROCESSABLE',
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'PERMISSION_DENIED',
  'TIMEOUT',
  'CANCELLED',
  'AUTH_FAILED',
  'HOST_UNSUPPORTED',
  'COMMAND_FAILED',
  'DRIVER_ERROR',
  'BACKEND_ERROR',
  'PLUGIN_ERROR',
  'CONFIG',
  'UNAVAILABLE',
  'INTERNAL',
] as const;

/** One of `ERROR_CODES`. */
export type BerthErrorCode = (typeof ERROR_CODES)[number];

/** HTTP status for each code (used by the HTTP app's problem+json bodies). */
export const HTTP_STATUS: Record<BerthErrorCode, number> = {
  VALIDATION: 400,
  NOT_FOUND: 404,
  CONFLICT: 409,
  INVALID_STATE: 409,
  UNPROCESSABLE: 422,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  PERMISSION_DENIED: 422,
  TIMEOUT: 504,
  CANCELLED: 499,
  AUTH_FAILED: 422,
  HOST_UNSUPPORTED: 422,
  COMMAND_FAILED: 500,
  DRIVER_ERROR: 500,
  BACKEND_ERROR: 500,
  PLUGIN_ERROR: 500,
  CONFIG: 500,
  UNAVAILABLE: 503,
  INTERNAL: 500,
};

/** Process exit code for each code (used by the CLI; 1 stays "unexpected"). */
export const EXIT_CODES: Record<BerthErrorCode, number> = {
  VALIDATION: 2,
  NOT_FOUND: 3,
  CONFLICT: 4,
  INVALID_STATE: 5,
  UNPROCESSABLE: 6,
  UNAUTHENTICATED: 7,
  FORBIDDEN: 8,
  PERMISSION_DENIED: 9,
  TIMEOUT: 10,
  CANCELLED: 11,
  AUTH_FAILED: 12,
  HOST_UNSUPPORTED: 13,
  COMMAND_FAILED: 14,
  DRIVER_ERROR: 15,
  BACKEND_ERROR: 16,
  PLUGIN_ERROR: 17,
  CONFIG: 18,
  UNAVAILABLE: 19,
  INTERNAL: 70,
};

/** Options of a `BerthError`. */
export interface BerthErrorOptions {
  /** What the user can do next; printed by the CLI, returned by the API. */
  hint?: string;
  /** Safe, secret-free facts about the failure (ids, statuses, exit codes). */
  details?: Record<string, unknown>;
  cause?: unknown;
}

/** The one error type berth throws: a stable `code`, a readable message and a hint. */
export class BerthError extends Error {
  override readonly name = 'BerthError';
  readonly code: BerthErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown>;

  constructor(code: BerthErrorCode, message: string, options: BerthErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
    this.details = options.details ?? {};
  }

  /** HTTP status for this error. */
  get httpStatus(): number {
    return HTTP_STATUS[this.code];
  }

  /** CLI exit code for this error. */
  get exitCode(): number {
    return EXIT_CODES[this.code];
  }

  /** A JSON-safe view (no stack, no cause chain). */
  toJSON(): { code: BerthErrorCode; message: string; hint?: string; details: Record<string, unknown> } {
    return {
      code: this.code,
      message: this.message,
      ...(this.hint === undefined ? {} : { hint: this.hint }),
      details: this.details,
    };
  }

  /** Whether `value` is a BerthError (also across duplicated module copies). */
  static is(value: unknown): value is BerthError {
    return (
      value instanceof BerthError ||
      (value instanceof Error && value.name === 'BerthError' && typeof (value as BerthError).code === 'string')
    );
  }
}

/**
 * The BerthError for a write the file system refused because it is full (ENOSPC, EDQUOT) that no
 * layer closer to it named: exit 13 with what to do, as the store's own full-disk error
 * (`details.reason: 'disk-full'`, retryable), never an INTERNAL "ENOSPC: no space left on device".
 */
export function diskFullError(error: unknown): BerthError | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  if (code !== 'ENOSPC' && code !== 'EDQUOT') return undefined;
  const path = (error as { path?: unknown }).path;
  const where = typeof path === 'string' ? ` (${path})` : '';
  return new BerthError('HOST_UNSUPPORTED', `the disk is full${where}`, {
    hint: 'free space on that file system (`df -h`), then run the command again; `berth volume list` and `berth attachment list` still work',
    details: { reason: 'disk-full', retryable: true, ...(typeof path === 'string' ? { path } : {}) },
    cause: error,
  });
}

/** Wrap anything thrown into a BerthError, keeping BerthErrors as they are; a full disk gets its own error. */
export function toBerthError(error: unknown, fallback: BerthErrorCode = 'INTERNAL'): BerthError {
  if (BerthError.is(error)) return error;
  const full = diskFullError(error);
  if (full !== undefined) return full;
  if (error instanceof Error && error.name === 'AbortError') {
    return new BerthError('CANCELLED', error.message || 'the operation was cancelled', { cause: error });
  }
  if (error instanceof Error && error.name === 'TimeoutError') {
    return new BerthError('TIMEOUT', 'the operation passed its deadline', {
      cause: error,
      hint: 'raise operationTimeoutMs in the config, or find out which step is slow with `berth attachment show`',
    });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new BerthError(fallback, message, { cause: error });
}

/** Parse `value` with `schema`, throwing a VALIDATION BerthError with every issue on one line. */
export function parseWith<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues.map((issue) => {
    const path = issue.path.length > 0 ? issue.path.join('.') : '(root)';
    return `${path}: ${issue.message}`;
  });
  throw new BerthError('VALIDATION', `invalid ${what}: ${issues.join('; ')}`, {
    details: { issues: result.error.issues.map((i) => ({ path: i.path.map(String), message: i.message })) },
  });
}
