import { describe, expect, it } from 'vitest';
import { createMonotonicClock } from './monotonic-clock.js';

describe('createMonotonicClock', () => {
  it('never repeats or goes back, even when the wall clock does', () => {
    const readings = [1000, 1000, 1000, 900, 2000];
    const clock = createMonotonicClock(() => readings.shift() ?? 0);
    const stamps = Array.from({ length: 5 }, () => clock());
    expect(stamps).toEqual([
      '1970-01-01T00:00:01.000Z',
      '1970-01-01T00:00:01.001Z',
      '1970-01-01T00:00:01.002Z',
      '1970-01-01T00:00:01.003Z',
      '1970-01-01T00:00:02.000Z',
    ]);
  });
});
