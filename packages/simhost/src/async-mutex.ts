/** A FIFO async mutex: `run(fn)` runs `fn` once every earlier caller's `fn` has settled. */
export class AsyncMutex {
  private tail: Promise<unknown> = Promise.resolve();

  /** Run `fn` alone; callers queue in order. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn, fn);
    // The queue goes on after a failure; the caller sees the error through `result`.
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}
