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
import type { Store } from '../store.js';
import { memCatalog } from '../test-support.js';

// `device_without_attachment`: reconcile disconnects a device no attachment names and drops what
// the host consumer published for it. The kernel hands a freed device name to the next disk, which
// another volume's attach (under that volume's lock, not the orphan's) may publish: its links must
// survive the orphan's clean-up, whenever they came to lead to the same name.

const roots: string[] = [];
afterEach(async () => {
  for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true });
});

async function world(afterDisconnect?: (fs: HostFs, device: string) => Promise<void>) {
  const root = await mkdtemp(path.join(os.tmpdir(), 'berth-orphan-links-'));
  roots.push(root);
  const fs = createHostFs(root);
  const store: Store = createMemoryStore();
  const catalog = memCatalog(new Map<string, Device>(), undefined, {
    lists: true,
    // The orphan's fix alone: without `checkPublication`, the links these tests re-point by hand
    // are not pointed back at the other attachment's recorded device (publication-drift.test.ts).
    consumer: { ...createHostConsumer(fs), name: 'mem', checkPublication: undefined },
    ...(afterDisconnect ? { afterDisconnect: (device: string) => afterDisconnect(fs, device) } : {}),
  });
  const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
  const service = new BerthServiceImpl(config, store, catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
  await service.createVolume({ name: 'orphan', sizeBytes: 2 ** 20 });
  await service.createVolume({ name: 'other', sizeBytes: 2 ** 20 });
  const orphan = (await service.attach({ volume: 'orphan' })).attachment!;
  const other = (await service.attach({ volume: 'other' })).attachment!;
  // The orphan's row lost behind berth's back: its device and links are left for reconcile.
  await store.attachments.delete(orphan.id);
  return { fs, service, orphan, other };
}

/** The other attachment's links now lead to `device` (its disk got the name the kernel freed). */
async function repoint(fs: HostFs, other: { id: string; volumeId: string }, device: string): Promise<void> {
  for (const link of [attachmentLinkPath(other.id), stableLinkPath(other.volumeId)]) {
    await fs.unlink(link);
    await fs.symlink(device, link);
  }
}

describe('reconcile drops an orphan device\'s links, never another attachment\'s', () => {
  it('the other attachment published the freed name while the orphan was being disconnected: its links stay', async () => {
    const late: { other?: { id: string; volumeId: string } } = {};
    const w = await world(async (fs, device) => {
      if (late.other) await repoint(fs, late.other, device);
    });
    late.other = w.other;
    const orphanDevice = w.orphan.device!.path;
    const applied = await w.service.reconcile!({});
    expect(applied.differences.map((d) => `${d.kind}:${d.state}`)).toContain('device_without_attachment:applied');
    // The orphan's own names are gone; the other attachment's lead where it published them.
    expect(await w.fs.readlink(attachmentLinkPath(w.orphan.id))).toBeUndefined();
    expect(await w.fs.readlink(stableLinkPath(w.orphan.volumeId))).toBeUndefined();
    expect(await w.fs.readlink(attachmentLinkPath(w.other.id))).toBe(orphanDevice);
    expect(await w.fs.readlink(stableLinkPath(w.other.volumeId))).toBe(orphanDevice);
    await w.service.close();
  });

  it('the other attachment\'s links already led to the orphan\'s device name: they stay (live records\' names are kept)', async () => {
    const w = await world();
    const orphanDevice = w.orphan.device!.path;
    await repoint(w.fs, w.other, orphanDevice);
    await w.service.reconcile!({});
    expect(await w.fs.readlink(attachmentLinkPath(w.orphan.id))).toBeUndefined();
    expect(await w.fs.readlink(attachmentLinkPath(w.other.id))).toBe(orphanDevice);
    expect(await w.fs.readlink(stableLinkPath(w.other.volumeId))).toBe(orphanDevice);
    await w.service.close();
  });
});
