/**
 * A FIFO async mutex. better-sqlite3 blocks the event loop while SQLite waits for a lock, so two
 * connections of one process must never wait on each other inside SQLite: they queue here instead.
 */
export class AsyncMutex {
  #tail: Promise<void> = Promise.resolve();

  /** Wait for the mutex; the returned function releases it (extra calls do nothing). */
  async acquire(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((resolve) => {
      release = resolve;
    });
    const previous = this.#tail;
    this.#tail = previous.then(() => next);
    await previous;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      release();
    };
  }
}
