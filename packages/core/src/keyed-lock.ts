/**
 * An async lock per key that queues: callers for the same key run one after another, in arrival
 * order; different keys never wait for each other; a caller whose signal aborts while queued
 * leaves the queue without holding the lock and without letting anyone in early. Keys nobody
 * holds or waits for are forgotten. (democratic-csi's lock rejects instead of queueing, and
 * os-brick's is host-wide; both make users retry or wait for unrelated work.) This is berth's one
 * lock implementation: core, the store, the plugins and the simulated host all use it.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();

  /**
   * Wait for the lock of `key`; resolves with the function that releases it (extra calls do
   * nothing). Rejects with the signal's reason if aborted while queued.
   */
  async acquire(key: string, signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted();
    const previous = this.tails.get(key) ?? Promise.resolve();
    let open!: () => void;
    const mine = new Promise<void>((resolve) => {
      open = resolve;
    });
    const tail = previous.then(() => mine);
    this.tails.set(key, tail);
    const forget = (): void => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
    try {
      await waitOrAbort(previous, signal);
    } catch (error) {
      // Still in the queue's chain: whoever holds the lock now must finish before the ones behind
      // this caller start, so the key is forgotten only once the chain has passed it.
      open();
      void tail.then(forget);
      throw error;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      open();
      forget();
    };
  }

  /** Run `fn` holding the lock for `key`; rejects with the signal's reason if aborted while queued. */
  async withLock<T>(key: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    const release = await this.acquire(key, signal);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Keys currently held or queued (for tests and metrics). */
  get size(): number {
    return this.tails.size;
  }
}

/** A lock with a single key: callers run one at a time, in arrival order (the keyed lock's rules). */
export class Mutex {
  private readonly lock = new KeyedLock();

  /** Wait for the mutex; resolves with its release function (extra calls do nothing). */
  acquire(signal?: AbortSignal): Promise<() => void> {
    return this.lock.acquire('', signal);
  }

  /** Run `fn` alone; rejects with the signal's reason if aborted while queued. */
  run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    return this.lock.withLock('', fn, signal);
  }
}

async function waitOrAbort(promise: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return promise;
  let onAbort: (() => void) | undefined;
  try {
    await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        onAbort = () => reject(signal.reason);
        signal.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
  } finally {
    if (onAbort) signal.removeEventListener('abort', onAbort);
  }
}
