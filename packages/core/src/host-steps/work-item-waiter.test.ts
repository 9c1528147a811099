import { describe, expect, it } from 'vitest';
import { BerthError } from '../errors.js';
import { silentLogger } from '../logger.js';
import { WorkItemWaiter } from './work-item-waiter.js';

describe('WorkItemWaiter', () => {
  it('a LISTEN that failed while the database was down is tried again by the next wait, not kept', async () => {
    // Kept, every later wait of the process failed with that old outage, and a replica deferred
    // its remote undos at every beat until it restarted (a review finding, 2026-12-05).
    let down = true;
    let listens = 0;
    const store = {
      notifications: {
        listen: async () => {
          listens += 1;
          if (down) throw new BerthError('UNAVAILABLE', 'cannot reach the berth database', { details: { outage: true } });
          return async () => undefined;
        },
        notify: async () => undefined,
      },
      workItems: { get: async (id: string) => ({ id, state: 'done', result: {}, attempts: 1 }) },
    } as unknown as ConstructorParameters<typeof WorkItemWaiter>[0];
    const waiter = new WorkItemWaiter(store, silentLogger, 60_000);
    const first = await waiter.wait('a', new AbortController().signal).catch((e: unknown) => e);
    expect(BerthError.is(first) && first.details.outage).toBe(true);
    down = false;
    expect(await waiter.wait('b', new AbortController().signal)).toMatchObject({ id: 'b', state: 'done' });
    expect(listens).toBe(2);
    await waiter.close();
  });

  it('closes when its LISTEN failed: the caller goes on to close the store', async () => {
    const store = {
      notifications: {
        listen: async () => {
          throw new BerthError('UNAVAILABLE', 'cannot reach the berth database', { details: { outage: true } });
        },
        notify: async () => undefined,
      },
      workItems: { get: async () => undefined },
    } as unknown as ConstructorParameters<typeof WorkItemWaiter>[0];
    const waiter = new WorkItemWaiter(store, silentLogger, 60_000);
    const waiting = waiter.wait('a', new AbortController().signal).catch((e: unknown) => e);
    await expect(waiter.close()).resolves.toBeUndefined();
    expect(BerthError.is(await waiting)).toBe(true);
  });
});
