import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BerthError,
  createHostConsumer,
  parseWith,
  toBerthError,
  zId,
  type BackendVolume,
  type Attachment,
  type ConnectionInfo,
  type Device,
  type TransportDriver,
  type VolumeBackend,
} from '@berth/core';
import { createHostServices, type HostFs, type HostStat } from '@berth/host';
import { describeBackendConformance } from './backend-conformance.js';
import { describeConsumerConformance } from './consumer-conformance.js';
import { describeTransportConformance } from './transport-conformance.js';

// The suites run here against in-memory plugins that keep the contracts, so the suites' own logic
// is tested without devices; the real plugins run them in their own packages.

function cancelledIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw toBerthError(signal.reason, 'CANCELLED');
}

/**
 * A transport whose "devices" are names in a map, with a HostFs that reports them as block
 * devices. It keeps the identity rule: each device instance has a generation in its identity, a
 * device in `inUse` is never removed, and a path that names another instance is refused.
 */
function memoryTransport(): { driver: TransportDriver; fs: HostFs } {
  const devices = new Map<string, string>();
  const generations = new Map<string, number>();
  let next = 0;
  const fileOf = (connection: ConnectionInfo): string => connection.data.device_path ?? '';
  const deviceOf = (path: string): Device => ({ path, type: 'block', identity: { kind: 'memory', path, generation: generations.get(path) ?? 0 } });
  const driver: TransportDriver = {
    name: 'memory',
    protocols: ['memory'],
    sourceKeys: ['device_path'],
    connectorProperties: async () => ({}),
    async connect(connection, { signal }): Promise<Device> {
      cancelledIfAborted(signal);
      const existing = devices.get(fileOf(connection));
      if (existing) return deviceOf(existing);
      const path = `/dev/mem${next++}`;
      devices.set(fileOf(connection), path);
      generations.set(path, (generations.get(path) ?? 0) + 1);
      return deviceOf(path);
    },
    async disconnect(connection, device, { inUse = [] }) {
      const path = devices.get(fileOf(connection));
      if (path === undefined) return;
      const now = deviceOf(path);
      if (inUse.some((u) => u.path === path)) return;
      if (device && (device.path !== path || device.identity?.generation !== now.identity?.generation)) {
        throw new BerthError('CONFLICT', `${device.path} is another device now`, { details: { reason: 'identity-mismatch', untouched: true } });
      }
      devices.delete(fileOf(connection));
    },
    async connected() {
      return [...devices].map(([file, path]) => ({ device: deviceOf(path), source: { device_path: file } }));
    },
    // Nothing runs beside its devices: looks, changes nothing, ends when aborted.
    async upkeep(signal) {
      cancelledIfAborted(signal);
    },
    check: async () => ({ ok: true, summary: 'memory: always works' }),
  };
  const unused = (): never => {
    throw new Error('not used by the conformance suite');
  };
  const fs: HostFs = {
    root: '/',
    resolve: (p) => p,
    toHostPath: (p) => p,
    readFile: unused,
    readFileIfExists: unused,
    writeFile: unused,
    async exists(p) {
      return [...devices.values()].includes(p);
    },
    readdir: unused,
    readlink: unused,
    symlink: unused,
    unlink: unused,
    mkdir: unused,
    rm: unused,
    async stat(p): Promise<HostStat | undefined> {
      if (![...devices.values()].includes(p)) return undefined;
      return { isFile: false, isDirectory: false, isSymbolicLink: false, isBlockDevice: true, size: 0 };
    },
    realpath: async (p) => p,
  };
  return { driver, fs };
}

/** A backend that keeps volume sizes in a map. */
function memoryBackend(): { backend: VolumeBackend; sizes: Map<string, number> } {
  const sizes = new Map<string, number>();
  const idOf = (volume: BackendVolume): string => parseWith(zId, volume.id, 'volume id');
  const backend: VolumeBackend = {
    name: 'memory',
    async create(volume, signal) {
      const id = idOf(volume);
      cancelledIfAborted(signal);
      const existing = sizes.get(id);
      if (existing !== undefined && existing !== volume.sizeBytes) throw new BerthError('CONFLICT', 'other size');
      sizes.set(id, volume.sizeBytes);
      return { providerLocation: `memory:${id}` };
    },
    async delete(volume) {
      sizes.delete(idOf(volume));
    },
    async extend(volume, newSizeBytes) {
      const id = idOf(volume);
      if (!sizes.has(id)) throw new BerthError('NOT_FOUND', 'no such volume');
      sizes.set(id, newSizeBytes);
    },
    async initializeConnection(volume) {
      const id = idOf(volume);
      if (!sizes.has(id)) throw new BerthError('NOT_FOUND', 'no such volume');
      return { driver_volume_type: 'memory', data: { device_path: `memory:${id}`, volume_id: id } };
    },
    async terminateConnection(volume) {
      idOf(volume);
    },
    check: async () => ({ ok: true, summary: 'memory: always works' }),
  };
  return { backend, sizes };
}

describeTransportConformance('in-memory transport', async () => {
  const { driver, fs } = memoryTransport();
  return {
    driver,
    fs,
    makeConnection: async () => ({ driver_volume_type: 'memory', data: { device_path: `/volumes/${randomUUID()}` } }),
    cleanup: async () => undefined,
  };
}, { identity: true });

describeBackendConformance('in-memory backend', async () => {
  const { backend, sizes } = memoryBackend();
  return {
    backend,
    cleanup: async () => undefined,
    exists: async (volume) => sizes.has(volume.id),
    sizeOf: async (volume) => sizes.get(volume.id) ?? 0,
  };
});

describeConsumerConformance('host (links under a temporary root)', async () => {
  const root = await mkdtemp(join(tmpdir(), 'berth-consumer-conformance-'));
  const { fs } = createHostServices({ root });
  const now = new Date().toISOString();
  const server = { id: randomUUID(), name: 'conformance', projectId: 'default', hostId: randomUUID(), createdAt: now, updatedAt: now };
  let next = 0;
  return {
    consumer: createHostConsumer(fs),
    server,
    fs,
    async makeVolume() {
      const volumeId = randomUUID();
      // A link names a path; nothing here opens the device, so no device has to exist.
      const device = { path: `/dev/loop-conformance-${next++}`, type: 'block' as const };
      const connectionInfo = { driver_volume_type: 'file', data: { device_path: `/volumes/${volumeId}` } };
      const attachment: Attachment = {
        ...{ id: randomUUID(), volumeId, serverId: server.id, hostId: server.hostId, status: 'attaching', mode: 'rw', transport: 'loop' },
        ...{ connector: { host: 'conformance' }, connectionInfo, device, publishedPath: null, timings: {}, error: null, createdAt: now, updatedAt: now },
      };
      return { volumeId, device, attachment };
    },
    cleanup: () => rm(root, { recursive: true, force: true }),
  };
});
