import { BerthError, toBerthError } from '@berth/core';

/**
 * `error` as a BerthError whose message says what was being done (`connecting LUN 1 of … at …`).
 * When the operation's signal fired, the code says so (TIMEOUT for a deadline, CANCELLED for a
 * cancel) whatever step noticed: a step stopped by the signal reports it in its own words (an
 * iscsiadm killed, a wait given up), and the signal's reason says whether that was the deadline.
 */
export function contextualError(what: string, error: unknown, signal: AbortSignal | undefined): BerthError {
  const base = toBerthError(error, 'DRIVER_ERROR');
  if (signal?.aborted === true && (base.code === 'TIMEOUT' || base.code === 'CANCELLED')) {
    const reason = toBerthError(signal.reason ?? new DOMException('This operation was aborted', 'AbortError'), 'CANCELLED');
    const code = reason.code === 'TIMEOUT' ? 'TIMEOUT' : 'CANCELLED';
    const message = base === reason || base.message === reason.message ? reason.message : `${reason.message} (${base.message})`;
    const hint = reason.hint ?? base.hint;
    return new BerthError(code, `${what}: ${message}`, { cause: error, ...(hint === undefined ? {} : { hint }), details: base.details });
  }
  return new BerthError(base.code, `${what}: ${base.message}`, {
    cause: error,
    ...(base.hint === undefined ? {} : { hint: base.hint }),
    details: base.details,
  });
}
