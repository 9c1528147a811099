/**
 * A clock of ISO-8601 timestamps that never repeats or goes back within one store, so rows written
 * in the same millisecond still sort in the order they were written ("newest first" holds).
 */
export function createMonotonicClock(now: () => number = Date.now): () => string {
  let last = 0;
  return () => {
    const current = now();
    last = current > last ? current : last + 1;
    return new Date(last).toISOString();
  };
}
