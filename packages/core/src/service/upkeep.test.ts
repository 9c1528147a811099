import { afterEach, describe, expect, it, vi } from 'vitest';
import { BerthError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { VolumeBackend } from '../contracts/volume-backend.js';
import type { ServiceParts } from './parts.js';
import { startBackendUpkeep } from './upkeep.js';

afterEach(() => {
  vi.useRealTimers();
});

/** Parts with these backends (by name) and a logger that keeps `[level, message, fields]`. */
function partsWith(backends: Record<string, Partial<VolumeBackend>>, intervalMs = 1_000) {
  const lines: Array<[string, string, Record<string, unknown>]> = [];
  const at = (level: string) => (obj: Record<string, unknown>, msg?: string) => void lines.push([level, msg ?? '', obj]);
  const logger: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => logger };
  const parts = {
    config: { upkeep: { intervalMs } },
    logger,
    catalog: {
      backendNames: () => Object.keys(backends),
      backend: (name: string) => ({ name, ...backends[name] }) as VolumeBackend,
    },
  } as unknown as ServiceParts;
  return { parts, lines };
}

describe('startBackendUpkeep', () => {
  it('runs every backend that has an upkeep at once and then every interval; stop ends it', async () => {
    vi.useFakeTimers();
    const calls: string[] = [];
    const { parts } = partsWith({ file: {}, tgt: { upkeep: async () => void calls.push('tgt') } });
    const stop = startBackendUpkeep(parts);
    await vi.advanceTimersByTimeAsync(0);
    expect(calls).toEqual(['tgt']);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(calls).toHaveLength(4);
    await stop();
    await vi.advanceTimersByTimeAsync(5_000);
    expect(calls).toHaveLength(4);
  });

  it('logs a lasting failure once, a new message again, and the recovery once', async () => {
    vi.useFakeTimers();
    const outcomes: Array<Error | undefined> = [new BerthError('BACKEND_ERROR', 'tgtd would not start', { hint: 'see tgtd.log' }), new BerthError('BACKEND_ERROR', 'tgtd would not start'), new Error('disk full'), undefined, undefined];
    const { parts, lines } = partsWith({
      tgt: {
        upkeep: async () => {
          const next = outcomes.shift();
          if (next) throw next;
        },
      },
    });
    const stop = startBackendUpkeep(parts);
    await vi.advanceTimersByTimeAsync(4_000);
    await stop();
    expect(lines.map(([level, msg, fields]) => [level, msg, fields['err']])).toEqual([
      ['warn', 'backend upkeep failed; trying again at the next round', 'tgtd would not start'],
      ['warn', 'backend upkeep failed; trying again at the next round', 'disk full'],
      ['info', 'backend upkeep works again', undefined],
    ]);
    expect(lines[0]![2]['hint']).toBe('see tgtd.log');
  });

  it('never runs two rounds at once, and stop aborts the round in flight and waits for it', async () => {
    vi.useFakeTimers();
    let running = 0;
    let most = 0;
    let aborted = false;
    const { parts } = partsWith({
      slow: {
        upkeep: (signal) =>
          new Promise<void>((resolve) => {
            most = Math.max(most, ++running);
            signal.addEventListener('abort', () => {
              aborted = true;
              running -= 1;
              resolve();
            });
          }),
      },
    });
    const stop = startBackendUpkeep(parts);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(most).toBe(1);
    await stop();
    expect(aborted).toBe(true);
    expect(running).toBe(0);
  });

  it('an interval of 0 runs nothing', async () => {
    const upkeep = vi.fn(async () => undefined);
    const { parts } = partsWith({ tgt: { upkeep } }, 0);
    await startBackendUpkeep(parts)();
    expect(upkeep).not.toHaveBeenCalled();
  });
});
