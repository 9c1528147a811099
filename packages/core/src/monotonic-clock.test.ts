import { describe, expect, it } from 'vitest';
import { createMonotonicClock } from './monotonic-clock.js';

describe('createMonotonicClock', () => {
  it('never repeats or goes back, even when the wall clock does', () => {
    const readings = [1000, 1000, 1000, 900, 2000];
    const clock = createMonotonicClock(() => readings.shift() ?? 0);
    const stamps = Array.from({ length: 5 }, () => clock());
    expect(stamps).toEqual([
      '1970-01-01T00:00:01.000000Z',
      '1970-01-01T00:00:01.000001Z',
      '1970-01-01T00:00:01.000002Z',
      '1970-01-01T00:00:01.000003Z',
      '1970-01-01T00:00:02.000000Z',
    ]);
    // Strings sort as the times do; Date.parse reads them (to the millisecond).
    expect([...stamps].sort()).toEqual(stamps);
    expect(stamps.map((s) => Date.parse(s))).toEqual([1000, 1000, 1000, 1000, 2000]);
  });

  it('does not run ahead of the wall clock when asked many times a millisecond', () => {
    // 50 stamps per millisecond for 10 s of wall clock (a millisecond step ran 490 s ahead).
    let wall = Date.parse('2026-12-06T05:00:00.000Z');
    const clock = createMonotonicClock(() => wall);
    let stamp = '';
    for (let ms = 0; ms < 10_000; ms++, wall++) for (let i = 0; i < 50; i++) stamp = clock();
    expect(Date.parse(stamp)).toBe(wall - 1);
  });
});
