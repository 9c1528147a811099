import { BerthError } from './errors.js';

/** An operation's deadline: one AbortSignal that fires on timeout or on the caller's cancel. */
export interface Deadline {
  readonly signal: AbortSignal;
  /** When it passes (epoch ms). */
  readonly at: number;
  /** Milliseconds left (never negative). */
  remaining(): number;
  /** Stop the timer (call when the operation ends). */
  dispose(): void;
}

/** A deadline `timeoutMs` from now, also aborted when `parent` aborts. */
export function createDeadline(timeoutMs: number, parent?: AbortSignal): Deadline {
  const controller = new AbortController();
  const at = Date.now() + timeoutMs;
  const timer = setTimeout(() => {
    controller.abort(
      new BerthError('TIMEOUT', `the operation passed its deadline of ${timeoutMs} ms`, {
        hint: 'raise operationTimeoutMs in the config, or see which step was slow with `berth operation show`',
      }),
    );
  }, timeoutMs);
  // Unref'd: a deadline nobody disposed never holds a process. A plugin call pending under it is
  // raced in the catalog's guard with a ref'd timer, so the process stays until this one fires.
  timer.unref();
  const onParentAbort = (): void => {
    controller.abort(
      parent?.reason instanceof Error ? parent.reason : new BerthError('CANCELLED', 'the operation was cancelled'),
    );
  };
  if (parent) {
    if (parent.aborted) onParentAbort();
    else parent.addEventListener('abort', onParentAbort, { once: true });
  }
  return {
    signal: controller.signal,
    at,
    remaining: () => Math.max(0, at - Date.now()),
    dispose: () => {
      clearTimeout(timer);
      parent?.removeEventListener('abort', onParentAbort);
    },
  };
}
