import { describe, expect, it } from 'vitest';
import { WATCHER_RESTART_BACKOFF_MAX_MS, WATCHER_RESTART_BACKOFF_MS, WatcherRestarts } from './watch-start.js';

describe('WatcherRestarts (upkeep restarting a watcher that keeps dying)', () => {
  it('restarts a watcher that died at once, then waits 10 s, 20 s, 40 s… up to 10 minutes while it dies before any round sees it running', () => {
    const restarts = new WatcherRestarts();
    let now = 1_000_000;
    expect(restarts.due(now)).toBe(true);
    restarts.restarted(now);
    const waits: number[] = [];
    for (let i = 0; i < 10; i++) {
      const wait = restarts.nextWaitMs;
      waits.push(wait);
      expect(restarts.due(now + wait - 1)).toBe(false);
      now += wait;
      expect(restarts.due(now)).toBe(true);
      restarts.restarted(now);
    }
    expect(waits.slice(0, 4)).toEqual([WATCHER_RESTART_BACKOFF_MS, 2 * WATCHER_RESTART_BACKOFF_MS, 4 * WATCHER_RESTART_BACKOFF_MS, 8 * WATCHER_RESTART_BACKOFF_MS]);
    expect(Math.max(...waits)).toBe(WATCHER_RESTART_BACKOFF_MAX_MS);
  });

  it('a round that finds the watcher running ends the wait: its next death is restarted at once', () => {
    const restarts = new WatcherRestarts();
    restarts.restarted(0);
    restarts.restarted(WATCHER_RESTART_BACKOFF_MS);
    expect(restarts.due(WATCHER_RESTART_BACKOFF_MS + 1)).toBe(false);
    restarts.running();
    expect(restarts.due(WATCHER_RESTART_BACKOFF_MS + 1)).toBe(true);
    expect(restarts.nextWaitMs).toBe(0);
  });
});
