import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * Set while a `Store.deferDurability` callback runs: the commits it makes need not reach the disk
 * before they return (SQLite `synchronous = NORMAL`, PostgreSQL `synchronous_commit = off`). The
 * drivers read it when a transaction begins and, on SQLite, before a statement that commits by
 * itself.
 */
const deferred = new AsyncLocalStorage<true>();

/** Run `fn` with deferred-durable commits. */
export function runDeferred<T>(fn: () => Promise<T>): Promise<T> {
  return deferred.run(true, fn);
}

/** Whether the commits made here may be deferred-durable. */
export function durabilityDeferred(): boolean {
  return deferred.getStore() === true;
}

/**
 * Run `fn` outside any deferred scope: listeners woken by a commit start work of their own, which
 * must not inherit the committing call's durability.
 */
export function outsideDeferred(fn: () => void): void {
  deferred.exit(fn);
}
