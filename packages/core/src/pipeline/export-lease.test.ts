import 'reflect-metadata';
import { hostname } from 'node:os';
import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../config.js';
import { BerthError } from '../errors.js';
import { exportLeaseKey } from '../lease.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import type { Volume } from '../model.js';
import type { PipelineDeps } from './context.js';
import { terminateUnshared, withExportLease } from './device-sharing.js';

// The export lease serialises the decisions on one volume's exports. Which connectors are "the
// same host" is decided by initiator or by name (`exportSharers`), so the lease cannot be keyed by
// either: it is the volume's. And a write that records an export confirms the lease in its commit.

function parts() {
  const store = createMemoryStore();
  const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
  const deps = { store, config, logger: silentLogger, owner: `${process.pid}@${hostname()}`, hostname: hostname() } as unknown as PipelineDeps;
  const volume = { id: '0b4c1f0e-0000-4000-8000-000000000001', name: 'shared' } as Volume;
  return { store, deps, volume };
}

describe('the export lease', () => {
  it('is the volume\'s: a detach whose record has no initiator waits for an attach whose connector has one', async () => {
    const { deps, volume } = parts();
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const terminated: string[] = [];
    // An attach on node1 with its initiator holds the lease between its export and its record ...
    let entered!: () => void;
    const holding = new Promise<void>((resolve) => (entered = resolve));
    const attach = withExportLease(deps, volume, AbortSignal.timeout(5_000), async () => {
      entered();
      await held;
      terminated.push('attach recorded');
    });
    await holding;
    // ... while a detach of an attachment recorded without one (the same host, by name) decides.
    const detach = terminateUnshared(deps, volume, { host: 'node1' }, 'a1', AbortSignal.timeout(5_000), async () => void terminated.push('terminated'));
    const waited = await Promise.race([detach.then(() => false), new Promise<boolean>((resolve) => setImmediate(() => resolve(true)))]);
    expect(waited).toBe(true);
    release();
    await Promise.all([attach, detach]);
    expect(terminated).toEqual(['attach recorded', 'terminated']);
  });

  it('a holder that lost the lease (paused past it) records nothing: confirm refuses in its transaction', async () => {
    const { store, deps, volume } = parts();
    const outcome = await withExportLease(deps, volume, AbortSignal.timeout(5_000), async (lease) => {
      // Another replica took the lease over while this one was paused.
      const holder = await store.locks.holder(exportLeaseKey(volume.id));
      expect(await store.locks.takeOver(exportLeaseKey(volume.id), 'other@elsewhere/1', holder!.owner, new Date(Date.now() + 60_000).toISOString())).toBe(true);
      return store
        .transaction(async (tx) => {
          await tx.hosts.create({ name: 'written-under-a-lost-lease' });
          await lease.confirm(tx);
        })
        .catch((error: unknown) => error);
    });
    expect(BerthError.is(outcome) && outcome.details.leaseLost).toBe(true);
    expect(await store.hosts.list()).toEqual([]);
  });
});
