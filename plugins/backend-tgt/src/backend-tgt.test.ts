import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, PLUGIN_API_VERSION, silentLogger, type BackendFactory, type BackendVolume } from '@berth/core';
import { createDeviceWaiter, createHostFs } from '@berth/host';
import plugin, { createTgtBackend } from './index.js';
import { replayRunner } from './test-replay-runner.js';

let dataDir: string;

beforeEach(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'berth-tgt-unit-'));
});

afterEach(async () => {
  await rm(dataDir, { recursive: true, force: true });
});

/** A backend on a host where tgt is not installed (every command: not found). */
function withoutTgt() {
  const runner = replayRunner(() => 'not-found');
  const fs = createHostFs('/');
  const backend = createTgtBackend({ host: { runner, fs, waiter: createDeviceWaiter(fs) }, dataDir, options: {}, logger: silentLogger });
  return { runner, backend };
}

function volume(id: string = randomUUID()): BackendVolume {
  return { id, name: 'v', sizeBytes: 1 << 20, providerLocation: null };
}

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  return promise.then(
    () => undefined,
    (error: unknown) => (BerthError.is(error) ? error.code : `not a BerthError: ${String(error)}`),
  );
}

describe('tgt backend without tgt installed', () => {
  it('check() says tgt is missing and how to install it', async () => {
    const result = await withoutTgt().backend.check();
    expect(result.ok).toBe(false);
    expect(result.summary).toBe('tgt backend: tgt is not installed');
    expect(result.fix).toBe('apt-get install -y tgt');
  });

  it('create fails with HOST_UNSUPPORTED and an install hint, starting nothing', async () => {
    const error = await withoutTgt().backend.create(volume(), AbortSignal.timeout(5_000)).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('HOST_UNSUPPORTED');
    expect((error as BerthError).hint).toContain('apt-get install -y tgt');
    expect(await readdir(path.join(dataDir, 'backend-tgt'))).toEqual([]);
  });
});

describe('tgt backend input checks (before any command runs)', () => {
  it('refuses ids that are not UUIDs, and sizes that are not whole sectors', async () => {
    const { runner, backend } = withoutTgt();
    for (const id of ['../x', '', 'a/../../b', 'not-a-uuid']) {
      expect(await codeOf(backend.create(volume(id), AbortSignal.timeout(5_000)))).toBe('VALIDATION');
      expect(await codeOf(backend.delete(volume(id), AbortSignal.timeout(5_000)))).toBe('VALIDATION');
    }
    expect(await codeOf(backend.create({ ...volume(), sizeBytes: 1000 }, AbortSignal.timeout(5_000)))).toBe('VALIDATION');
    expect(runner.calls).toEqual([]);
    expect(await readdir(dataDir)).toEqual([]);
  });

  it('stops on an aborted signal', async () => {
    const controller = new AbortController();
    controller.abort();
    expect(await codeOf(withoutTgt().backend.create(volume(), controller.signal))).toBe('CANCELLED');
  });

  it('refuses invalid options with a VALIDATION error', () => {
    const { runner } = withoutTgt();
    const fs = createHostFs('/');
    const make = (options: Record<string, unknown>) => () =>
      createTgtBackend({ host: { runner, fs, waiter: createDeviceWaiter(fs) }, dataDir, options, logger: silentLogger });
    expect(make({ portals: ['nas.example:3260'] })).toThrow(/portals/);
    expect(make({ mutualChap: true, chap: false })).toThrow(/mutual/);
    expect(make({ lunDirectory: 'luns,bstype=aio' })).toThrow(/comma/);
  });
});

describe('the plugin', () => {
  it('registers the tgt backend and validates its options', () => {
    expect(plugin.name).toBe('@berth/backend-tgt');
    expect(plugin.apiVersion).toBe(PLUGIN_API_VERSION);
    const factories = new Map<string, BackendFactory>();
    plugin.register({
      backend: (name, factory) => factories.set(name, factory as BackendFactory),
      transport: () => {
        throw new Error('the tgt plugin registers no transport');
      },
      consumer: () => {
        throw new Error('the tgt plugin registers no consumer');
      },
    });
    expect([...factories.keys()]).toEqual(['tgt']);
    expect(plugin.optionsSchema?.safeParse({ controlPort: -1 }).success).toBe(false);
    expect(plugin.optionsSchema?.parse({})).toMatchObject({ controlPort: 7, manageDaemon: true, advertise: 'all' });
  });
});
