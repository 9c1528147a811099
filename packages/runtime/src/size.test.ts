import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { formatSize, parseSize } from './size.js';

describe('parseSize', () => {
  it('reads bytes and binary and decimal units, up to 1 PiB (the largest volume)', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('512MiB')).toBe(512 * 1024 ** 2);
    expect(parseSize('10G')).toBe(10 * 1024 ** 3);
    expect(parseSize('1GB')).toBe(1000 ** 3);
    expect(parseSize('1.5GiB')).toBe(1.5 * 1024 ** 3);
    // A user found 1PiB refused though 1 PiB is the documented maximum.
    expect(parseSize('1PiB')).toBe(2 ** 50);
    expect(parseSize('1P')).toBe(2 ** 50);
    expect(parseSize('1PB')).toBe(1000 ** 5);
  });

  it('refuses what is not a size, and too large a number, with a hint', () => {
    for (const text of ['', 'ten', '1 XiB', '-1G']) {
      const error = (() => {
        try {
          return parseSize(text);
        } catch (e) {
          return e;
        }
      })();
      expect(BerthError.is(error) && error.code).toBe('VALIDATION');
    }
    try {
      parseSize('99999999999999999999999');
      expect.unreachable();
    } catch (error) {
      expect(BerthError.is(error) && error.hint).toMatch(/at most 1 PiB/);
    }
  });
});

describe('formatSize', () => {
  it('writes binary units', () => {
    expect(formatSize(1073741824)).toBe('1 GiB');
    expect(formatSize(1536)).toBe('1.5 KiB');
    expect(formatSize(2 ** 50)).toBe('1 PiB');
  });
});
