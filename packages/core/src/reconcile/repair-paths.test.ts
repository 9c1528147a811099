import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import { memCatalog } from '../test-support.js';

// `attachment_path_failed`: an attached device whose path in use failed is moved to a live path
// through the transport's `repairPaths` (the `repair_paths` host step), journalled, and only then.

describe('reconcile repairs a failed path of an attached device', () => {
  it('plans it on a dry run, applies it once (journalled), then finds nothing; the attachment and its device stay', async () => {
    const store = createMemoryStore();
    const devices = new Map<string, Device>();
    const calls: string[] = [];
    const pathStates = new Map<string, string>();
    const looks: string[] = [];
    const noLivePath = { now: false };
    const catalog = memCatalog(devices, undefined, { lists: true, calls, pathStates, looks, noLivePath });
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
    const service = new BerthServiceImpl(config, store, catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const attached = await service.attach({ volume: 'db' });
    const device = attached.attachment!.device!.path;
    expect((await service.reconcile!({})).differences).toEqual([]);

    pathStates.set(device, 'failed');
    calls.length = 0;
    looks.length = 0;
    const plan = await service.reconcile!({ dryRun: true });
    // A dry run's listings (before and after the store is read) ask the transport to change nothing.
    expect(looks).toEqual(['readOnly', 'readOnly']);
    looks.length = 0;
    expect(plan.differences).toEqual([
      expect.objectContaining({ kind: 'attachment_path_failed', fix: 'repair_paths', state: 'planned', attachmentId: attached.attachment!.id, detail: expect.stringContaining('mem:1') }),
    ]);
    expect(calls).toEqual([]);

    // No live path to move it to: skipped, saying so — not "applied" with the device still on a dead path.
    noLivePath.now = true;
    const stuck = await service.reconcile!({});
    expect(stuck.differences).toEqual([expect.objectContaining({ kind: 'attachment_path_failed', state: 'skipped', result: expect.stringContaining('nothing to move: ') })]);
    noLivePath.now = false;
    calls.length = 0;
    looks.length = 0;

    const applied = await service.reconcile!({});
    expect(applied.differences).toEqual([expect.objectContaining({ kind: 'attachment_path_failed', state: 'applied', result: `${device} moved to mem:2` })]);
    expect(calls).toEqual(['repair']);
    expect(looks[0]).toBe('may-change');
    expect(pathStates.get(device)).toBe('active');
    const operation = await store.operations.require(applied.operationId!);
    expect(operation.steps.map((s) => `${s.name}:${s.state}`)).toEqual(['repair_paths:done']);
    expect(await store.attachments.require(attached.attachment!.id)).toMatchObject({ status: 'attached', device: { path: device } });
    expect((await service.reconcile!({})).differences).toEqual([]);
  });
});
