import { writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { BerthError, EXIT_CODES, toBerthError } from './errors.js';

/** A real ENOSPC: every write to /dev/full fails with it. */
function realEnospc(): unknown {
  try {
    writeFileSync('/dev/full', 'x');
  } catch (error) {
    return error;
  }
  throw new Error('/dev/full accepted a write');
}

describe('toBerthError', () => {
  it('gives a full disk that escaped as a Node error the disk-full error (exit 13, a hint), not INTERNAL', () => {
    const raw = realEnospc();
    expect((raw as NodeJS.ErrnoException).code).toBe('ENOSPC');
    for (const fallback of [undefined, 'DRIVER_ERROR'] as const) {
      const error = toBerthError(raw, fallback);
      expect(error.code).toBe('HOST_UNSUPPORTED');
      expect(error.exitCode).toBe(EXIT_CODES.HOST_UNSUPPORTED);
      expect(error.message).toBe('the disk is full');
      expect(error.hint).toMatch(/free space on that file system.*`berth volume list`/);
      expect(error.details).toEqual({ reason: 'disk-full', retryable: true });
      expect(error.cause).toBe(raw);
    }
  });

  it('keeps BerthErrors and wraps other errors in the fallback', () => {
    const own = new BerthError('NOT_FOUND', 'no such volume');
    expect(toBerthError(own)).toBe(own);
    expect(toBerthError(Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' })).code).toBe('INTERNAL');
    expect(toBerthError(new Error('boom'), 'BACKEND_ERROR').code).toBe('BACKEND_ERROR');
  });
});
