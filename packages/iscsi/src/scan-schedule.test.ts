import { describe, expect, it } from 'vitest';
import { scanSlices } from './scan-schedule.js';

describe('scanSlices', () => {
  it('splits the budget in doubling slices that add up to it', () => {
    expect(scanSlices(7_000, 3)).toEqual([1_000, 2_000, 4_000]);
    expect(scanSlices(30_000, 3)).toEqual([4_286, 8_571, 17_143]);
    for (const [budget, attempts] of [[1, 5], [999, 4], [30_000, 10], [0, 2]] as const) {
      const slices = scanSlices(budget, attempts);
      expect(slices).toHaveLength(attempts);
      expect(slices.reduce((a, b) => a + b, 0)).toBe(budget);
      expect(slices.every((s) => s >= 0)).toBe(true);
    }
  });

  it('gives the whole budget to a single scan', () => {
    expect(scanSlices(5_000, 1)).toEqual([5_000]);
  });

  it('refuses nonsense', () => {
    expect(() => scanSlices(-1, 3)).toThrow(RangeError);
    expect(() => scanSlices(Number.POSITIVE_INFINITY, 3)).toThrow(RangeError);
    expect(() => scanSlices(1_000, 0)).toThrow(RangeError);
    expect(() => scanSlices(1_000, 1.5)).toThrow(RangeError);
  });
});
