import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import type { HostServices } from '@berth/host';
import { BerthServiceImpl } from '../berth-service.js';
import { DriverCatalog } from '../catalog.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import type { Consumer } from '../contracts/consumer.js';
import type { TransportDriver } from '../contracts/transport-driver.js';
import { identityMismatch } from '../device-identity.js';
import { BerthError } from '../errors.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import { definePlugin, PLUGIN_API_VERSION } from '../plugin.js';
import { runHostStep } from './run-host-step.js';
import { stubHostFs } from '../test-support.js';

// The host half of a step, parsed at its boundary (what `berth agent` and the in-process executor
// both run), and the executor choice: this process for its own host, refused for a host with no agent.

function host(root?: string, options: { repair?: boolean } = {}) {
  const devices = new Map<string, Device>();
  const published = new Map<string, string>();
  const calls: string[] = [];
  const transport: TransportDriver = {
    name: 'mem',
    protocols: ['mem'],
    sourceKeys: ['device_path'],
    connectorProperties: async () => ({ initiator: 'iqn.2026-01.test:agent' }),
    connect: async (connection, context) => {
      calls.push(`connect ${context.operationId ?? '-'} ${context.volumeId ?? '-'}`);
      const path = String(connection.data.device_path);
      const device: Device = { path, type: 'block', identity: { kind: 'mem', path } };
      devices.set(path, device);
      return device;
    },
    disconnect: async (connection, device, options) => {
      calls.push(`disconnect force=${options.force} inUse=${options.inUse?.length ?? 0}`);
      if (device?.identity?.stale) throw identityMismatch(device, { kind: 'mem' }, 'the volume');
      devices.delete(String(connection.data.device_path));
    },
    connected: async () => [...devices.values()].map((device) => ({ device, source: { device_path: device.path } })),
    ...(options.repair
      ? {
          repairPaths: async (listed: { device: Device }) => {
            calls.push(`repair ${listed.device.path}`);
            return { changed: true, detail: `moved ${listed.device.path} to 127.0.0.2:3260` };
          },
        }
      : {}),
    check: async () => ({ ok: true, summary: 'mem' }),
  };
  const consumer: Consumer = {
    name: 'mem',
    publish: async (_server, device, attachment) => {
      published.set(attachment.id, device.path);
      return { path: `/dev/berth/${attachment.volumeId}` };
    },
    unpublish: async (_server, attachment, options) => {
      calls.push(`unpublish stillShared=${options?.stillShared} device=${attachment.device?.path ?? '-'}`);
      published.delete(attachment.id);
    },
    unpublishOrphan: async (volumeId, device) => void calls.push(`unpublishOrphan ${volumeId} ${device.path}`),
  };
  const plugin = definePlugin({ name: 'mem', apiVersion: PLUGIN_API_VERSION, register: (r) => (r.transport('mem', () => transport), r.consumer('mem', () => consumer)) });
  // With a root, the plugin runs on host services rooted there (as `--simulate`'s transports do).
  const fs = stubHostFs(root);
  const catalog = new DriverCatalog({ fs } as unknown as HostServices, '/tmp', silentLogger);
  catalog.add({ plugin, packageName: 'mem', version: undefined, options: undefined });
  return { catalog, logger: silentLogger, baseConnector: () => ({ host: 'h-2', platform: 'x86_64' }), devices, published, calls };
}

const VOLUME = '6f1c2f8e-2b1a-4f57-9a55-3f1d8a3c2b10';
const ID = '0b4f6a2e-8c1d-4e3f-9a7b-5c6d7e8f9a0b';
const NOW = '2026-12-03T08:00:00.000Z';
const server = { id: ID, name: 'web-7', projectId: 'default', hostId: ID, createdAt: NOW, updatedAt: NOW };
const attachment = {
  id: ID, volumeId: VOLUME, serverId: ID, hostId: ID, status: 'attaching' as const, mode: 'rw' as const, transport: 'mem', connector: null,
  connectionInfo: null, device: null, publishedPath: null, timings: {}, error: null, createdAt: NOW, updatedAt: NOW,
};
const connection = { driver_volume_type: 'mem', data: { device_path: '/dev/mem0', auth_password: 'never-stored' } };
const run = { operationId: 'op-1', signal: AbortSignal.timeout(5_000) };
const deadlineAt = new Date(Date.now() + 60_000).toISOString();

describe('runHostStep', () => {
  it('connects, publishes, lists, unpublishes and disconnects on the host, each payload and result parsed', async () => {
    const h = host();
    const { device } = await runHostStep(h, 'connect', { transport: 'mem', connection, volumeId: VOLUME, deadlineAt }, run);
    expect(device).toMatchObject({ path: '/dev/mem0', type: 'block' });
    expect(h.calls).toEqual([`connect op-1 ${VOLUME}`]);
    expect(await runHostStep(h, 'publish', { consumer: 'mem', server, attachment, device }, run)).toEqual({ path: `/dev/berth/${VOLUME}` });
    const facts = await runHostStep(h, 'host_facts', {}, run);
    expect(facts.listings).toEqual([{ transport: 'mem', protocol: 'mem', sourceKeys: ['device_path'], repairsPaths: false, devices: [{ device, source: { device_path: '/dev/mem0' } }] }]);
    expect(await runHostStep(h, 'unpublish', { consumer: 'mem', server, attachment, stillShared: true }, run)).toEqual({});
    const released = await runHostStep(h, 'release', { transport: 'mem', connection, device, force: true, inUse: [device], volumeId: VOLUME, deadlineAt }, run);
    expect(released).toEqual({ identityMismatch: false });
    expect(h.devices.size).toBe(0);
    expect(h.calls.slice(1)).toEqual(['unpublish stillShared=true device=-', 'disconnect force=true inUse=1']);
  });

  it('on a transport of another host root: connect answers that root, and the consumer is given the device as the machine sees it', async () => {
    const h = host('/srv/simhost');
    const connected = await runHostStep(h, 'connect', { transport: 'mem', connection, volumeId: VOLUME, deadlineAt }, run);
    // The device is recorded as its transport names it; the root goes back with it (the attachment records it).
    expect(connected).toEqual({ device: expect.objectContaining({ path: '/dev/mem0' }), hostRoot: '/srv/simhost' });
    const recorded = { ...attachment, device: connected.device, hostRoot: connected.hostRoot };
    await runHostStep(h, 'publish', { consumer: 'mem', server, attachment: recorded, device: connected.device }, run);
    expect(h.published.get(ID)).toBe('/srv/simhost/dev/mem0');
    await runHostStep(h, 'unpublish', { consumer: 'mem', server, attachment: recorded, stillShared: false }, run);
    await runHostStep(h, 'unpublish_orphan', { consumer: 'mem', volumeId: VOLUME, device: connected.device, transport: 'mem' }, run);
    // Without the transport (an older caller) the device is taken as it is.
    await runHostStep(h, 'unpublish_orphan', { consumer: 'mem', volumeId: VOLUME, device: connected.device }, run);
    expect(h.calls.slice(1)).toEqual([
      'unpublish stillShared=false device=/srv/simhost/dev/mem0',
      `unpublishOrphan ${VOLUME} /srv/simhost/dev/mem0`,
      `unpublishOrphan ${VOLUME} /dev/mem0`,
    ]);
  });

  it('answers identityMismatch (and touches nothing) when the path names another device now', async () => {
    const h = host();
    const stale: Device = { path: '/dev/mem0', type: 'block', identity: { kind: 'mem', stale: true } };
    const out = await runHostStep(h, 'disconnect', { transport: 'mem', connection, device: stale, force: false, inUse: [], volumeId: VOLUME, deadlineAt }, run);
    expect(out).toEqual({ identityMismatch: true });
  });

  it('repairs a listed device\'s paths through its transport, and says when the transport cannot', async () => {
    const listed = { device: { path: '/dev/mem0', type: 'block' as const, paths: [{ portal: '127.0.0.1:3260', state: 'failed' }] }, source: { device_path: '/dev/mem0' } };
    const able = host(undefined, { repair: true });
    expect((await runHostStep(able, 'host_facts', {}, run)).listings[0]?.repairsPaths).toBe(true);
    expect(await runHostStep(able, 'repair_paths', { transport: 'mem', listed }, run)).toEqual({ supported: true, changed: true, detail: 'moved /dev/mem0 to 127.0.0.2:3260' });
    expect(able.calls).toEqual(['repair /dev/mem0']);
    expect(await runHostStep(host(), 'repair_paths', { transport: 'mem', listed }, run)).toEqual({ supported: false, changed: false, detail: 'transport mem cannot repair paths' });
  });

  it('builds the connector from the base and the transports, with the multipath wish on top', async () => {
    const { connector } = await runHostStep(host(), 'connector', { multipath: true, enforce_multipath: false }, run);
    expect(connector).toEqual({ host: 'h-2', platform: 'x86_64', initiator: 'iqn.2026-01.test:agent', multipath: true, enforce_multipath: false });
  });

  it('refuses a payload that does not fit its step (VALIDATION naming the step), before touching the host', async () => {
    const h = host();
    const error = await runHostStep(h, 'connect', { transport: 'mem', connection, deadlineAt }, run).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('VALIDATION');
    expect(String((error as Error).message)).toMatch(/connect payload.*volumeId/);
    expect(h.calls).toEqual([]);
  });
});

describe('the executor of a server host', () => {
  it('runs this host in-process, and refuses a host with no agent at dispatch: nothing touched, the volume available', async () => {
    const h = host();
    const exported = new Set<string>();
    h.catalog.add({
      plugin: definePlugin({
        name: 'mem-backend',
        apiVersion: PLUGIN_API_VERSION,
        register: (r) =>
          r.backend('mem', () => ({
            name: 'mem',
            create: async (volume) => ({ providerLocation: `mem:${volume.id}` }),
            delete: async () => undefined,
            initializeConnection: async (volume) => {
              exported.add(volume.id);
              return { driver_volume_type: 'mem', data: { device_path: `/dev/mem-${volume.id}` } };
            },
            terminateConnection: async (volume) => void exported.delete(volume.id),
            check: async () => ({ ok: true, summary: 'mem' }),
          })),
      }),
      packageName: 'mem-backend',
      version: undefined,
      options: undefined,
    });
    const store = createMemoryStore();
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
    const service = new BerthServiceImpl(config, store, h.catalog, { hostname: 'h-1', ips: [], platform: 'x86_64', osType: 'linux' }, silentLogger);
    const volume = await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
    const here = await service.attach({ volume: 'db1' });
    expect((await store.operations.require(here.operation.id)).steps.find((s) => s.name === 'dispatch')?.data).toMatchObject({ agent: 'in-process' });
    await service.detach({ volume: 'db1' });

    await service.createServer({ name: 'web-7', host: 'h-3' });
    const error = await service.attach({ volume: 'db1', server: 'web-7' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('UNPROCESSABLE');
    expect(String((error as Error).message)).toMatch(/host h-3 has no berth agent/);
    expect((error as BerthError).hint).toMatch(/berth agent/);
    expect((await service.getVolume(volume.id)).status).toBe('available');
    expect(exported.size).toBe(0);
    expect(h.calls.filter((c) => c.startsWith('connect'))).toHaveLength(1);
    await service.close();
  });
});
