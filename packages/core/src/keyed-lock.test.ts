import { describe, expect, it } from 'vitest';
import { KeyedLock } from './keyed-lock.js';

describe('KeyedLock', () => {
  it('runs callers of one key one at a time, in arrival order', async () => {
    const lock = new KeyedLock();
    const order: string[] = [];
    let inside = 0;
    let maxInside = 0;
    const work = (name: string) =>
      lock.withLock('v1', async () => {
        inside += 1;
        maxInside = Math.max(maxInside, inside);
        order.push(`start ${name}`);
        await new Promise((r) => setImmediate(r));
        order.push(`end ${name}`);
        inside -= 1;
        return name;
      });
    const results = await Promise.all([work('a'), work('b'), work('c')]);
    expect(results).toEqual(['a', 'b', 'c']);
    expect(maxInside).toBe(1);
    expect(order).toEqual(['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
    expect(lock.size).toBe(0);
  });

  it('never makes different keys wait for each other', async () => {
    const lock = new KeyedLock();
    let releaseA!: () => void;
    const a = lock.withLock('a', () => new Promise<void>((r) => (releaseA = r)));
    const b = await lock.withLock('b', async () => 'b done');
    expect(b).toBe('b done');
    releaseA();
    await a;
  });

  it('releases the key when the holder throws', async () => {
    const lock = new KeyedLock();
    await expect(lock.withLock('k', async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(lock.withLock('k', async () => 'next')).resolves.toBe('next');
    expect(lock.size).toBe(0);
  });

  it('a queued caller whose signal aborts leaves the queue without running', async () => {
    const lock = new KeyedLock();
    let release!: () => void;
    const holder = lock.withLock('k', () => new Promise<void>((r) => (release = r)));
    const controller = new AbortController();
    let ran = false;
    const queued = lock.withLock('k', async () => {
      ran = true;
    }, controller.signal);
    controller.abort(new Error('cancelled'));
    await expect(queued).rejects.toThrow('cancelled');
    release();
    await holder;
    expect(ran).toBe(false);
    await expect(lock.withLock('k', async () => 'free')).resolves.toBe('free');
  });
});
