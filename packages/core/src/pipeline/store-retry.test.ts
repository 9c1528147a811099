import { describe, expect, it } from 'vitest';
import { BerthError } from '../errors.js';
import { isStoreOutage } from '../store-errors.js';
import { withStoreRetry } from './store-retry.js';

/** SQLite's busy error as `@berth/store` words it: one try's wait. */
const locked = (): BerthError =>
  new BerthError('TIMEOUT', 'the berth database /d/berth.db stayed locked by another process for more than 5000 ms', {
    hint: 'raise store.busyTimeoutMs',
    details: { filename: '/d/berth.db', busyTimeoutMs: 5000, reason: 'database-locked', retryable: true, outage: true },
  });

describe('withStoreRetry', () => {
  it('says how long it retried a locked database before giving up, with a hint that names the holder, not the busy timeout', async () => {
    let tries = 0;
    const error = await withStoreRetry(
      () => {
        tries += 1;
        return Promise.reject(locked());
      },
      { what: 'journal', budgetMs: 2_500 },
    ).catch((e: unknown) => e as BerthError);
    expect(tries).toBeGreaterThan(2);
    expect(error.code).toBe('TIMEOUT');
    expect(error.message).toMatch(new RegExp(`^the berth database /d/berth\\.db stayed locked by another process for more than 5000 ms; berth tried ${tries} times over [12] s before giving up$`));
    expect(error.hint).toMatch(/fuser -v/);
    expect(error.hint).not.toMatch(/busyTimeoutMs/);
    expect(error.details).toMatchObject({ reason: 'database-locked', retryable: true, attempts: tries });
    expect(isStoreOutage(error)).toBe(true);
  });

  it('leaves the error of a first try as the store gave it', async () => {
    const controller = new AbortController();
    controller.abort();
    const error = await withStoreRetry(() => Promise.reject(locked()), { what: 'journal', signal: controller.signal }).catch((e: unknown) => e as BerthError);
    expect(error.message).toBe('the berth database /d/berth.db stayed locked by another process for more than 5000 ms');
    expect(error.hint).toBe('raise store.busyTimeoutMs');
  });

  it('returns what a retry gets once the lock is gone', async () => {
    let tries = 0;
    const value = await withStoreRetry(() => (++tries < 3 ? Promise.reject(locked()) : Promise.resolve('written')), { what: 'journal', budgetMs: 5_000 });
    expect(value).toBe('written');
    expect(tries).toBe(3);
  });
});
