import { describe, expect, it } from 'vitest';
import { exportsToFail, observePings, overdueExports, type WatchEntry } from './watch-decision.js';

const A = { key: 'a', portal: '127.0.0.1:3260' };
const B = { key: 'b', portal: '127.0.0.2:3260' };

/** Rounds of pings on a fake clock: `rounds[i]` lists the portals that answered at `i * stepMs`. */
function run(exports: Array<typeof A>, rounds: string[][], stepMs: number): Map<string, WatchEntry> {
  let watch = new Map<string, WatchEntry>();
  rounds.forEach((answering, i) => {
    watch = observePings(watch, exports, (portal) => answering.includes(portal), i * stepMs);
  });
  return watch;
}

describe('the watch decision (last answer times -> which exports to abort)', () => {
  it('aborts only the export whose portal has been silent longer than the timeout', () => {
    // Pings every second; A's portal stops answering after t=2 s, B's always answers.
    const rounds = [0, 1, 2, 3, 4, 5, 6].map((t) => (t <= 2 ? [A.portal, B.portal] : [B.portal]));
    const watch = run([A, B], rounds, 1_000);
    expect(watch.get('a')).toEqual({ portal: A.portal, lastAnswerMs: 2_000 });
    expect(overdueExports(watch, 5_000, 3_000)).toEqual([]); // silent for exactly 3 s: not longer
    expect(overdueExports(watch, 5_001, 3_000)).toEqual(['a']);
    expect(overdueExports(watch, 6_000, 3_000)).toEqual(['a']);
  });

  it('nothing when the portal answers again before the timeout (a SIGSTOPped target resumed)', () => {
    const rounds = [[A.portal], [], [], [A.portal], []];
    const watch = run([A], rounds, 1_000);
    expect(watch.get('a')?.lastAnswerMs).toBe(3_000);
    expect(overdueExports(watch, 4_000, 3_000)).toEqual([]);
  });

  it('counts from the first round for a LUN never answered (a watcher started after the target died)', () => {
    const watch = run([A], [[], [], [], [], []], 1_000);
    expect(watch.get('a')?.lastAnswerMs).toBe(0);
    expect(overdueExports(watch, 4_000, 3_000)).toEqual(['a']);
  });

  it('starts the count again on a new portal (a failover), and forgets a LUN no longer listed', () => {
    let watch = observePings(new Map(), [A, B], () => false, 0);
    watch = observePings(watch, [{ key: 'a', portal: '127.0.0.9:3260' }], () => false, 10_000);
    expect([...watch.keys()]).toEqual(['a']);
    expect(watch.get('a')).toEqual({ portal: '127.0.0.9:3260', lastAnswerMs: 10_000 });
    expect(overdueExports(watch, 12_000, 3_000)).toEqual([]);
  });
});

describe('which overdue LUNs are failed (qemu 7.2 takes the whole daemon down with an aborted export)', () => {
  it('all of them when they are every LUN the daemon serves (one tgtd serving them all died)', () => {
    expect(exportsToFail(['a', 'b'], ['a', 'b'])).toEqual({ fail: ['a', 'b'], spared: 0 });
    expect(exportsToFail(['a'], ['a'])).toEqual({ fail: ['a'], spared: 0 });
  });

  it('none while a LUN whose target answers shares the daemon: its I/O must not fail for another target', () => {
    expect(exportsToFail(['a'], ['a', 'b'])).toEqual({ fail: [], spared: 1 });
    expect(exportsToFail([], ['a', 'b'])).toEqual({ fail: [], spared: 2 });
  });
});
