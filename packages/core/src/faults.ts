import { BerthError } from './errors.js';

/** What an armed fault point does: throw, kill the process on the spot, or wait. */
export type FaultAction = { kind: 'throw' } | { kind: 'crash' } | { kind: 'delay'; ms: number };

/**
 * Named fault points (`attach.connect.before`, `detach.disconnect.after`, ...) armed by
 * configuration (`faults` in the config, or `BERTH_FAULTS=point=action,...`). When nothing is
 * armed, `hit` is one Map lookup: production carries it at no cost.
 */
export class FaultInjector {
  private readonly armed: Map<string, FaultAction>;
  /** Points hit so far (for tests that list the points). */
  readonly seen = new Set<string>();

  constructor(spec: Record<string, string> = {}) {
    this.armed = new Map(Object.entries(spec).map(([point, action]) => [point, parseFaultAction(action)]));
  }

  /** Whether any point is armed. */
  get active(): boolean {
    return this.armed.size > 0;
  }

  /** Pass a fault point: does nothing unless it is armed. A delay ends early when `signal` fires (with its reason). */
  async hit(point: string, signal?: AbortSignal): Promise<void> {
    if (this.armed.size === 0) return;
    this.seen.add(point);
    const action = this.armed.get(point);
    if (!action) return;
    switch (action.kind) {
      case 'throw':
        throw new BerthError('INTERNAL', `fault injected at ${point}`, { details: { faultPoint: point } });
      case 'crash':
        // Exit as a power cut would: no finally blocks, no cleanup, no journal write.
        process.kill(process.pid, 'SIGKILL');
        await new Promise(() => undefined);
        return;
      case 'delay':
        await new Promise<void>((resolve, reject) => {
          if (signal?.aborted) return reject(signal.reason);
          const stop = (): void => {
            clearTimeout(timer);
            reject(signal?.reason);
          };
          const timer = setTimeout(() => {
            signal?.removeEventListener('abort', stop);
            resolve();
          }, action.ms);
          signal?.addEventListener('abort', stop, { once: true });
        });
        return;
    }
  }
}

/** Parse `throw`, `crash` or `delay:<ms>`. */
export function parseFaultAction(text: string): FaultAction {
  if (text === 'throw' || text === 'crash') return { kind: text };
  const delay = /^delay:(\d+)$/.exec(text);
  if (delay) return { kind: 'delay', ms: Number(delay[1]) };
  throw new BerthError('CONFIG', `unknown fault action ${JSON.stringify(text)}`, { hint: 'use throw, crash or delay:<ms>' });
}

/** Parse `BERTH_FAULTS` (`point=action,point=action`). */
export function parseFaultSpec(text: string | undefined): Record<string, string> {
  const spec: Record<string, string> = {};
  for (const part of (text ?? '').split(',').map((p) => p.trim()).filter(Boolean)) {
    const [point, action] = part.split('=');
    if (!point || !action) throw new BerthError('CONFIG', `invalid BERTH_FAULTS entry ${JSON.stringify(part)}`, { hint: 'use point=action, e.g. attach.connect.after=crash' });
    spec[point] = action;
  }
  return spec;
}
