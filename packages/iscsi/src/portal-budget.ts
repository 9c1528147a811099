import { BerthError } from '@berth/core';

/** A time budget for what can hang on one portal's network, tied to the operation's signal (see `portalBudget`). */
export interface PortalBudget {
  signal: AbortSignal;
  /** Whether the budget ran out or was cut (not the operation's signal). */
  overran(): boolean;
  /** The budget's TIMEOUT error, with what was stopped as its cause. */
  reason(cause: unknown): BerthError;
  /** The limit in force, in ms (shorter once cut). */
  limitMs(): number;
  dispose(): void;
}

/** Options of `portalBudget`. */
export interface PortalBudgetOptions {
  /** The portal's own bound (`portalTimeoutMs`); `undefined` for none (only the signal and `cut`). */
  timeoutMs: number | undefined;
  /** Fires to end the budget early (a multipath attach's grace window for stragglers closed). */
  cut?: AbortSignal;
  /** How the limit is named in the error (`portalTimeoutMs`). */
  limitName?: string;
}

/**
 * A portal's budget for what can hang on the network (a login, a SendTargets discovery): it fires
 * when the operation's signal does, `timeoutMs` after the start, or when `cut` fires, with a
 * TIMEOUT that names the portal and the limit, so a dead portal's error says what happened and
 * what to do.
 */
export function portalBudget(parent: AbortSignal, portalText: string, options: PortalBudgetOptions): PortalBudget {
  const controller = new AbortController();
  const started = performance.now();
  let overran = false;
  let limit = options.timeoutMs;
  let limitName = options.limitName ?? 'portalTimeoutMs';
  const make = (cause?: unknown): BerthError =>
    new BerthError('TIMEOUT', `${portalText} did not answer within ${Math.round(limit ?? performance.now() - started)} ms (${limitName})`, {
      hint: 'check that the portal is reachable from this host and its target service runs; the other portals carry the volume meanwhile',
      ...(cause === undefined ? {} : { cause }),
      details: { portal: portalText, timeoutMs: limit },
    });
  const expire = (): void => {
    if (controller.signal.aborted) return;
    overran = true;
    controller.abort(make());
  };
  const timer = limit === undefined ? undefined : setTimeout(expire, limit);
  timer?.unref();
  const onCut = (): void => {
    limit = Math.round(performance.now() - started);
    limitName = 'given up: slower than the first login plus stragglerGraceMs';
    expire();
  };
  const onAbort = (): void => controller.abort(parent.reason);
  if (parent.aborted) onAbort();
  else parent.addEventListener('abort', onAbort, { once: true });
  if (options.cut?.aborted === true) onCut();
  else options.cut?.addEventListener('abort', onCut, { once: true });
  return {
    signal: controller.signal,
    overran: () => overran && !parent.aborted,
    reason: make,
    limitMs: () => limit ?? Math.round(performance.now() - started),
    dispose: () => {
      if (timer !== undefined) clearTimeout(timer);
      parent.removeEventListener('abort', onAbort);
      options.cut?.removeEventListener('abort', onCut);
    },
  };
}
