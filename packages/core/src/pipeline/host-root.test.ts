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
import { reserveAttachmentRecord } from './attach.js';

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
    // The device is recorded as its transport names it; its consumer was given the machine's path.
    const volumeId = attached.attachment!.volumeId;
    expect(attached.attachment).toMatchObject({ device: { path: `/dev/mem-${volumeId}` }, publishedPath: `/dev/berth/var/lib/berth/simhost/dev/mem-${volumeId}` });
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

  it('a device record whose attachment row is gone keeps its root: only the berth on that root reconciles it', async () => {
    const store = createMemoryStore();
    const simulated = berthOn(store, '/var/lib/berth/simhost');
    const plain = berthOn(store, '/');
    await simulated.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const attached = await simulated.service.attach({ volume: 'db' });
    const volumeId = attached.attachment!.volumeId;
    const [record] = await store.devices.list({ volumeId });
    expect(record).toMatchObject({ hostRoot: '/var/lib/berth/simhost' });
    // The attachment row is lost (deleted by hand): only the ledger knows the device now.
    await store.attachments.delete(attached.attachment!.id);

    const report = await plain.service.reconcile!({});
    const mine = report.differences.filter((d) => d.kind === 'device_without_attachment' && d.volumeId === volumeId);
    expect(mine).toEqual([expect.objectContaining({ state: 'skipped', result: expect.stringContaining('the device record of volume db was made on host root /var/lib/berth/simhost') })]);
    expect(plain.calls).toEqual([]);
    expect(await store.devices.get(record!.hostId, volumeId)).toBeDefined();

    const own = await simulated.service.reconcile!({});
    expect(own.differences.filter((d) => d.kind === 'device_without_attachment')).toEqual([expect.objectContaining({ state: 'applied', volumeId })]);
    expect(simulated.calls).toContain('disconnect');
    expect(simulated.devices.size).toBe(0);
    expect(await store.devices.get(record!.hostId, volumeId)).toBeUndefined();
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

  it('recovery leaves an interrupted operation of another root untouched (doctor says why); the berth on that root finishes it', async () => {
    const store = createMemoryStore();
    const simulated = berthOn(store, '/var/lib/berth/simhost');
    const plain = berthOn(store, '/');
    const volume = await simulated.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const host = await store.hosts.create({ name: 'unit-host' });
    const server = await store.servers.create({ name: 'unit-host', projectId: volume.projectId, hostId: host.id });
    // What a simulated berth killed in `connect` left: initialize journalled with its root, the
    // device up in the simulated kernel, the attachment not yet recording it, no owner alive.
    const operation = await store.operations.create({ kind: 'attach', volumeId: volume.id, serverId: server.id, hostId: host.id, owner: null, deadlineAt: new Date(Date.now() + 60_000).toISOString() });
    const attachment = await reserveAttachmentRecord(store, volume.id, server, 'rw', operation.id);
    const connector = { host: 'unit-host', initiator: 'iqn.2026-01.test:unit' };
    const connection = { driver_volume_type: 'mem', data: { device_path: `/dev/mem-${volume.id}` } };
    const journal = [
      ['reserve', { attachmentId: attachment.id }],
      ['dispatch', { hostId: host.id }],
      ['connector', { connector }],
      ['initialize', { driverVolumeType: 'mem', transport: 'mem', hostRoot: '/var/lib/berth/simhost' }],
    ] as const;
    for (const [name, data] of journal) {
      const seq = await store.operations.startStep(operation.id, name, 'do');
      await store.operations.endStep(operation.id, seq, { state: 'done', data });
    }
    await store.attachments.transition(attachment.id, ['reserved'], 'attaching', { connector, transport: 'mem', connectionInfo: connection });
    await store.operations.startStep(operation.id, 'connect', 'do');
    simulated.devices.set(`/dev/mem-${volume.id}`, { path: `/dev/mem-${volume.id}`, type: 'block' });
    const before = await store.operations.require(operation.id);

    const outcomes = await plain.service.recover();
    expect(outcomes).toEqual([expect.objectContaining({ operationId: operation.id, action: 'skipped' })]);
    expect(outcomes[0]!.detail).toContain('was made on host root /var/lib/berth/simhost');
    expect(outcomes[0]!.detail).toContain('--simulate');
    expect(plain.calls).toEqual([]);
    // Untouched: not even its owner was taken, so the berth on that root recovers it when it opens.
    expect(await store.operations.require(operation.id)).toEqual(before);
    expect(await store.attachments.require(attachment.id)).toMatchObject({ status: 'attaching' });
    const doctor = await plain.service.doctor();
    expect(doctor).toContainEqual({ kind: 'operation', name: operation.id, result: expect.objectContaining({ ok: false, fix: expect.stringContaining('--simulate') }) });

    expect(await simulated.service.recover()).toEqual([expect.objectContaining({ operationId: operation.id, action: 'rolled_back' })]);
    expect(simulated.calls).toEqual(expect.arrayContaining(['disconnect', 'terminate']));
    expect(simulated.devices.size).toBe(0);
    expect((await store.operations.require(operation.id)).state).toBe('rolled_back');
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect((await plain.service.doctor()).filter((e) => e.kind === 'operation')).toEqual([]);
  });
});
