import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import { reserveAttachmentRecord } from '../pipeline/attach.js';
import { transitionAttachment } from '../pipeline/context.js';
import { memCatalog } from '../test-support.js';

// `attachment_stuck` is an attachment an interrupted operation left transitional. One whose
// operation was still running when reconcile looked, and ended before the fix, is healthy: the
// fix must leave it (a forced detach would tear down its live device).

describe('reconcile never force-detaches an attachment whose operation ended while it looked', () => {
  it('an attach finishing between reconcile\'s reads of the store is left attached, its device connected', async () => {
    const store = createMemoryStore();
    const devices = new Map<string, Device>();
    const calls: string[] = [];
    let release!: () => void;
    const connecting = new Promise<void>((resolve) => (release = resolve));
    let entered!: () => void;
    const inConnect = new Promise<void>((resolve) => (entered = resolve));
    const catalog = memCatalog(
      devices,
      async (c) => {
        entered();
        await connecting;
        const device: Device = { path: String(c.data.device_path), type: 'block' };
        devices.set(device.path, device);
        return device;
      },
      { lists: true, calls },
    );
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
    const service = new BerthServiceImpl(config, store, catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 20 });
    const attaching = service.attach({ volume: 'db' });
    await inConnect;
    // The attach ends while reconcile reads the store (at its first read of the attachments).
    const list = store.attachments.list.bind(store.attachments);
    let released = false;
    store.attachments.list = async (...args) => {
      const rows = await list(...args);
      if (!released) {
        released = true;
        release();
        await attaching;
      }
      return rows;
    };
    const report = await service.reconcile!({});
    store.attachments.list = list;
    expect(report.differences.filter((d) => d.kind === 'attachment_stuck' && d.state === 'applied')).toEqual([]);
    const [attachment] = await store.attachments.list({});
    expect(attachment?.status).toBe('attached');
    expect(calls).not.toContain('disconnect');
    expect(devices.size).toBe(1);
    await service.close();
  });

  it('a stuck attachment that another process finished after reconcile looked is skipped at the fix, not force-detached', async () => {
    const store = createMemoryStore();
    const calls: string[] = [];
    const catalog = memCatalog(new Map<string, Device>(), undefined, { lists: true, calls });
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
    const service = new BerthServiceImpl(config, store, catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 20 });
    const server = await service.createServer({ name: 'web-1' });
    // Left `attaching` (its transport chosen: made by the pipeline) with no operation running.
    const attachment = await reserveAttachmentRecord(store, volume.id, server, 'rw');
    await transitionAttachment(store, attachment.id, ['reserved'], 'attaching', { transport: 'mem' });
    // Between the finding and its fix, another process finishes it (under no lock of this one).
    const get = store.volumes.get.bind(store.volumes);
    let finished = false;
    store.volumes.get = async (...args) => {
      if (!finished && (await store.operations.list({ kind: 'reconcile' })).length > 0) {
        finished = true;
        await transitionAttachment(store, attachment.id, ['attaching'], 'attached', { device: { path: `/dev/mem-${volume.id}`, type: 'block' } });
      }
      return get(...args);
    };
    const report = await service.reconcile!({});
    expect(finished).toBe(true);
    expect(report.differences).toEqual(expect.arrayContaining([expect.objectContaining({ kind: 'attachment_stuck', state: 'skipped' })]));
    expect((await store.attachments.require(attachment.id)).status).toBe('attached');
    expect(calls).not.toContain('disconnect');
    await service.close();
  });
});
