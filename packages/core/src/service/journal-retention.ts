import { toBerthError } from '../errors.js';
import type { OperationPruneReport } from '../reports.js';
import type { OperationPruneRequest } from '../requests.js';
import type { ServiceParts } from './parts.js';

const DAY_MS = 86_400_000;

/**
 * Prune the journal now and then every `config.journal.pruneIntervalMs` (`berth serve`): the
 * finished operations that ended more than `journal.retainDays` ago go, by `prune` — the rules of
 * `berth operation prune`, which keeps an operation an attachment or an open work item still
 * needs, in batches that never hold the store's writer long. Without it a long-running server's
 * journal grows for good (~2.6 KB an operation: a fleet at 10 operations/s adds ~2 GB a day).
 * Never two rounds at once; stopping ends the round in flight after its batch. A failure is logged once until its message changes, and the first
 * round that works after one is logged. Every replica may run it: a prune is idempotent. Returns
 * the function that stops it (waiting for the round in flight).
 */
export function startJournalRetention(
  parts: ServiceParts,
  prune: (request: OperationPruneRequest, signal: AbortSignal) => Promise<OperationPruneReport>,
): () => Promise<void> {
  const { retainDays, pruneIntervalMs } = parts.config.journal;
  if (retainDays === 0) return () => Promise.resolve();
  const { logger } = parts;
  let failing: string | undefined;
  let running: Promise<void> | undefined;
  // Stops a long first prune (months of journal) between two of its batches at shutdown.
  const stop = new AbortController();

  const round = async (): Promise<void> => {
    try {
      // `prune` logs what it deleted (at info) when it deleted anything.
      await prune({ olderThanMs: retainDays * DAY_MS }, stop.signal);
      if (failing !== undefined) logger.info({}, 'journal retention works again');
      failing = undefined;
    } catch (error) {
      if (stop.signal.aborted) return;
      const failure = toBerthError(error);
      const key = `${failure.code}: ${failure.message}`;
      if (failing === key) return;
      failing = key;
      logger.warn({ err: failure.message, retainDays }, 'journal retention failed; trying again at the next round');
    }
  };
  const tick = (): void => {
    if (stop.signal.aborted) return;
    running ??= round().finally(() => {
      running = undefined;
    });
  };
  const timer = setInterval(tick, pruneIntervalMs);
  timer.unref();
  tick();
  return async () => {
    stop.abort();
    clearInterval(timer);
    await running;
  };
}
