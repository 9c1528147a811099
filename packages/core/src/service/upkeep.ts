import { toBerthError } from '../errors.js';
import type { ServiceParts } from './parts.js';

/** The longest one backend's upkeep may take (a tgtd start and the restore of every export). */
const UPKEEP_DEADLINE_MS = 60_000;

/**
 * Run every installed backend's `upkeep` now and then every `config.upkeep.intervalMs` (`berth
 * serve`), one backend after another and never two rounds at once (a slow round skips a beat).
 * A failure is logged once per backend until its message changes, and a backend that works again
 * after one is logged as recovered, so a lasting failure does not fill the log. Returns the
 * function that stops it (waiting for the round in flight, which is aborted).
 */
export function startBackendUpkeep(parts: ServiceParts): () => Promise<void> {
  const { intervalMs } = parts.config.upkeep;
  if (intervalMs === 0) return () => Promise.resolve();
  const { catalog, logger } = parts;
  const stop = new AbortController();
  const failing = new Map<string, string>();
  let running: Promise<void> | undefined;

  const round = async (): Promise<void> => {
    for (const name of catalog.backendNames()) {
      if (stop.signal.aborted) return;
      try {
        const backend = catalog.backend(name);
        if (!backend.upkeep) continue;
        await backend.upkeep(AbortSignal.any([stop.signal, AbortSignal.timeout(UPKEEP_DEADLINE_MS)]));
        if (failing.delete(name)) logger.info({ backend: name }, 'backend upkeep works again');
      } catch (error) {
        if (stop.signal.aborted) return;
        const failure = toBerthError(error);
        // Numbers vary from round to round (a new daemon's pid): the same failure all the same.
        const key = `${failure.code}: ${failure.message.replace(/\d+/g, 'N')}`;
        if (failing.get(name) === key) continue;
        failing.set(name, key);
        logger.warn({ backend: name, err: failure.message, ...(failure.hint ? { hint: failure.hint } : {}) }, 'backend upkeep failed; trying again at the next round');
      }
    }
  };
  const tick = (): void => {
    running ??= round().finally(() => {
      running = undefined;
    });
  };
  // Periodic by nature: what it looks for (a daemon that died) sends no event here.
  const timer = setInterval(tick, intervalMs);
  timer.unref();
  tick();
  return async () => {
    clearInterval(timer);
    stop.abort();
    await running;
  };
}
