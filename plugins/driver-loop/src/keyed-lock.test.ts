import { describe, expect, it } from 'vitest';
import { KeyedLock } from './keyed-lock.js';

describe('KeyedLock', () => {
  it('runs tasks of one key one after another, in arrival order', async () => {
    const lock = new KeyedLock();
    const events: string[] = [];
    let running = 0;
    const task = (id: number) => async (): Promise<number> => {
      running += 1;
      expect(running).toBe(1);
      events.push(`start ${id}`);
      await new Promise<void>((resolve) => setImmediate(resolve));
      events.push(`end ${id}`);
      running -= 1;
      return id;
    };
    const results = await Promise.all([1, 2, 3].map((id) => lock.run('file', task(id))));
    expect(results).toEqual([1, 2, 3]);
    expect(events).toEqual(['start 1', 'end 1', 'start 2', 'end 2', 'start 3', 'end 3']);
    expect(lock.size).toBe(0);
  });

  it('lets different keys run at the same time', async () => {
    const lock = new KeyedLock();
    let releaseA!: () => void;
    const a = lock.run('a', () => new Promise<void>((resolve) => (releaseA = resolve)));
    // b finishes while a is still held: it was not queued behind a.
    await lock.run('b', async () => undefined);
    releaseA();
    await a;
  });

  it('goes on with the queue after a task fails', async () => {
    const lock = new KeyedLock();
    const failed = lock.run('k', async () => {
      throw new Error('boom');
    });
    const next = lock.run('k', async () => 'ok');
    await expect(failed).rejects.toThrow('boom');
    await expect(next).resolves.toBe('ok');
    expect(lock.size).toBe(0);
  });
});
