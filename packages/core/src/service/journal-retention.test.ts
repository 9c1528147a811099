import { afterEach, describe, expect, it, vi } from 'vitest';
import { BerthError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { OperationPruneRequest } from '../requests.js';
import type { ServiceParts } from './parts.js';
import { startJournalRetention } from './journal-retention.js';

afterEach(() => {
  vi.useRealTimers();
});

/** Parts with this journal config and a logger that keeps `[level, message, fields]`. */
function partsWith(journal: { retainDays: number; pruneIntervalMs: number }) {
  const lines: Array<[string, string, Record<string, unknown>]> = [];
  const at = (level: string) => (obj: Record<string, unknown>, msg?: string) => void lines.push([level, msg ?? '', obj]);
  const logger: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => logger };
  return { parts: { config: { journal }, logger } as unknown as ServiceParts, lines };
}

describe('startJournalRetention', () => {
  it('prunes by the retained days at once and then every interval; stop ends it', async () => {
    vi.useFakeTimers();
    const asked: OperationPruneRequest[] = [];
    const signals: AbortSignal[] = [];
    const { parts } = partsWith({ retainDays: 7, pruneIntervalMs: 60_000 });
    const stop = startJournalRetention(parts, async (request, signal) => {
      asked.push(request);
      signals.push(signal);
      return { pruned: 0, endedBefore: '', dryRun: false };
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(asked).toEqual([{ olderThanMs: 7 * 86_400_000 }]);
    await vi.advanceTimersByTimeAsync(180_000);
    expect(asked).toHaveLength(4);
    expect(signals[0]?.aborted).toBe(false);
    await stop();
    // A prune in flight at shutdown stops between two batches.
    expect(signals[0]?.aborted).toBe(true);
    await vi.advanceTimersByTimeAsync(600_000);
    expect(asked).toHaveLength(4);
  });

  it('0 days: never prunes', async () => {
    vi.useFakeTimers();
    const prune = vi.fn();
    const stop = startJournalRetention(partsWith({ retainDays: 0, pruneIntervalMs: 1_000 }).parts, prune);
    await vi.advanceTimersByTimeAsync(10_000);
    await stop();
    expect(prune).not.toHaveBeenCalled();
  });

  it('logs a lasting failure once, a new message again, and the recovery once; never two rounds at once', async () => {
    vi.useFakeTimers();
    const outcomes: Array<Error | undefined> = [new BerthError('UNAVAILABLE', 'database is locked'), new BerthError('UNAVAILABLE', 'database is locked'), new Error('disk full'), undefined, undefined];
    const { parts, lines } = partsWith({ retainDays: 30, pruneIntervalMs: 1_000 });
    let inFlight = 0;
    let most = 0;
    const stop = startJournalRetention(parts, async () => {
      inFlight += 1;
      most = Math.max(most, inFlight);
      // Slower than the interval: the next tick finds this round running and skips.
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      inFlight -= 1;
      const next = outcomes.shift();
      if (next) throw next;
      return { pruned: 0, endedBefore: '', dryRun: false };
    });
    await vi.advanceTimersByTimeAsync(12_000);
    // Stop waits for the round in flight.
    const stopped = stop();
    await vi.advanceTimersByTimeAsync(2_000);
    await stopped;
    expect(most).toBe(1);
    expect(lines.map(([level, msg, fields]) => [level, msg, fields['err']])).toEqual([
      ['warn', 'journal retention failed; trying again at the next round', 'database is locked'],
      ['warn', 'journal retention failed; trying again at the next round', 'disk full'],
      ['info', 'journal retention works again', undefined],
    ]);
  });
});
