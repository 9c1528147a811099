/**
 * A per-key async mutex: callers with the same key run one after another (queued, never rejected),
 * callers with different keys run in parallel. Keys with nobody waiting are forgotten.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();

  /** Run `task` once every earlier task with the same key has settled. */
  async run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    const tail = previous.then(() => mine);
    this.tails.set(key, tail);
    try {
      await previous;
      return await task();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /** How many keys have a task running or queued (for tests and diagnostics). */
  get size(): number {
    return this.tails.size;
  }
}
