import { describe, expect, it } from 'vitest';
import { KeyedLock, Mutex } from './keyed-lock.js';

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

describe('KeyedLock.acquire', () => {
  it('hands the key out one holder at a time, in arrival order; a second release does nothing', async () => {
    const lock = new KeyedLock();
    const order: string[] = [];
    const holder = async (name: string): Promise<void> => {
      const release = await lock.acquire('db');
      order.push(`${name}:in`);
      await new Promise((r) => setImmediate(r));
      order.push(`${name}:out`);
      release();
      release();
    };
    await Promise.all([holder('a'), holder('b'), holder('c')]);
    expect(order).toEqual(['a:in', 'a:out', 'b:in', 'b:out', 'c:in', 'c:out']);
    expect(lock.size).toBe(0);
  });

  it('an aborted waiter lets nobody in while the holder still holds, and the order behind it stays', async () => {
    const lock = new KeyedLock();
    const releaseA = await lock.acquire('k');
    const order: string[] = [];
    const controller = new AbortController();
    const b = lock.acquire('k', controller.signal);
    const c = lock.withLock('k', async () => void order.push('c'));
    controller.abort(new Error('b gave up'));
    await expect(b).rejects.toThrow('b gave up');
    // The last waiter gives up too: a caller arriving now, while A still holds, must still wait.
    const controllerD = new AbortController();
    const d = lock.acquire('k', controllerD.signal);
    controllerD.abort(new Error('d gave up'));
    await expect(d).rejects.toThrow('d gave up');
    const e = lock.withLock('k', async () => void order.push('e'));
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual([]);
    releaseA();
    await Promise.all([c, e]);
    expect(order).toEqual(['c', 'e']);
    expect(lock.size).toBe(0);
  });

  it('refuses at once with a signal already aborted, and the key stays free', async () => {
    const lock = new KeyedLock();
    await expect(lock.acquire('k', AbortSignal.abort(new Error('too late')))).rejects.toThrow('too late');
    expect(lock.size).toBe(0);
    await expect(lock.withLock('k', async () => 'free')).resolves.toBe('free');
  });
});

describe('Mutex', () => {
  it('runs callers one at a time, in arrival order, and goes on after a failure', async () => {
    const mutex = new Mutex();
    const order: string[] = [];
    const work = (name: string, fail = false) =>
      mutex.run(async () => {
        order.push(`${name}:in`);
        await new Promise((r) => setImmediate(r));
        order.push(`${name}:out`);
        if (fail) throw new Error(`${name} failed`);
        return name;
      });
    const results = await Promise.allSettled([work('a'), work('b', true), work('c')]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(order).toEqual(['a:in', 'a:out', 'b:in', 'b:out', 'c:in', 'c:out']);
  });

  it('a waiter whose signal aborts never runs', async () => {
    const mutex = new Mutex();
    const release = await mutex.acquire();
    const controller = new AbortController();
    let ran = false;
    const queued = mutex.run(async () => {
      ran = true;
    }, controller.signal);
    controller.abort(new Error('cancelled'));
    await expect(queued).rejects.toThrow('cancelled');
    release();
    await expect(mutex.run(async () => 'next')).resolves.toBe('next');
    expect(ran).toBe(false);
  });
});
