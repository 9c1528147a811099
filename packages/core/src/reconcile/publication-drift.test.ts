import 'reflect-metadata';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createHostFs, type HostFs } from '@berth/host';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import { attachmentLinkPath, createHostConsumer, stableLinkPath } from '../host-consumer.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import { memCatalog } from '../test-support.js';

// `attachment_not_published`: an attached volume whose `/dev/berth` links something outside berth
// removed or re-pointed (a link that leads to another volume's device is data on the wrong disk
// for whoever follows it). Reconcile lists it and publishes the recorded device again — only a
// device its transport lists as that very one.

const roots: string[] = [];
afterEach(async () => {
  for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true });
});

async function world(options: { lists?: boolean } = {}) {
  const root = await mkdtemp(path.join(os.tmpdir(), 'berth-publication-drift-'));
  roots.push(root);
  const fs: HostFs = createHostFs(root);
  const devices = new Map<string, Device>();
  const catalog = memCatalog(devices, undefined, { lists: options.lists ?? true, consumer: { ...createHostConsumer(fs), name: 'mem' } });
  const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
  const service = new BerthServiceImpl(config, createMemoryStore(), catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
  await service.createVolume({ name: 'one', sizeBytes: 2 ** 20 });
  await service.createVolume({ name: 'two', sizeBytes: 2 ** 20 });
  const one = (await service.attach({ volume: 'one' })).attachment!;
  const two = (await service.attach({ volume: 'two' })).attachment!;
  return { fs, devices, service, one, two };
}

const kinds = (report: { differences: Array<{ kind: string; state: string; fix: string }> }) => report.differences.map((d) => `${d.kind}:${d.fix}:${d.state}`);

describe('reconcile publishes again what was removed or re-pointed behind berth\'s back', () => {
  it('a removed attachment link: the dry run lists it and changes nothing, the fix makes it again', async () => {
    const w = await world();
    await w.fs.unlink(attachmentLinkPath(w.one.id));
    const dry = await w.service.reconcile!({ dryRun: true });
    expect(kinds(dry)).toEqual(['attachment_not_published:republish:planned']);
    expect(dry.differences[0]!.detail).toContain(`${attachmentLinkPath(w.one.id)} is missing`);
    expect(await w.fs.readlink(attachmentLinkPath(w.one.id))).toBeUndefined();

    const applied = await w.service.reconcile!({});
    expect(kinds(applied)).toEqual(['attachment_not_published:republish:applied']);
    expect(await w.fs.readlink(attachmentLinkPath(w.one.id))).toBe(w.one.device!.path);
    expect((await w.service.reconcile!({ dryRun: true })).differences).toEqual([]);
    await w.service.close();
  });

  it('links re-pointed at another volume\'s device lead back to the recorded one; the other volume\'s stay', async () => {
    const w = await world();
    for (const link of [attachmentLinkPath(w.one.id), stableLinkPath(w.one.volumeId)]) await w.fs.symlink(w.two.device!.path, link);
    const dry = await w.service.reconcile!({ dryRun: true });
    expect(kinds(dry)).toEqual(['attachment_not_published:republish:planned']);
    expect(dry.differences[0]!.detail).toContain(`leads to ${w.two.device!.path}, not ${w.one.device!.path}`);

    await w.service.reconcile!({});
    expect(await w.fs.readlink(attachmentLinkPath(w.one.id))).toBe(w.one.device!.path);
    expect(await w.fs.readlink(stableLinkPath(w.one.volumeId))).toBe(w.one.device!.path);
    expect(await w.fs.readlink(attachmentLinkPath(w.two.id))).toBe(w.two.device!.path);
    expect(await w.fs.readlink(stableLinkPath(w.two.volumeId))).toBe(w.two.device!.path);
    await w.service.close();
  });

  it('a recorded device its transport does not list is never published again (the name may be another disk\'s)', async () => {
    const w = await world();
    await w.fs.unlink(stableLinkPath(w.one.volumeId));
    // The device is gone as far as the transport can tell: the reconnect fix is the one that acts.
    w.devices.delete(w.one.device!.path);
    const dry = await w.service.reconcile!({ dryRun: true });
    // Only the reconnect: it publishes again once the device is back.
    expect(kinds(dry)).toEqual(['attachment_device_gone:reconnect:planned']);
    expect(await w.fs.readlink(stableLinkPath(w.one.volumeId))).toBeUndefined();
    await w.service.close();
  });

  it('a transport that cannot list: the links are reported, not published again', async () => {
    const w = await world({ lists: false });
    await w.fs.unlink(attachmentLinkPath(w.one.id));
    const applied = await w.service.reconcile!({});
    const difference = applied.differences.find((d) => d.kind === 'attachment_not_published');
    expect(difference).toMatchObject({ state: 'skipped' });
    expect(difference!.result).toContain('could not list');
    expect(await w.fs.readlink(attachmentLinkPath(w.one.id))).toBeUndefined();
    await w.service.close();
  });
});
