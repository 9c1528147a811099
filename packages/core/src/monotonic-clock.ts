/**
 * A clock of ISO-8601 timestamps that never repeats or goes back within one store, so rows written
 * in the same millisecond still sort in the order they were written ("newest first" holds).
 *
 * Microseconds (`2026-12-06T05:43:21.123001Z`): a stamp asked for in the same millisecond as the
 * one before is one microsecond later. With millisecond stamps that step was a whole millisecond,
 * so a process asking more than once per millisecond on average (a busy replica or embedded berth:
 * ~50 stamps per attach+detach cycle, 28 cycles/s) ran ahead of the wall clock without bound —
 * operations' times grew longer than they took, and leases written from it were seconds off
 * another process's clock. A microsecond step runs ahead only past 1,000 stamps in a millisecond.
 */
export function createMonotonicClock(now: () => number = Date.now): () => string {
  // In microseconds since the epoch (exact in a double for many millennia).
  let last = 0;
  return () => {
    const current = Math.floor(now()) * 1000;
    last = current > last ? current : last + 1;
    const millis = Math.floor(last / 1000);
    const micros = last - millis * 1000;
    return `${new Date(millis).toISOString().slice(0, -1)}${String(micros).padStart(3, '0')}Z`;
  };
}

/**
 * A time in ms as the clock's stamps are written (microseconds: `….123000Z`), for times compared
 * with them as strings (leases' ends): a millisecond stamp (`….123Z`) would sort after every
 * stamp of its own millisecond.
 */
export function isoTimestamp(ms: number): string {
  return `${new Date(Math.floor(ms)).toISOString().slice(0, -1)}000Z`;
}
