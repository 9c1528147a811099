import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import { BerthError } from '../errors.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import { memCatalog, type MemCatalogOptions } from '../test-support.js';

// `BerthService.cancel`: what Ctrl-C on `berth attach` / `berth detach` does. A cancelled
// operation stops as at a passed deadline and rolls back — until the point of no return; a detach
// past it (the device let go) finishes instead of ending error_detaching.

function world(connect?: Parameters<typeof memCatalog>[1], options: MemCatalogOptions = {}) {
  const devices = new Map<string, Device>();
  const calls: string[] = [];
  const store = createMemoryStore();
  const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 30_000, undoTimeoutMs: 5_000 }, {});
  const catalog = memCatalog(devices, connect, { calls, ...options });
  const service = new BerthServiceImpl(config, store, catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
  return { devices, calls, store, service };
}

describe('cancel', () => {
  it('rolls an attach back: its connect is cut short, what it did is undone, CANCELLED names the reason', async () => {
    let connecting!: () => void;
    const started = new Promise<void>((resolve) => (connecting = resolve));
    // A connect that waits (a slow login) until its signal fires.
    const { devices, calls, store, service } = world(async (_c, context) => {
      connecting();
      await new Promise((_resolve, reject) => context.signal.addEventListener('abort', () => reject(new BerthError('CANCELLED', 'login cut short')), { once: true }));
      throw new Error('unreachable');
    });
    try {
      await service.createVolume({ name: 'v', sizeBytes: 2 ** 20 });
      const run = await service.startAttach({ volume: 'v' });
      await started;
      expect(service.cancel(run.operation.id, 'interrupted (Ctrl-C)')).toBe(true);
      const error = await run.done.then(() => undefined, (e: unknown) => e);
      expect(BerthError.is(error) && error.code).toBe('CANCELLED');
      expect((error as BerthError).message).toBe('the attach was cancelled: interrupted (Ctrl-C)');
      const operation = await store.operations.require(run.operation.id);
      expect(operation.state).toBe('rolled_back');
      expect(operation.steps.find((s) => s.name === 'connect')?.state).toBe('failed');
      expect((await store.volumes.require(run.operation.volumeId!)).status).toBe('available');
      expect(await store.attachments.list({})).toEqual([]);
      expect(calls).toContain('terminate');
      expect(devices.size).toBe(0);
      // Ended: nothing to cancel any more.
      expect(service.cancel(run.operation.id, 'again')).toBe(false);
    } finally {
      await service.close();
    }
  });

  it('lets a detach past its point of no return finish: the device is let go, the rest is the store and the backend', async () => {
    let cancelNow: (() => void) | undefined;
    const { calls, store, service } = world(undefined, {
      // The disconnect let go of the device; the caller cancels right then.
      afterDisconnect: async () => cancelNow?.(),
    });
    try {
      await service.createVolume({ name: 'v', sizeBytes: 2 ** 20 });
      await service.attach({ volume: 'v' });
      const run = await service.startDetach({ volume: 'v' });
      let cancelled: boolean | undefined;
      cancelNow = () => (cancelled = service.cancel(run.operation.id, 'interrupted (Ctrl-C)'));
      const outcome = await run.done;
      expect(cancelled).toBe(true);
      expect(outcome.operation.state).toBe('succeeded');
      expect(outcome.volume.status).toBe('available');
      expect(calls.slice(-2)).toEqual(['disconnect', 'terminate']);
      expect(await store.attachments.list({})).toEqual([]);
    } finally {
      await service.close();
    }
  });

  it('stops an operation still waiting for its volume: it never starts', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let connecting!: () => void;
    const started = new Promise<void>((resolve) => (connecting = resolve));
    let connects = 0;
    const { service, store } = world(async (c) => {
      connects += 1;
      connecting();
      await held;
      return { path: String(c.data.device_path), type: 'block' };
    });
    try {
      await service.createVolume({ name: 'v', sizeBytes: 2 ** 20, multiattach: true });
      await service.createServer({ name: 'other' });
      const first = await service.startAttach({ volume: 'v' });
      await started;
      // Queued behind the first attach on the volume's lock.
      const second = await service.startAttach({ volume: 'v', server: 'other' });
      expect(service.cancel(second.operation.id, 'gave up')).toBe(true);
      const error = await second.done.then(() => undefined, (e: unknown) => e);
      expect(BerthError.is(error) && error.code).toBe('CANCELLED');
      expect((await store.operations.require(second.operation.id)).state).toBe('rolled_back');
      release();
      await first.done;
      expect(connects).toBe(1);
    } finally {
      release();
      await service.close();
    }
  });

  it('answers false for an operation this process does not run', async () => {
    const { service } = world();
    try {
      expect(service.cancel('00000000-0000-4000-8000-000000000000', 'nothing')).toBe(false);
    } finally {
      await service.close();
    }
  });
});
