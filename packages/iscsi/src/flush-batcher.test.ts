import { describe, expect, it } from 'vitest';
import { FlushBatcher } from './flush-batcher.js';
import { ReplayRunner } from './test-replay-runner.js';

describe('FlushBatcher', () => {
  it('runs one flush alone, and the flushes asked meanwhile in one blockdev run', async () => {
    const runner = new ReplayRunner(() => ({ exitCode: 0 }));
    const flusher = new FlushBatcher(runner, 5_000);
    await Promise.all(['/dev/sda', '/dev/sdb', '/dev/sdc', '/dev/sdb'].map((node) => flusher.flush(node)));
    expect(runner.calls.map((c) => [c.file, ...c.args])).toEqual([
      ['blockdev', '--flushbufs', '/dev/sda'],
      ['blockdev', '--flushbufs', '/dev/sdb', '/dev/sdc'],
    ]);
    expect(runner.calls.every((c) => c.options.timeoutMs === 5_000)).toBe(true);
  });

  it('when a batch fails, each disk is flushed again on its own and only the failing one rejects', async () => {
    const runner = new ReplayRunner((args) =>
      args.includes('/dev/sdc') ? { exitCode: 1, stderr: 'blockdev: cannot open /dev/sdc: No such device or address\n' } : { exitCode: 0 },
    );
    const flusher = new FlushBatcher(runner, 5_000);
    const outcomes = await Promise.allSettled(['/dev/sda', '/dev/sdb', '/dev/sdc'].map((node) => flusher.flush(node)));
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'fulfilled', 'rejected']);
    expect(runner.calls.map((c) => c.args.slice(1).join(' '))).toEqual(['/dev/sda', '/dev/sdb /dev/sdc', '/dev/sdb', '/dev/sdc']);
  });
});
