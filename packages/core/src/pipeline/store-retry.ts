import { setTimeout as sleep } from 'node:timers/promises';
import { BerthError, toBerthError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Store } from '../store.js';

/** How a store write is retried. */
export interface StoreRetryOptions {
  /** What the write does, for the log line of a retry. */
  what: string;
  /** Stop retrying when this fires (the operation's deadline, or an undo's). */
  signal?: AbortSignal;
  /** Stop retrying after this long (default: until `signal` fires, else 30 s). */
  budgetMs?: number;
  logger?: Logger;
}

/** A full disk rarely frees itself within an operation: a few tries, then the error. */
const FULL_ATTEMPTS = 3;
const FIRST_DELAY_MS = 25;
const MAX_DELAY_MS = 1000;
const DEFAULT_BUDGET_MS = 30_000;

/**
 * Whether the store said the same write may work a moment later (another process held the lock;
 * the disk was full; a PostgreSQL server ended the connection on purpose before the write took
 * effect). Any other lost PostgreSQL connection is not: a server that crashed may have lost this
 * process's last deferred-durable commits (`Store.deferDurability`), so carrying on after it could
 * journal progress on top of rows that are gone; the step fails and is undone instead.
 */
export function retryableStoreError(error: unknown): error is BerthError {
  return BerthError.is(error) && error.details.retryable === true;
}

/**
 * Run a store write, retrying it with backoff while the store says it may work a moment later,
 * until `signal` fires or the budget is spent; then the last error is thrown. Other errors are
 * thrown at once. A busy SQLite write never ran, so retrying it is always safe.
 */
export async function withStoreRetry<T>(fn: () => Promise<T>, options: StoreRetryOptions): Promise<T> {
  const started = Date.now();
  const budget = options.budgetMs ?? (options.signal ? Number.POSITIVE_INFINITY : DEFAULT_BUDGET_MS);
  let delay = FIRST_DELAY_MS;
  let fullAttempts = 0;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await fn();
    } catch (raw) {
      if (!retryableStoreError(raw)) throw raw;
      const error = toBerthError(raw);
      if (error.details.reason === 'disk-full' && ++fullAttempts >= FULL_ATTEMPTS) throw error;
      if (options.signal?.aborted || Date.now() - started + delay > budget) throw gaveUp(error, attempt, Date.now() - started);
      options.logger?.warn({ code: error.code, attempt, what: options.what }, 'store write failed; retrying');
      try {
        await sleep(delay, undefined, options.signal ? { signal: options.signal } : {});
      } catch {
        throw gaveUp(error, attempt, Date.now() - started);
      }
      delay = Math.min(delay * 2, MAX_DELAY_MS);
    }
  }
}

/**
 * The last error of a write retried for a while, saying how long: the store's own message counts
 * one try (SQLite's "locked … for more than 5000 ms", its busy timeout), while the command waited
 * until its deadline — a user read "5000 ms" after a 2-minute wait and raised a setting that was
 * not the limit (explorer, 2026-12-08). A first try, or retries within a second, is left as it is.
 */
function gaveUp(error: BerthError, attempts: number, waitedMs: number): BerthError {
  if (attempts < 2 || waitedMs < 1_000) return error;
  const locked = error.details.reason === 'database-locked';
  return new BerthError(error.code, `${error.message}; berth tried ${attempts} times over ${Math.round(waitedMs / 1000)} s before giving up`, {
    hint: locked
      ? 'another process holds the database\'s write lock that long (another berth command, or a tool with a transaction open on it, e.g. sqlite3): `fuser -v <the database file>` names it; let it finish or end it, then run the command again'
      : (error.hint ?? 'run the command again once the database answers'),
    details: { ...error.details, attempts, waitedMs },
    cause: error,
  });
}

/**
 * `store` with every repository call and transaction retried like `withStoreRetry` until `signal`
 * fires: the pipelines' steps use it, so another process holding the database a moment delays a
 * step instead of failing it (and a detach past its point of no return does not end in
 * `error_detaching` for a lock). A retried call never ran (busy) or is a whole transaction.
 */
export function retryingStore(store: Store, options: { signal: AbortSignal; logger?: Logger }): Store {
  const wrap = <R extends object>(repo: R, name: string): R =>
    new Proxy(repo, {
      get(target, prop, receiver) {
        const value: unknown = Reflect.get(target, prop, receiver);
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) =>
          withStoreRetry(() => Promise.resolve((value as (...a: unknown[]) => unknown).apply(target, args)), { what: `${name}.${String(prop)}`, ...options });
      },
    });
  return {
    volumes: wrap(store.volumes, 'volumes'),
    hosts: wrap(store.hosts, 'hosts'),
    servers: wrap(store.servers, 'servers'),
    attachments: wrap(store.attachments, 'attachments'),
    operations: wrap(store.operations, 'operations'),
    devices: wrap(store.devices, 'devices'),
    locks: wrap(store.locks, 'locks'),
    ...(store.workItems ? { workItems: wrap(store.workItems, 'workItems') } : {}),
    ...(store.notifications ? { notifications: store.notifications } : {}),
    transaction: (fn) => withStoreRetry(() => store.transaction(fn), { what: 'transaction', ...options }),
    ...(store.deferDurability ? { deferDurability: store.deferDurability.bind(store) } : {}),
    close: () => store.close(),
  };
}
