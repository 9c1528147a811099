import { EventEmitter } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import { BerthError, toBerthError, type BerthService, type Operation, type OperationOutcome, type StartedOperation } from '@berth/core';
import { BoundedMap } from './bounded-map.js';
import type { ApiMetrics } from './metrics.js';

/** How an operation ended, as seen by the process that ran it. */
export type Settlement = { ok: true; outcome: OperationOutcome } | { ok: false; error: BerthError };

/** A run this process stopped because another replica took its operation over (launcher's fence). */
function isTakenOver(error: BerthError): boolean {
  return error.code === 'CONFLICT' && error.details.takenOver === true;
}

/** The logging the tracker needs. */
export interface TrackerLog {
  warn(obj: Record<string, unknown>, msg?: string): void;
}

// Operations started by another process (the CLI, another API instance) have no promise here:
// their row is read again at this interval until it leaves `running` or the wait ends.
const STORE_POLL_MS = 100;

/**
 * The operations this app started: their `done` promises (what a long-poll waits on), how each
 * ended (kept for the last `capacity` ones, so a client can fetch the outcome, including a detach's
 * attachment as it was), the in-flight gauge and the metrics recorded from each finished journal.
 */
export class OperationTracker {
  private readonly pending = new Map<string, { operation: Operation; settled: Promise<void> }>();
  private readonly results: BoundedMap<string, Settlement>;
  private waiting = 0;
  /** Emits `start` and `end` (with the operation id) around every long-poll wait. */
  readonly waits = new EventEmitter();

  constructor(
    private readonly service: BerthService,
    private readonly metrics: ApiMetrics,
    private readonly log: TrackerLog,
    capacity = 1000,
  ) {
    this.results = new BoundedMap(capacity);
  }

  /** Follow a started operation until it ends (a replayed one is not counted twice). */
  track(started: StartedOperation): void {
    const { operation, done } = started;
    const id = operation.id;
    if (this.pending.has(id) || this.results.has(id)) {
      done.catch(() => undefined);
      return;
    }
    // A replay of an operation that finished before this process started: remember its outcome,
    // record nothing (its metrics belong to whoever ran it).
    const counted = operation.state === 'running';
    if (counted) this.metrics.inFlight.inc({ kind: operation.kind });
    const settled = done
      .then(
        (outcome) => {
          this.results.set(id, { ok: true, outcome });
          if (counted) this.metrics.recordOperation(outcome.operation, outcome.attachment?.transport ?? 'unknown');
        },
        async (raw: unknown) => {
          const error = toBerthError(raw);
          // Another replica owns it now and finishes it: its end is in the store, not here, and a
          // waiter keeps following it there (a client must not see the handover as a failure).
          if (isTakenOver(error)) return;
          this.results.set(id, { ok: false, error });
          if (!counted) return;
          const finished = await this.service.getOperation(id).catch(() => undefined);
          if (finished) this.metrics.recordOperation(finished, 'unknown');
        },
      )
      .catch((error: unknown) => {
        this.log.warn({ operationId: id, err: toBerthError(error).message }, 'recording an operation failed');
      })
      .finally(() => {
        if (counted) this.metrics.inFlight.dec({ kind: operation.kind });
        this.pending.delete(id);
      });
    this.pending.set(id, { operation, settled });
  }

  /**
   * An operation this process runs, as it started (enough to check who may see it without a store
   * read); undefined once it ended (the store has its journal) or when it is not ours.
   */
  runningOperation(id: string): Operation | undefined {
    return this.pending.get(id)?.operation;
  }

  /** How many long-polls are waiting now. */
  get waitingCount(): number {
    return this.waiting;
  }

  /** How an operation this process ran ended, if it did and is still remembered. */
  settlement(id: string): Settlement | undefined {
    return this.results.get(id);
  }

  /** How many operations this process started are still running. */
  inFlight(): number {
    return this.pending.size;
  }

  /**
   * Wait until operation `id` is no longer running, `ms` passes, or `signal` aborts (the client went
   * away, or shutdown), whichever comes first. An operation this process runs wakes its waiters the
   * moment it ends (its promise settles); one run elsewhere is read from the store every 100 ms.
   * Resolves in every case; the caller reads the state afterwards.
   */
  async waitFor(id: string, ms: number, signal: AbortSignal): Promise<void> {
    if (ms <= 0 || signal.aborted || this.results.has(id)) return;
    this.waiting += 1;
    this.metrics.longPolls.inc();
    this.waits.emit('start', id);
    try {
      await this.waitUntilEnded(id, ms, signal);
    } finally {
      this.waiting -= 1;
      this.metrics.longPolls.dec();
      this.waits.emit('end', id);
    }
  }

  private async waitUntilEnded(id: string, ms: number, signal: AbortSignal): Promise<void> {
    const deadline = Date.now() + ms;
    const local = this.pending.get(id);
    if (local !== undefined) {
      await this.race(local.settled, ms, signal);
      // Ended here, or still running here: either way the caller reads it now. Taken over by
      // another replica: follow it in the store for the rest of the wait.
      if (this.results.has(id) || this.pending.has(id)) return;
    }
    for (;;) {
      const operation = await this.service.getOperation(id);
      if (operation.state !== 'running') return;
      const left = deadline - Date.now();
      if (left <= 0 || signal.aborted) return;
      const ok = await delay(Math.min(STORE_POLL_MS, left), true, { signal }).catch(() => false);
      if (!ok) return;
    }
  }

  /** Wait for every operation this process started to finish. */
  async drain(): Promise<void> {
    while (this.pending.size > 0) {
      await Promise.allSettled([...this.pending.values()].map((p) => p.settled));
    }
  }

  private async race(settled: Promise<void>, ms: number, signal: AbortSignal): Promise<void> {
    const timer = new AbortController();
    const onAbort = (): void => timer.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      await Promise.race([settled, delay(ms, undefined, { signal: timer.signal }).catch(() => undefined)]);
    } finally {
      timer.abort();
      signal.removeEventListener('abort', onAbort);
    }
  }
}
