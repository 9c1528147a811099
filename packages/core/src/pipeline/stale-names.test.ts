import 'reflect-metadata';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createHostFs } from '@berth/host';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import { BerthError } from '../errors.js';
import { attachmentLinkPath, createHostConsumer, stableLinkPath } from '../host-consumer.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import { memCatalog } from '../test-support.js';

// A volume's device can go behind berth's back (`losetup --detach` by hand, a LUN removed on the
// array); the kernel then gives its name to the next disk. When that disk is another volume's,
// the names berth published for the first volume (`/dev/berth/<ids>`) would lead to the second
// volume's data: its attach removes them before it publishes its own.

const roots: string[] = [];
afterEach(async () => {
  for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true });
});

/**
 * A service on the memory store whose transport's connect is `connect` (the devices it made are
 * in `devices`, a test removes one behind berth's back) and whose consumer is the host consumer on
 * a temp root.
 */
async function world(connect: (c: { data: Record<string, unknown> }, devices: Map<string, Device>) => Device) {
  const root = await mkdtemp(path.join(os.tmpdir(), 'berth-stale-names-'));
  roots.push(root);
  const fs = createHostFs(root);
  const devices = new Map<string, Device>();
  const made = async (c: { data: Record<string, unknown> }): Promise<Device> => {
    const device = connect(c, devices);
    devices.set(device.path, device);
    return device;
  };
  const catalog = memCatalog(devices, made, { consumer: { ...createHostConsumer(fs), name: 'mem' } });
  const store = createMemoryStore();
  const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
  const service = new BerthServiceImpl(config, store, catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
  return { fs, devices, store, service };
}

describe("an attach whose disk got a lost device's name", () => {
  it("removes the names published for the lost device's volume before it publishes its own", async () => {
    // Every volume's disk gets the first free name, as a loop device does; its identity is its file.
    const { fs, devices, store, service } = await world((c) => ({ path: '/dev/loop3', type: 'block', identity: { kind: 'mem', file: String(c.data.device_path) } }));
    try {
      await service.createVolume({ name: 'lost', sizeBytes: 2 ** 20 });
      await service.createVolume({ name: 'next', sizeBytes: 2 ** 20 });
      const lost = (await service.attach({ volume: 'lost' })).attachment!;
      expect(await fs.readlink(attachmentLinkPath(lost.id))).toBe('/dev/loop3');
      // Behind berth's back: the lost volume's disk goes, its name is free.
      devices.delete('/dev/loop3');
      const next = (await service.attach({ volume: 'next' })).attachment!;
      expect(next.device?.path).toBe('/dev/loop3');
      // The lost volume's names no longer lead to the next volume's data; the next one's do.
      expect(await fs.readlink(attachmentLinkPath(lost.id))).toBeUndefined();
      expect(await fs.readlink(stableLinkPath(lost.volumeId))).toBeUndefined();
      expect(await fs.readlink(attachmentLinkPath(next.id))).toBe('/dev/loop3');
      expect(await fs.readlink(stableLinkPath(next.volumeId))).toBe('/dev/loop3');
      // The lost attachment's record stays for reconcile to reconnect.
      expect((await store.attachments.require(lost.id)).status).toBe('attached');
    } finally {
      await service.close();
    }
  });

  it("removes them when the lost disk's name went to a path of the next volume's multipath map", async () => {
    // The first volume's disk is a single-path /dev/sdb; the next volume's is a map whose first
    // path got the name /dev/sdb once the first disk had gone.
    let connects = 0;
    const { fs, devices, store, service } = await world((c) => {
      connects += 1;
      const identity = { kind: 'mem', file: String(c.data.device_path) };
      return connects === 1
        ? { path: '/dev/sdb', type: 'block', identity }
        : { path: '/dev/dm-0', type: 'block', identity, paths: [{ portal: '127.0.0.1:3260', device: '/dev/sdb', state: 'active' }, { portal: '127.0.0.2:3260', device: '/dev/sdc', state: 'active' }] };
    });
    try {
      await service.createVolume({ name: 'lost', sizeBytes: 2 ** 20 });
      await service.createVolume({ name: 'next', sizeBytes: 2 ** 20 });
      const lost = (await service.attach({ volume: 'lost' })).attachment!;
      expect(await fs.readlink(stableLinkPath(lost.volumeId))).toBe('/dev/sdb');
      devices.delete('/dev/sdb');
      const next = (await service.attach({ volume: 'next' })).attachment!;
      expect(next.device?.path).toBe('/dev/dm-0');
      // /dev/sdb is a path of the next volume's map: the lost volume's names no longer lead there.
      expect(await fs.readlink(attachmentLinkPath(lost.id))).toBeUndefined();
      expect(await fs.readlink(stableLinkPath(lost.volumeId))).toBeUndefined();
      expect(await fs.readlink(stableLinkPath(next.volumeId))).toBe('/dev/dm-0');
      expect((await store.attachments.require(lost.id)).status).toBe('attached');
    } finally {
      await service.close();
    }
  });

  it('removes them when the lost disk\'s name went to a path a shared map gained since its sharers recorded it', async () => {
    // lost: a single-path /dev/sdb. next (multiattach): a map first over one path (/dev/sdc; the
    // other portal was down), then, at its second attach on this host, over both: the path added
    // got the name /dev/sdb once the lost volume's disk had gone.
    let connects = 0;
    const { fs, devices, service } = await world((c) => {
      connects += 1;
      const identity = { kind: 'mem', file: String(c.data.device_path) };
      const sdc = { portal: '127.0.0.1:3260', device: '/dev/sdc', state: 'active' };
      return connects === 1
        ? { path: '/dev/sdb', type: 'block', identity }
        : { path: '/dev/dm-0', type: 'block', identity, paths: connects === 2 ? [sdc] : [sdc, { portal: '127.0.0.2:3260', device: '/dev/sdb', state: 'active' }] };
    });
    try {
      await service.createVolume({ name: 'lost', sizeBytes: 2 ** 20 });
      await service.createVolume({ name: 'next', sizeBytes: 2 ** 20, multiattach: true });
      await service.createServer({ name: 'web-1' });
      await service.createServer({ name: 'web-2' });
      const lost = (await service.attach({ volume: 'lost' })).attachment!;
      const first = (await service.attach({ volume: 'next', server: 'web-1' })).attachment!;
      expect(await fs.readlink(stableLinkPath(lost.volumeId))).toBe('/dev/sdb');
      devices.delete('/dev/sdb');
      const second = (await service.attach({ volume: 'next', server: 'web-2' })).attachment!;
      expect(second.device?.paths?.map((p) => p.device)).toEqual(['/dev/sdc', '/dev/sdb']);
      expect(await fs.readlink(attachmentLinkPath(lost.id))).toBeUndefined();
      expect(await fs.readlink(stableLinkPath(lost.volumeId))).toBeUndefined();
      // The sharers' links lead to the map, as before.
      expect(await fs.readlink(attachmentLinkPath(first.id))).toBe('/dev/dm-0');
      expect(await fs.readlink(attachmentLinkPath(second.id))).toBe('/dev/dm-0');
      expect(await fs.readlink(stableLinkPath(second.volumeId))).toBe('/dev/dm-0');
    } finally {
      await service.close();
    }
  });

  it('a volume name both sides kept — an attach rolling back beside a detach of the same volume — goes with the device its last user disconnects', async () => {
    const { fs, devices, store, service } = await world((c) => ({ path: String(c.data.device_path), type: 'block', identity: { kind: 'mem', file: String(c.data.device_path) } }));
    // Another berth process on the same store (its own in-process volume locks).
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
    const other = new BerthServiceImpl(config, store, (service as unknown as { parts: { deps: { catalog: never } } }).parts.deps.catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
    try {
      const volume = await service.createVolume({ name: 'shared', sizeBytes: 2 ** 20, multiattach: true });
      await service.createServer({ name: 'vm-1' });
      await service.createServer({ name: 'vm-2' });
      const first = (await service.attach({ volume: 'shared', server: 'vm-1' })).attachment!;
      const device = first.device!.path;
      // vm-2's attach fails once published: its publish undo keeps the volume's name (vm-1 uses the device)...
      const update = store.attachments.update.bind(store.attachments);
      store.attachments.update = async (id, patch) => {
        if (id !== first.id && 'publishedPath' in patch) throw new BerthError('CONFLICT', 'the attachment changed under the publish');
        return update(id, patch);
      };
      // ... and before its connect undo, vm-1's detach runs whole in the other process: its
      // unpublish keeps the name too (vm-2 still claims the device), its disconnect only drops its claim.
      const get = store.attachments.get.bind(store.attachments);
      let detached = false;
      store.attachments.get = async (id) => {
        if (id !== first.id && !detached && (await get(id))?.publishedPath === null && (await fs.readlink(attachmentLinkPath(id))) === undefined && (await get(id))?.device) {
          detached = true;
          await other.detach({ volume: 'shared', server: 'vm-1' });
        }
        return get(id);
      };
      await expect(service.attach({ volume: 'shared', server: 'vm-2' })).rejects.toMatchObject({ code: 'CONFLICT' });
      expect(detached).toBe(true);
      // vm-2's undo was the device's last user: the device went, and with it the volume's name
      // (before: left leading to the freed name, the next disk the kernel gives it).
      expect(devices.has(device)).toBe(false);
      expect(await fs.readlink(stableLinkPath(volume.id))).toBeUndefined();
      expect(await store.attachments.list()).toEqual([]);
    } finally {
      await other.close();
      await service.close();
    }
  });
});
