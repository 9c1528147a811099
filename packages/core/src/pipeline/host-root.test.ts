import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import { BerthError } from '../errors.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import type { Store } from '../store.js';
import { memCatalog } from '../test-support.js';

// Two berths on one store whose `mem` transport runs on different host roots (as a plain berth and
// one run with `--simulate` do): each acts only on the attachments connected on its own root.

/** A berth whose `mem` transport keeps its devices in `devices` (what "its kernel" has) and runs on `root`. */
function berthOn(store: Store, root: string) {
  const devices = new Map<string, Device>();
  const calls: string[] = [];
  const catalog = memCatalog(devices, undefined, { root, lists: true, calls });
  const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
  const service = new BerthServiceImpl(config, store, catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
  return { service, devices, calls };
}

describe('an attachment records the host root its transport ran on', () => {
  it('a berth whose transport runs on another root refuses its detach (CONFIG, nothing touched) and skips it in reconcile; the one on its root detaches it', async () => {
    const store = createMemoryStore();
    const simulated = berthOn(store, '/var/lib/berth/simhost');
    const plain = berthOn(store, '/');
    await simulated.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const attached = await simulated.service.attach({ volume: 'db' });
    expect(attached.attachment).toMatchObject({ status: 'attached', hostRoot: '/var/lib/berth/simhost' });
    const id = attached.attachment!.id;
    const operations = (await store.operations.list()).length;

    const refused = await plain.service.detach({ volume: 'db' }).catch((e: unknown) => e);
    expect(BerthError.is(refused) && refused.code).toBe('CONFIG');
    expect((refused as BerthError).message).toContain(`attachment ${id} was made on host root /var/lib/berth/simhost`);
    expect((refused as BerthError).hint).toContain('--simulate');
    expect((refused as BerthError).details).toMatchObject({ reason: 'host-root-mismatch', recordedRoot: '/var/lib/berth/simhost', hostRoot: '/', untouched: true });
    expect(plain.calls).toEqual([]);
    expect((await store.operations.list()).length).toBe(operations);
    expect(await store.attachments.require(id)).toMatchObject({ status: 'attached' });

    // The plain berth's kernel has no such device: without the record it would plan a reconnect.
    const report = await plain.service.reconcile!({});
    const mine = report.differences.filter((d) => d.attachmentId === id);
    expect(mine).toEqual([expect.objectContaining({ kind: 'attachment_device_gone', state: 'skipped' })]);
    expect(mine[0]!.result).toContain('was made on host root /var/lib/berth/simhost');
    expect(plain.calls).toEqual([]);
    expect(plain.devices.size).toBe(0);
    expect(await store.attachments.require(id)).toMatchObject({ status: 'attached', hostRoot: '/var/lib/berth/simhost' });

    // On its own root nothing differs, and the detach goes through.
    expect((await simulated.service.reconcile!({})).differences).toEqual([]);
    const detached = await simulated.service.detach({ volume: 'db' });
    expect(detached.operation.state).toBe('succeeded');
    expect(simulated.devices.size).toBe(0);
    expect(simulated.calls).toContain('disconnect');
  });

  it('an attachment without a recorded root (made before migration 0006) is acted on as before', async () => {
    const store = createMemoryStore();
    const plain = berthOn(store, '/');
    await plain.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const attached = await plain.service.attach({ volume: 'db' });
    expect(attached.attachment?.hostRoot).toBe('/');
    await store.attachments.update(attached.attachment!.id, { hostRoot: null });
    const other = berthOn(store, '/elsewhere');
    // `other`'s kernel lacks the device: with no root recorded it cannot tell, and plans the reconnect as before.
    const report = await other.service.reconcile!({ dryRun: true });
    expect(report.differences).toEqual([expect.objectContaining({ kind: 'attachment_device_gone', state: 'planned' })]);
    expect((await plain.service.detach({ volume: 'db' })).operation.state).toBe('succeeded');
  });
});
