import { describe, expect, it } from 'vitest';
import { AsyncMutex } from './async-mutex.js';

describe('AsyncMutex', () => {
  it('hands the mutex out one holder at a time, in arrival order', async () => {
    const mutex = new AsyncMutex();
    const order: string[] = [];
    const holder = async (name: string): Promise<void> => {
      const release = await mutex.acquire();
      order.push(`${name}:in`);
      await Promise.resolve();
      await Promise.resolve();
      order.push(`${name}:out`);
      release();
      release();
    };
    await Promise.all([holder('a'), holder('b'), holder('c')]);
    expect(order).toEqual(['a:in', 'a:out', 'b:in', 'b:out', 'c:in', 'c:out']);
  });
});
