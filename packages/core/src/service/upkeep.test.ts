import { afterEach, describe, expect, it, vi } from 'vitest';
import { BerthError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { TransportDriver } from '../contracts/transport-driver.js';
import type { VolumeBackend } from '../contracts/volume-backend.js';
import { createMemoryStore } from '../memory-store.js';
import type { ServiceParts } from './parts.js';
import { runsOwnHostSteps, startBackendUpkeep, startTransportUpkeep, type TransportUpkeepParts } from './upkeep.js';

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

/**
 * Starts rounds (`start`) over one part whose upkeep runs until aborted: five intervals pass with
 * only one round at a time, and stop aborts the one in flight and waits for it.
 */
async function expectOneRoundAtATime(start: (upkeep: (signal: AbortSignal) => Promise<void>) => () => Promise<void>): Promise<void> {
  vi.useFakeTimers();
  let running = 0;
  let most = 0;
  let aborted = false;
  const stop = start(
    (signal) =>
      new Promise<void>((resolve) => {
        most = Math.max(most, ++running);
        signal.addEventListener('abort', () => {
          aborted = true;
          running -= 1;
          resolve();
        });
      }),
  );
  await vi.advanceTimersByTimeAsync(5_000);
  expect(most).toBe(1);
  await stop();
  expect(aborted).toBe(true);
  expect(running).toBe(0);
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
    await expectOneRoundAtATime((upkeep) => startBackendUpkeep(partsWith({ slow: { upkeep } }).parts));
  });

  it('an interval of 0 runs nothing', async () => {
    const upkeep = vi.fn(async () => undefined);
    const { parts } = partsWith({ tgt: { upkeep } }, 0);
    await startBackendUpkeep(parts)();
    expect(upkeep).not.toHaveBeenCalled();
  });
});

/** Transport parts with these transports (by name; `null`: one whose plugin fails to make) and a logger that keeps `[level, message, fields]`. */
function transportPartsWith(transports: Record<string, Partial<TransportDriver> | null>, intervalMs = 1_000) {
  const lines: Array<[string, string, Record<string, unknown>]> = [];
  const at = (level: string) => (obj: Record<string, unknown>, msg?: string) => void lines.push([level, msg ?? '', obj]);
  const logger: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => logger };
  const parts: TransportUpkeepParts = {
    config: { upkeep: { intervalMs } },
    logger,
    catalog: {
      transportNames: () => Object.keys(transports),
      transport: (name: string) => {
        const transport = transports[name];
        if (transport === null) throw new BerthError('UNPROCESSABLE', `transport ${name} could not be made`);
        return { name, ...transport } as TransportDriver;
      },
    },
  };
  return { parts, lines };
}

describe('startTransportUpkeep', () => {
  it('runs every transport that has an upkeep, one after another, at once and then every interval; stop ends it', async () => {
    vi.useFakeTimers();
    const calls: string[] = [];
    const { parts } = transportPartsWith({
      loop: {},
      'iscsi-user': { upkeep: async () => void calls.push('iscsi-user') },
      other: { upkeep: async () => void calls.push('other') },
    });
    const stop = startTransportUpkeep(parts);
    await vi.advanceTimersByTimeAsync(0);
    expect(calls).toEqual(['iscsi-user', 'other']);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(calls).toEqual(['iscsi-user', 'other', 'iscsi-user', 'other', 'iscsi-user', 'other']);
    await stop();
    await vi.advanceTimersByTimeAsync(5_000);
    expect(calls).toHaveLength(6);
  });

  it('survives a throwing transport (and one that cannot be made): the others run in the same round, each failure is logged once with its transport, the recovery once', async () => {
    vi.useFakeTimers();
    const calls: string[] = [];
    const outcomes: Array<Error | undefined> = [new BerthError('DRIVER_ERROR', 'watcher 1234 would not start', { hint: 'see watch.log' }), new BerthError('DRIVER_ERROR', 'watcher 5678 would not start'), undefined, undefined];
    const { parts, lines } = transportPartsWith({
      broken: null,
      'iscsi-user': {
        upkeep: async () => {
          calls.push('iscsi-user');
          const next = outcomes.shift();
          if (next) throw next;
        },
      },
      after: { upkeep: async () => void calls.push('after') },
    });
    const stop = startTransportUpkeep(parts);
    await vi.advanceTimersByTimeAsync(3_000);
    await stop();
    expect(calls).toEqual(['iscsi-user', 'after', 'iscsi-user', 'after', 'iscsi-user', 'after', 'iscsi-user', 'after']);
    // The pid changed between the first two failures: the same failure, said once.
    expect(lines.map(([level, msg, fields]) => [level, msg, fields['transport'], fields['err']])).toEqual([
      ['warn', 'transport upkeep failed; trying again at the next round', 'broken', 'transport broken could not be made'],
      ['warn', 'transport upkeep failed; trying again at the next round', 'iscsi-user', 'watcher 1234 would not start'],
      ['info', 'transport upkeep works again', 'iscsi-user', undefined],
    ]);
    expect(lines[1]![2]['hint']).toBe('see watch.log');
  });

  it('never runs two rounds at once, and stop aborts the round in flight and waits for it', async () => {
    await expectOneRoundAtATime((upkeep) => startTransportUpkeep(transportPartsWith({ slow: { upkeep } }).parts));
  });

  it('asks `when` at the start of each round, before a transport is made: false skips the round, a failure is logged once and its end once', async () => {
    vi.useFakeTimers();
    const answers: Array<boolean | Error> = [false, new Error('store unavailable'), new Error('store unavailable'), true];
    const when = vi.fn(async () => {
      const next = answers.shift() ?? true;
      if (next instanceof Error) throw next;
      return next;
    });
    const upkeep = vi.fn(async () => undefined);
    const { parts, lines } = transportPartsWith({ 'iscsi-user': { upkeep }, more: { upkeep } });
    const made = vi.spyOn(parts.catalog, 'transport');
    const stop = startTransportUpkeep(parts, { when });
    await vi.advanceTimersByTimeAsync(0);
    // Round 1 said no: no transport was even made.
    expect(made).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(3_000);
    await stop();
    expect(when).toHaveBeenCalledTimes(4);
    // Rounds 1-3 ran nothing; round 4 both transports.
    expect(upkeep).toHaveBeenCalledTimes(2);
    expect(lines.map(([level, msg, fields]) => [level, msg, fields['err']])).toEqual([
      ['warn', 'transport upkeep skipped: could not tell whether this process should run it; trying again at the next round', 'store unavailable'],
      ['info', 'transport upkeep works again', undefined],
    ]);
  });

  it('an interval of 0 runs nothing', async () => {
    const upkeep = vi.fn(async () => undefined);
    const { parts } = transportPartsWith({ 'iscsi-user': { upkeep } }, 0);
    await startTransportUpkeep(parts)();
    expect(upkeep).not.toHaveBeenCalled();
  });
});

describe('runsOwnHostSteps (where `berth serve` runs the transports\' upkeep)', () => {
  it('no row for this host: no (nothing ran here); a row without an agent: yes; once an agent registered for it: no (the agent runs it)', async () => {
    const store = createMemoryStore();
    const identity = { hostname: 'replica-1' } as ServiceParts['identity'];
    expect(await runsOwnHostSteps({ store, identity })).toBe(false);
    const host = await store.hosts.create({ name: 'replica-1' });
    await store.hosts.create({ name: 'other-host' });
    expect(await runsOwnHostSteps({ store, identity })).toBe(true);
    await store.hosts.recordAgent(host.id, { instance: 'agent-1', version: '0.1.0', transports: ['iscsi-user'], consumers: ['host'] });
    expect(await runsOwnHostSteps({ store, identity })).toBe(false);
  });
});
