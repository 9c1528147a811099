import { BerthError, withDeferredDurability } from '@berth/core';
import type { Attachment, BerthErrorCode, ConnectionInfo, Connector, Device, Host, NewVolume, Server, Store, Volume } from '@berth/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

/** Await `promise`, which must reject with a BerthError of `code`; returns that error. */
async function rejection(promise: Promise<unknown>, code: BerthErrorCode): Promise<BerthError> {
  let outcome: unknown;
  try {
    await promise;
  } catch (error) {
    outcome = error;
  }
  if (!BerthError.is(outcome)) {
    throw new Error(`expected a BerthError ${code}, got ${outcome === undefined ? 'success' : String(outcome)}`);
  }
  expect(outcome.code, outcome.message).toBe(code);
  return outcome;
}

const GIB = 2 ** 30;

function newVolume(overrides: Partial<NewVolume> = {}): NewVolume {
  return {
    name: 'data1',
    projectId: 'project-a',
    sizeBytes: GIB,
    backend: 'file',
    multiattach: false,
    status: 'available',
    ...overrides,
  };
}

/**
 * The behaviour every `Store` implementation must have, as a vitest suite. `open` must return a
 * store over a fresh, empty, migrated database each time; the suite closes it after each test.
 * Run it from the implementation's own test file: `describeStoreConformance('sqlite', open)`.
 */
export function describeStoreConformance(name: string, open: () => Promise<Store>): void {
  describe(`Store conformance: ${name}`, () => {
    let store: Store;
    let opened: Store | undefined;

    beforeEach(async () => {
      opened = await open();
      store = opened;
    });

    afterEach(async () => {
      await opened?.close();
      opened = undefined;
    });

    async function hostAndServer(hostName = 'host-1', serverName = 'vm-1'): Promise<{ host: Host; server: Server }> {
      const host = await store.hosts.create({ name: hostName });
      const server = await store.servers.create({ name: serverName, projectId: 'project-a', hostId: host.id });
      return { host, server };
    }

    async function attachmentFixture(): Promise<{ volume: Volume; host: Host; server: Server }> {
      const volume = await store.volumes.create(newVolume());
      const { host, server } = await hostAndServer();
      return { volume, host, server };
    }

    describe('volumes', () => {
      it('creates a volume with an id, timestamps and no provider location', async () => {
        const volume = await store.volumes.create(newVolume({ multiattach: true }));
        expect(volume.id).toMatch(/^[0-9a-f-]{36}$/);
        expect(volume).toMatchObject({
          name: 'data1',
          projectId: 'project-a',
          sizeBytes: GIB,
          backend: 'file',
          multiattach: true,
          status: 'available',
          providerLocation: null,
        });
        // ISO-8601 in microseconds (core's createMonotonicClock), read by Date.parse to the millisecond.
        expect(volume.createdAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
        expect(new Date(volume.createdAt).toISOString()).toBe(`${volume.createdAt.slice(0, 23)}Z`);
        expect(volume.updatedAt).toBe(volume.createdAt);
        expect(await store.volumes.get(volume.id)).toEqual(volume);
      });

      it('keeps a given id and sizes up to 1 PiB', async () => {
        const id = '0b6f1b7c-3c44-4f0e-9d55-2f8b1c9b2a10';
        const volume = await store.volumes.create(newVolume({ id, sizeBytes: 2 ** 50 }));
        expect(volume.id).toBe(id);
        expect((await store.volumes.require(id)).sizeBytes).toBe(2 ** 50);
      });

      it('refuses a second volume with the same name in the project, but not in another project', async () => {
        await store.volumes.create(newVolume());
        const error = await rejection(store.volumes.create(newVolume()), 'CONFLICT');
        expect(error.message).toContain('a volume named data1 already exists');
        const other = await store.volumes.create(newVolume({ projectId: 'project-b' }));
        expect(other.projectId).toBe('project-b');
        expect(await store.volumes.list()).toHaveLength(2);
      });

      it('refuses a duplicate id', async () => {
        const first = await store.volumes.create(newVolume());
        const error = await rejection(store.volumes.create(newVolume({ id: first.id, name: 'data2' })), 'CONFLICT');
        expect(error.message).toContain(first.id);
      });

      it('refuses invalid fields with VALIDATION and writes nothing', async () => {
        await rejection(store.volumes.create(newVolume({ name: '../etc' })), 'VALIDATION');
        await rejection(store.volumes.create(newVolume({ sizeBytes: 1000 })), 'VALIDATION');
        expect(await store.volumes.list()).toEqual([]);
      });

      it('get returns undefined and require throws NOT_FOUND with a hint for a missing volume', async () => {
        const id = '5d1c3b8e-95a6-4f7e-8a9e-0c2f6d4b1a33';
        expect(await store.volumes.get(id)).toBeUndefined();
        const error = await rejection(store.volumes.require(id), 'NOT_FOUND');
        expect(error.message).toContain(id);
        expect(error.hint).toBeTruthy();
      });

      it('finds by name within a project', async () => {
        const volume = await store.volumes.create(newVolume());
        expect(await store.volumes.findByName('project-a', 'data1')).toEqual(volume);
        expect(await store.volumes.findByName('project-b', 'data1')).toBeUndefined();
        expect(await store.volumes.findByName('project-a', 'nope')).toBeUndefined();
      });

      it('lists with project and status filters, oldest first', async () => {
        const a = await store.volumes.create(newVolume({ name: 'a' }));
        const b = await store.volumes.create(newVolume({ name: 'b', status: 'creating' }));
        const c = await store.volumes.create(newVolume({ name: 'c', projectId: 'project-b' }));
        expect((await store.volumes.list()).map((v) => v.id)).toEqual([a.id, b.id, c.id]);
        expect((await store.volumes.list({ projectId: 'project-a' })).map((v) => v.id)).toEqual([a.id, b.id]);
        expect((await store.volumes.list({ status: 'creating' })).map((v) => v.id)).toEqual([b.id]);
        expect(await store.volumes.list({ projectId: 'project-b', status: 'creating' })).toEqual([]);
      });

      it('transition is a compare-and-swap that applies the patch', async () => {
        const volume = await store.volumes.create(newVolume({ status: 'creating' }));
        const updated = await store.volumes.transition(volume.id, ['creating'], 'available', {
          providerLocation: '/var/lib/berth/volumes/data1',
          sizeBytes: 2 * GIB,
        });
        expect(updated).toMatchObject({ status: 'available', providerLocation: '/var/lib/berth/volumes/data1', sizeBytes: 2 * GIB });
        expect(updated.updatedAt > volume.updatedAt).toBe(true);
        expect(await store.volumes.require(volume.id)).toEqual(updated);

        const reserved = await store.volumes.transition(volume.id, ['available', 'reserved'], 'reserved');
        expect(reserved.status).toBe('reserved');
        expect(reserved.providerLocation).toBe('/var/lib/berth/volumes/data1');
      });

      it('transition from the wrong status is a CONFLICT that names the actual status', async () => {
        const volume = await store.volumes.create(newVolume());
        await store.volumes.transition(volume.id, ['available'], 'reserved');
        await store.volumes.transition(volume.id, ['reserved'], 'in-use');
        const error = await rejection(store.volumes.transition(volume.id, ['available'], 'reserved'), 'CONFLICT');
        expect(error.message).toBe('volume data1 is in-use, expected available');
        expect(error.details).toEqual({ id: volume.id, actual: 'in-use', expected: ['available'] });
        expect((await store.volumes.require(volume.id)).status).toBe('in-use');
      });

      it('transition of a missing volume is NOT_FOUND', async () => {
        await rejection(
          store.volumes.transition('7a0c9f5e-1b2d-4c3e-8f4a-5b6c7d8e9f00', ['available'], 'reserved'),
          'NOT_FOUND',
        );
      });

      it('an illegal transition is refused with INVALID_STATE and the row is untouched', async () => {
        const volume = await store.volumes.create(newVolume());
        const error = await rejection(store.volumes.transition(volume.id, ['available'], 'in-use'), 'INVALID_STATE');
        expect(error.message).toContain('available');
        await rejection(store.volumes.transition(volume.id, ['deleting'], 'in-use'), 'INVALID_STATE');
        expect(await store.volumes.require(volume.id)).toEqual(volume);
      });

      it('an invalid patch is refused with VALIDATION and the row is untouched', async () => {
        const volume = await store.volumes.create(newVolume());
        await rejection(store.volumes.transition(volume.id, ['available'], 'extending', { sizeBytes: 123 }), 'VALIDATION');
        expect(await store.volumes.require(volume.id)).toEqual(volume);
      });

      it('concurrent reservations of one volume: exactly one wins, the others get CONFLICT', async () => {
        const volume = await store.volumes.create(newVolume());
        const results = await Promise.allSettled(
          Array.from({ length: 10 }, () => store.volumes.transition(volume.id, ['available'], 'reserved')),
        );
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        for (const result of results) {
          if (result.status === 'rejected') {
            expect(BerthError.is(result.reason) && result.reason.code).toBe('CONFLICT');
          }
        }
      });

      it('delete is a compare-and-swap on status', async () => {
        const volume = await store.volumes.create(newVolume());
        const error = await rejection(store.volumes.delete(volume.id, ['deleting', 'error']), 'CONFLICT');
        expect(error.details).toMatchObject({ actual: 'available' });
        expect(await store.volumes.get(volume.id)).toBeDefined();
        await store.volumes.delete(volume.id, ['available']);
        expect(await store.volumes.get(volume.id)).toBeUndefined();
        await rejection(store.volumes.delete(volume.id, ['available']), 'NOT_FOUND');
      });

      it('delete of a volume that still has attachments is a CONFLICT', async () => {
        const { volume, host, server } = await attachmentFixture();
        await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: host.id, mode: 'rw' });
        await rejection(store.volumes.delete(volume.id, ['available']), 'CONFLICT');
        expect(await store.volumes.get(volume.id)).toBeDefined();
      });
    });

    describe('hosts', () => {
      it('creates, gets, requires, finds by name and lists hosts by name', async () => {
        const b = await store.hosts.create({ name: 'node-b' });
        const a = await store.hosts.create({ name: 'node-a', connector: { host: 'node-a' } });
        expect(b.connector).toBeNull();
        expect(await store.hosts.get(a.id)).toEqual(a);
        expect(await store.hosts.require(b.id)).toEqual(b);
        expect(await store.hosts.findByName('node-a')).toEqual(a);
        expect(await store.hosts.findByName('node-c')).toBeUndefined();
        expect((await store.hosts.list()).map((h) => h.name)).toEqual(['node-a', 'node-b']);
        await rejection(store.hosts.require('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b'), 'NOT_FOUND');
      });

      it('refuses a second host with the same name', async () => {
        await store.hosts.create({ name: 'node-a' });
        const error = await rejection(store.hosts.create({ name: 'node-a' }), 'CONFLICT');
        expect(error.message).toContain('a host named node-a already exists');
      });

      it('stores the connector as given, unknown keys included, and drops secrets', async () => {
        const host = await store.hosts.create({ name: 'node-a' });
        const connector = {
          host: 'node-a',
          initiator: 'iqn.2004-10.com.ubuntu:01:abcdef',
          ip: '192.0.2.10',
          multipath: true,
          enforce_multipath: false,
          platform: 'x86_64',
          os_type: 'linux',
          do_local_attach: false,
          nvme_hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:1234',
          vendor: { features: ['trim', 'wwn'], level: 3 },
          password: 'not-stored',
        } as Connector;
        const updated = await store.hosts.setConnector(host.id, connector);
        const { password: _secret, ...expected } = connector as Connector & { password: string };
        expect(updated.connector).toEqual(expected);
        expect((await store.hosts.require(host.id)).connector).toEqual(expected);
        expect(updated.updatedAt > host.updatedAt).toBe(true);
      });

      it('setConnector on a missing host is NOT_FOUND; an invalid connector is VALIDATION', async () => {
        await rejection(store.hosts.setConnector('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', { host: 'x' }), 'NOT_FOUND');
        const host = await store.hosts.create({ name: 'node-a' });
        await rejection(store.hosts.setConnector(host.id, { initiator: 'iqn.x' } as unknown as Connector), 'VALIDATION');
        expect((await store.hosts.require(host.id)).connector).toBeNull();
      });

      it('a host has no agent until one registers; recordAgent replaces the previous one', async () => {
        const host = await store.hosts.create({ name: 'node-a' });
        expect(host.agent).toBeNull();
        expect((await store.hosts.require(host.id)).agent).toBeNull();
        const first = await store.hosts.recordAgent(host.id, { instance: 'node-a/1111', version: '0.1.0', transports: ['loop'], consumers: ['host'] });
        expect(first.agent).toEqual({ instance: 'node-a/1111', version: '0.1.0', transports: ['loop'], consumers: ['host'], lastSeenAt: first.updatedAt });
        expect(first.updatedAt > host.updatedAt).toBe(true);
        expect((await store.hosts.findByName('node-a'))?.agent).toEqual(first.agent);
        const transportInfo = [{ name: 'iscsi', protocols: ['iscsi'], priority: 0 }, { name: 'loop', protocols: ['file'], priority: 0 }];
        const second = await store.hosts.recordAgent(host.id, { instance: 'node-a/2222', version: '0.2.0', transports: ['iscsi', 'loop'], transportInfo, consumers: ['host'] });
        expect(second.agent).toMatchObject({ instance: 'node-a/2222', version: '0.2.0', transports: ['iscsi', 'loop'], transportInfo });
        expect((await store.hosts.require(host.id)).agent?.transportInfo).toEqual(transportInfo);
        expect(second.agent!.lastSeenAt > first.agent!.lastSeenAt).toBe(true);
        expect((await store.hosts.list())[0]?.agent).toEqual(second.agent);
        await rejection(store.hosts.recordAgent('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', { instance: 'x', version: '1', transports: ['loop'], consumers: ['host'] }), 'NOT_FOUND');
        await rejection(store.hosts.recordAgent(host.id, { instance: '', version: '1', transports: ['loop'], consumers: ['host'] }), 'VALIDATION');
        expect((await store.hosts.require(host.id)).agent).toEqual(second.agent);
        // An agent that sends names only (an older one) leaves no stale protocols behind.
        const third = await store.hosts.recordAgent(host.id, { instance: 'node-a/3333', version: '0.1.0', transports: ['loop'], consumers: ['host'] });
        expect(third.agent?.transportInfo).toBeUndefined();
        expect((await store.hosts.require(host.id)).agent).toEqual(third.agent);
      });

      it('touchAgent refreshes the registered agent only: a replaced one is fenced off', async () => {
        const host = await store.hosts.create({ name: 'node-a' });
        const none = await rejection(store.hosts.touchAgent(host.id, 'node-a/1111'), 'CONFLICT');
        expect(none.details).toMatchObject({ actual: null });
        const registered = await store.hosts.recordAgent(host.id, { instance: 'node-a/1111', version: '0.1.0', transports: ['loop'], consumers: ['host'] });
        const touched = await store.hosts.touchAgent(host.id, 'node-a/1111');
        expect(touched.agent).toMatchObject({ instance: 'node-a/1111', version: '0.1.0' });
        expect(touched.agent!.lastSeenAt > registered.agent!.lastSeenAt).toBe(true);
        await store.hosts.recordAgent(host.id, { instance: 'node-a/2222', version: '0.1.0', transports: ['loop'], consumers: ['host'] });
        const fenced = await rejection(store.hosts.touchAgent(host.id, 'node-a/1111'), 'CONFLICT');
        expect(fenced.message).toContain('another agent registered');
        expect(fenced.details).toMatchObject({ instance: 'node-a/1111', actual: 'node-a/2222' });
        expect((await store.hosts.require(host.id)).agent?.instance).toBe('node-a/2222');
        await rejection(store.hosts.touchAgent('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', 'node-a/2222'), 'NOT_FOUND');
      });

      it('delete removes a host nothing references, with its device records; refuses while servers or attachments do; succeeds when gone', async () => {
        const { volume, host, server } = await attachmentFixture();
        const other = await store.hosts.create({ name: 'host-2' });
        const connectionInfo: ConnectionInfo = { driver_volume_type: 'file', data: { device_path: '/srv/v.img' } };
        const device = { path: '/dev/loop3', type: 'block' as const };
        await store.devices.put({ hostId: host.id, volumeId: volume.id, transport: 'loop', connectionInfo, device });
        await store.devices.put({ hostId: other.id, volumeId: volume.id, transport: 'loop', connectionInfo, device });
        const attachment = await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: host.id, mode: 'rw' });

        const used = await rejection(store.hosts.delete(host.id), 'CONFLICT');
        expect(used.message).toContain('host-1');
        expect(used.details).toMatchObject({ id: host.id, reason: 'host-in-use', servers: 1, attachments: 1, openWorkItems: 0 });
        // Refused: nothing went, the device record neither.
        expect(await store.hosts.get(host.id)).toBeDefined();
        expect(await store.devices.get(host.id, volume.id)).toBeDefined();

        await store.attachments.delete(attachment.id);
        expect((await rejection(store.hosts.delete(host.id), 'CONFLICT')).details).toMatchObject({ servers: 1, attachments: 0 });
        await store.servers.delete(server.id);
        await store.hosts.delete(host.id);
        expect(await store.hosts.get(host.id)).toBeUndefined();
        expect(await store.hosts.findByName('host-1')).toBeUndefined();
        expect(await store.devices.list({ hostId: host.id })).toEqual([]);
        // Another host's records stay.
        expect(await store.devices.get(other.id, volume.id)).toBeDefined();
        expect((await store.hosts.list()).map((h) => h.name)).toEqual(['host-2']);
        // Again, and a host that never was: nothing to do.
        await store.hosts.delete(host.id);
        await store.hosts.delete('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b');
        // The name is free again (an agent that registers later makes a new host).
        expect((await store.hosts.create({ name: 'host-1' })).id).not.toBe(host.id);
      });

      it('a delete inside a rolled-back transaction leaves the host and its records', async () => {
        const host = await store.hosts.create({ name: 'node-a' });
        const volumeId = '1d2e3f4a-5b6c-4d7e-9f80-91a2b3c4d5e6';
        await store.devices.put({ hostId: host.id, volumeId, transport: 'loop', connectionInfo: { driver_volume_type: 'file', data: {} }, device: { path: '/dev/loop1', type: 'block' } });
        await store
          .transaction(async (tx) => {
            await tx.hosts.delete(host.id);
            throw new Error('roll back');
          })
          .catch(() => undefined);
        expect(await store.hosts.get(host.id)).toBeDefined();
        expect(await store.devices.get(host.id, volumeId)).toBeDefined();
      });

      it('concurrent registrations leave exactly one agent that may touch', async () => {
        const host = await store.hosts.create({ name: 'node-a' });
        const instances = ['a/1', 'a/2', 'a/3', 'a/4'];
        await Promise.all(instances.map((instance) => store.hosts.recordAgent(host.id, { instance, version: '1', transports: [], consumers: [] })));
        const winner = (await store.hosts.require(host.id)).agent?.instance;
        const touched = await Promise.allSettled(instances.map((instance) => store.hosts.touchAgent(host.id, instance)));
        expect(touched.filter((t) => t.status === 'fulfilled')).toHaveLength(1);
        expect(touched[instances.indexOf(winner ?? '')]?.status).toBe('fulfilled');
      });
    });

    describe('servers', () => {
      it('creates, gets, requires, finds by name and lists with filters', async () => {
        const h1 = await store.hosts.create({ name: 'node-a' });
        const h2 = await store.hosts.create({ name: 'node-b' });
        const s1 = await store.servers.create({ name: 'vm-1', projectId: 'project-a', hostId: h1.id });
        const s2 = await store.servers.create({ name: 'vm-2', projectId: 'project-a', hostId: h2.id });
        const s3 = await store.servers.create({ name: 'vm-1', projectId: 'project-b', hostId: h1.id });
        expect(s1).toMatchObject({ name: 'vm-1', projectId: 'project-a', hostId: h1.id });
        expect(await store.servers.get(s1.id)).toEqual(s1);
        expect(await store.servers.require(s2.id)).toEqual(s2);
        expect(await store.servers.findByName('project-b', 'vm-1')).toEqual(s3);
        expect(await store.servers.findByName('project-b', 'vm-2')).toBeUndefined();
        expect((await store.servers.list()).map((s) => s.id)).toEqual([s1.id, s2.id, s3.id]);
        expect((await store.servers.list({ projectId: 'project-a' })).map((s) => s.id)).toEqual([s1.id, s2.id]);
        expect((await store.servers.list({ hostId: h1.id })).map((s) => s.id)).toEqual([s1.id, s3.id]);
        expect((await store.servers.list({ projectId: 'project-a', hostId: h1.id })).map((s) => s.id)).toEqual([s1.id]);
        expect(await store.servers.get('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b')).toBeUndefined();
        await rejection(store.servers.require('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b'), 'NOT_FOUND');
      });

      it('refuses a duplicate name in a project and an unknown host', async () => {
        const { host } = await hostAndServer('node-a', 'vm-1');
        const error = await rejection(store.servers.create({ name: 'vm-1', projectId: 'project-a', hostId: host.id }), 'CONFLICT');
        expect(error.message).toContain('a server named vm-1 already exists');
        await rejection(
          store.servers.create({ name: 'vm-2', projectId: 'project-a', hostId: '2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b' }),
          'NOT_FOUND',
        );
        expect(await store.servers.findByName('project-a', 'vm-2')).toBeUndefined();
      });

      it('keeps a server\'s hypervisor (defaults filled in); none given is the host itself; an invalid one is VALIDATION', async () => {
        const host = await store.hosts.create({ name: 'node-a' });
        const plain = await store.servers.create({ name: 'vm-0', projectId: 'project-a', hostId: host.id });
        expect(plain.hypervisor).toEqual({ type: 'host' });
        const qemu = await store.servers.create({ name: 'vm-1', projectId: 'project-a', hostId: host.id, hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } as never });
        expect(qemu.hypervisor).toEqual({ type: 'qemu', qmp: '/run/vm-1/qmp.sock', bus: 'pci.0' });
        const libvirt = await store.servers.create({
          name: 'vm-2',
          projectId: 'project-a',
          hostId: host.id,
          hypervisor: { type: 'libvirt', domain: 'web-2', uri: 'qemu+ssh://node-a/system' },
        });
        expect(await store.servers.require(plain.id)).toEqual(plain);
        expect(await store.servers.require(qemu.id)).toEqual(qemu);
        expect(await store.servers.findByName('project-a', 'vm-2')).toEqual(libvirt);
        expect((await store.servers.list({ projectId: 'project-a' })).map((s) => s.hypervisor?.type)).toEqual(['host', 'qemu', 'libvirt']);
        await rejection(store.servers.create({ name: 'vm-3', projectId: 'project-a', hostId: host.id, hypervisor: { type: 'qemu', qmp: 'relative.sock' } as never }), 'VALIDATION');
        await rejection(store.servers.create({ name: 'vm-4', projectId: 'project-a', hostId: host.id, hypervisor: { type: 'xen' } as never }), 'VALIDATION');
        expect(await store.servers.findByName('project-a', 'vm-3')).toBeUndefined();
      });

      it('deletes a server without attachments; refuses while attachments reference it', async () => {
        const { volume, host, server } = await attachmentFixture();
        const attachment = await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: host.id, mode: 'rw' });
        const error = await rejection(store.servers.delete(server.id), 'CONFLICT');
        expect(error.message).toContain('vm-1');
        expect(await store.servers.get(server.id)).toBeDefined();
        await store.attachments.delete(attachment.id);
        await store.servers.delete(server.id);
        expect(await store.servers.get(server.id)).toBeUndefined();
        await rejection(store.servers.delete(server.id), 'NOT_FOUND');
      });
    });

    describe('attachments', () => {
      it('creates an attachment reserved, with empty fields', async () => {
        const { volume, host, server } = await attachmentFixture();
        const attachment = await store.attachments.create({
          volumeId: volume.id,
          serverId: server.id,
          hostId: host.id,
          mode: 'ro',
          connector: { host: 'host-1', initiator: 'iqn.1994-05.com.redhat:abc' },
        });
        expect(attachment).toMatchObject({
          volumeId: volume.id,
          serverId: server.id,
          hostId: host.id,
          status: 'reserved',
          mode: 'ro',
          transport: null,
          connector: { host: 'host-1', initiator: 'iqn.1994-05.com.redhat:abc' },
          connectionInfo: null,
          device: null,
          publishedPath: null,
          guestDevice: null,
          serial: null,
          hostRoot: null,
          timings: {},
          error: null,
        });
        expect(await store.attachments.get(attachment.id)).toEqual(attachment);
        expect(await store.attachments.require(attachment.id)).toEqual(attachment);
      });

      it('refuses references to missing rows with NOT_FOUND', async () => {
        const { volume, host, server } = await attachmentFixture();
        const missing = '2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b';
        const error = await rejection(
          store.attachments.create({ volumeId: missing, serverId: server.id, hostId: host.id, mode: 'rw' }),
          'NOT_FOUND',
        );
        expect(error.message).toContain(`volume ${missing}`);
        await rejection(store.attachments.create({ volumeId: volume.id, serverId: missing, hostId: host.id, mode: 'rw' }), 'NOT_FOUND');
        await rejection(store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: missing, mode: 'rw' }), 'NOT_FOUND');
        expect(await store.attachments.list()).toEqual([]);
        expect(await store.attachments.get(missing)).toBeUndefined();
        await rejection(store.attachments.require(missing), 'NOT_FOUND');
      });

      it('lists with every filter', async () => {
        const { volume: v1, host, server: s1 } = await attachmentFixture();
        const v2 = await store.volumes.create(newVolume({ name: 'data2', projectId: 'project-b' }));
        const s2 = await store.servers.create({ name: 'vm-2', projectId: 'project-b', hostId: host.id });
        const other = await store.hosts.create({ name: 'host-2' });
        const a1 = await store.attachments.create({ volumeId: v1.id, serverId: s1.id, hostId: host.id, mode: 'rw' });
        const a2 = await store.attachments.create({ volumeId: v2.id, serverId: s2.id, hostId: host.id, mode: 'rw' });
        const a3 = await store.attachments.create({ volumeId: v1.id, serverId: s2.id, hostId: other.id, mode: 'ro' });
        await store.attachments.transition(a2.id, ['reserved'], 'attaching');
        const ids = (list: ReadonlyArray<{ id: string }>): string[] => list.map((a) => a.id);
        expect(ids(await store.attachments.list())).toEqual([a1.id, a2.id, a3.id]);
        expect(ids(await store.attachments.list({ volumeId: v1.id }))).toEqual([a1.id, a3.id]);
        expect(ids(await store.attachments.list({ serverId: s2.id }))).toEqual([a2.id, a3.id]);
        expect(ids(await store.attachments.list({ hostId: other.id }))).toEqual([a3.id]);
        expect(ids(await store.attachments.list({ status: 'attaching' }))).toEqual([a2.id]);
        expect(ids(await store.attachments.list({ status: ['reserved', 'attaching'] }))).toEqual([a1.id, a2.id, a3.id]);
        expect(ids(await store.attachments.list({ status: [] }))).toEqual([]);
        expect(ids(await store.attachments.list({ projectId: 'project-b' }))).toEqual([a2.id]);
        expect(ids(await store.attachments.list({ volumeId: v1.id, status: 'reserved', hostId: host.id }))).toEqual([a1.id]);
      });

      it('transition applies the patch; connection_info keeps unknown keys and loses its secrets', async () => {
        const { volume, host, server } = await attachmentFixture();
        const attachment = await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: host.id, mode: 'rw' });
        const connectionInfo: ConnectionInfo = {
          driver_volume_type: 'iscsi',
          data: {
            target_portal: '192.0.2.1:3260',
            target_iqn: 'iqn.2010-10.org.openstack:volume-1',
            target_lun: 1,
            auth_method: 'CHAP',
            auth_username: 'berth',
            auth_password: 'sekrit-chap',
            discovery_auth_password: 'sekrit-discovery',
            vendor_hint: { queue_depth: 32 },
          } as ConnectionInfo['data'],
        };
        const attaching = await store.attachments.transition(attachment.id, ['reserved'], 'attaching', {
          transport: 'iscsi',
          connectionInfo,
        });
        expect(attaching.status).toBe('attaching');
        expect(attaching.transport).toBe('iscsi');
        expect(attaching.connectionInfo).toEqual({
          driver_volume_type: 'iscsi',
          data: {
            target_portal: '192.0.2.1:3260',
            target_iqn: 'iqn.2010-10.org.openstack:volume-1',
            target_lun: 1,
            auth_method: 'CHAP',
            auth_username: 'berth',
            vendor_hint: { queue_depth: 32 },
          },
        });
        expect(JSON.stringify(await store.attachments.require(attachment.id))).not.toContain('sekrit');

        const device = {
          path: '/dev/sdb',
          type: 'block' as const,
          scsi_wwn: '360000000000000000e00000000010001',
          paths: [{ portal: '192.0.2.1:3260', device: 'sdb', state: 'running' }],
          meta: { sessionId: 3 },
        };
        const attached = await store.attachments.transition(attachment.id, ['attaching'], 'attached', {
          device,
          publishedPath: `/dev/berth/${volume.id}`,
          timings: { reserve: 3, connect: 812.5 },
        });
        expect(attached).toMatchObject({ status: 'attached', device, publishedPath: `/dev/berth/${volume.id}` });
        expect(attached.timings).toEqual({ reserve: 3, connect: 812.5 });
        expect(attached.connectionInfo?.data.target_iqn).toBe('iqn.2010-10.org.openstack:volume-1');
        expect(await store.attachments.require(attachment.id)).toEqual(attached);
      });

      it('an illegal transition is INVALID_STATE and leaves the row as it was', async () => {
        const { volume, host, server } = await attachmentFixture();
        const attachment = await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: host.id, mode: 'rw' });
        await rejection(store.attachments.transition(attachment.id, ['reserved'], 'attached', { transport: 'loop' }), 'INVALID_STATE');
        await rejection(store.attachments.transition(attachment.id, ['detached'], 'attaching'), 'INVALID_STATE');
        expect(await store.attachments.require(attachment.id)).toEqual(attachment);
      });

      it('a transition from another status is a CONFLICT; of a missing row NOT_FOUND', async () => {
        const { volume, host, server } = await attachmentFixture();
        const attachment = await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: host.id, mode: 'rw' });
        const error = await rejection(
          store.attachments.transition(attachment.id, ['attaching'], 'attached', { transport: 'loop' }),
          'CONFLICT',
        );
        expect(error.details).toEqual({ id: attachment.id, actual: 'reserved', expected: ['attaching'] });
        expect(error.message).toContain('is reserved, expected attaching');
        expect(await store.attachments.require(attachment.id)).toEqual(attachment);
        await rejection(
          store.attachments.transition('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', ['reserved'], 'attaching'),
          'NOT_FOUND',
        );
      });

      it('update changes fields but not the status; null clears a field', async () => {
        const { volume, host, server } = await attachmentFixture();
        const attachment = await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: host.id, mode: 'rw' });
        const updated = await store.attachments.update(attachment.id, {
          connector: { host: 'host-1', multipath: true },
          error: 'iscsiadm exited 24',
        });
        expect(updated).toMatchObject({ status: 'reserved', connector: { host: 'host-1', multipath: true }, error: 'iscsiadm exited 24' });
        const cleared = await store.attachments.update(attachment.id, { error: null, connector: null });
        expect(cleared).toMatchObject({ error: null, connector: null });
        expect(await store.attachments.require(attachment.id)).toEqual(cleared);
        // What a guest consumer published: the disk's name in the guest and its serial.
        const guest = await store.attachments.update(attachment.id, { guestDevice: '/dev/vdb', serial: volume.id });
        expect(guest).toMatchObject({ guestDevice: '/dev/vdb', serial: volume.id });
        expect(await store.attachments.require(attachment.id)).toEqual(guest);
        expect(await store.attachments.update(attachment.id, { guestDevice: null, serial: null })).toMatchObject({ guestDevice: null, serial: null });
        // The host root its transport connected it on (migration 0006): kept as given, clearable.
        const rooted = await store.attachments.update(attachment.id, { hostRoot: '/var/lib/berth/simhost' });
        expect(rooted.hostRoot).toBe('/var/lib/berth/simhost');
        expect(await store.attachments.require(attachment.id)).toEqual(rooted);
        expect((await store.attachments.list({ volumeId: volume.id })).map((a) => a.hostRoot)).toEqual(['/var/lib/berth/simhost']);
        expect(await store.attachments.update(attachment.id, { hostRoot: null })).toMatchObject({ hostRoot: null });
        await rejection(store.attachments.update('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', { error: 'x' }), 'NOT_FOUND');
        await rejection(
          store.attachments.update(attachment.id, { device: { path: '/dev/loop0' } as unknown as null }),
          'VALIDATION',
        );
      });

      it('devicesOfOtherVolumes: the devices of the host\'s other volumes, live attachments\' and records\', each once', async () => {
        const { volume, host, server } = await attachmentFixture();
        const other = await store.hosts.create({ name: 'host-2' });
        const otherServer = await store.servers.create({ name: 'vm-2', projectId: 'project-a', hostId: other.id });
        const loop = (n: number): Device => ({ path: `/dev/loop${n}`, type: 'block', identity: { kind: 'loop', rdev: `7:${n}`, inode: n } });
        const connectionInfo: ConnectionInfo = { driver_volume_type: 'loop', data: { path: '/srv/v' } };
        const attach = async (volumeId: string, on: { host: Host; server: Server }, device: Device | null): Promise<Attachment> => {
          const attachment = await store.attachments.create({ volumeId, serverId: on.server.id, hostId: on.host.id, mode: 'rw' });
          return device === null ? attachment : store.attachments.update(attachment.id, { device });
        };
        const second = await store.volumes.create(newVolume({ name: 'data2' }));
        const third = await store.volumes.create(newVolume({ name: 'data3' }));
        const here = { host, server };
        await attach(volume.id, here, loop(1)); // the volume asked about: never listed
        await attach(second.id, here, loop(2));
        await store.devices.put({ hostId: host.id, volumeId: second.id, transport: 'loop', connectionInfo, device: loop(2) }); // the same device twice
        await attach(second.id, here, null); // nothing connected yet
        const gone = await attach(third.id, here, loop(3));
        await store.attachments.transition(gone.id, ['reserved'], 'attaching');
        await store.attachments.transition(gone.id, ['attaching'], 'attached');
        await store.attachments.transition(gone.id, ['attached'], 'detaching');
        await store.attachments.transition(gone.id, ['detaching'], 'detached'); // holds nothing any more
        await store.devices.put({ hostId: host.id, volumeId: third.id, transport: 'loop', connectionInfo, device: loop(4) }); // a record alone (a cut-short connect)
        await store.devices.put({ hostId: host.id, volumeId: volume.id, transport: 'loop', connectionInfo, device: loop(5) });
        await attach(second.id, { host: other, server: otherServer }, loop(6)); // another host
        const listed = await store.attachments.devicesOfOtherVolumes(host.id, volume.id);
        expect(listed.map((d) => d.path).sort()).toEqual(['/dev/loop2', '/dev/loop4']);
        expect(listed.find((d) => d.path === '/dev/loop2')).toEqual(loop(2));
        expect((await store.attachments.devicesOfOtherVolumes(host.id, third.id)).map((d) => d.path).sort()).toEqual(['/dev/loop1', '/dev/loop2', '/dev/loop5']);
        expect(await store.attachments.devicesOfOtherVolumes(other.id, third.id)).toEqual([loop(6)]);
        expect(await store.attachments.devicesOfOtherVolumes(other.id, second.id)).toEqual([]);
      });

      it('delete removes the row and succeeds when it is already gone', async () => {
        const { volume, host, server } = await attachmentFixture();
        const attachment = await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: host.id, mode: 'rw' });
        await store.attachments.delete(attachment.id);
        expect(await store.attachments.get(attachment.id)).toBeUndefined();
        await store.attachments.delete(attachment.id);
      });
    });

    describe('operations', () => {
      const deadlineAt = '2030-01-01T00:00:00.000Z';

      it('creates a running operation with an empty journal', async () => {
        const operation = await store.operations.create({
          kind: 'attach',
          volumeId: '0b6f1b7c-3c44-4f0e-9d55-2f8b1c9b2a10',
          serverId: '5d1c3b8e-95a6-4f7e-8a9e-0c2f6d4b1a33',
          hostId: '7a0c9f5e-1b2d-4c3e-8f4a-5b6c7d8e9f00',
          idempotencyKey: 'req-1',
          owner: '1234@node-a',
          deadlineAt,
        });
        expect(operation).toMatchObject({
          kind: 'attach',
          state: 'running',
          attachmentId: null,
          idempotencyKey: 'req-1',
          owner: '1234@node-a',
          deadlineAt,
          endedAt: null,
          error: null,
          result: null,
          steps: [],
        });
        expect(await store.operations.get(operation.id)).toEqual(operation);
        expect(await store.operations.require(operation.id)).toEqual(operation);
        expect(await store.operations.findByIdempotencyKey('req-1')).toEqual(operation);
        expect(await store.operations.findByIdempotencyKey('req-2')).toBeUndefined();
      });

      it('refuses a reused idempotency key with CONFLICT naming the first operation; null keys never collide', async () => {
        const first = await store.operations.create({ kind: 'attach', idempotencyKey: 'req-1', deadlineAt });
        const error = await rejection(store.operations.create({ kind: 'detach', idempotencyKey: 'req-1', deadlineAt }), 'CONFLICT');
        expect(error.details.operationId).toBe(first.id);
        await store.operations.create({ kind: 'attach', deadlineAt });
        await store.operations.create({ kind: 'attach', idempotencyKey: null, deadlineAt });
        expect(await store.operations.list()).toHaveLength(3);
      });

      it('get returns undefined and require throws NOT_FOUND for a missing operation', async () => {
        expect(await store.operations.get('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b')).toBeUndefined();
        await rejection(store.operations.require('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b'), 'NOT_FOUND');
      });

      it('lists newest first, with filters and a limit', async () => {
        const volumeId = '0b6f1b7c-3c44-4f0e-9d55-2f8b1c9b2a10';
        const a = await store.operations.create({ kind: 'attach', volumeId, deadlineAt });
        const b = await store.operations.create({ kind: 'detach', volumeId, deadlineAt });
        const c = await store.operations.create({ kind: 'attach', deadlineAt });
        await store.operations.finish(b.id, { state: 'succeeded' });
        const ids = (list: ReadonlyArray<{ id: string }>): string[] => list.map((o) => o.id);
        expect(ids(await store.operations.list())).toEqual([c.id, b.id, a.id]);
        expect(ids(await store.operations.list({ state: 'running' }))).toEqual([c.id, a.id]);
        expect(ids(await store.operations.list({ state: ['succeeded', 'failed'] }))).toEqual([b.id]);
        expect(ids(await store.operations.list({ kind: 'attach' }))).toEqual([c.id, a.id]);
        expect(ids(await store.operations.list({ volumeId }))).toEqual([b.id, a.id]);
        expect(ids(await store.operations.list({ limit: 2 }))).toEqual([c.id, b.id]);
      });

      it('journals steps in seq order with outcome, data, error and duration', async () => {
        const operation = await store.operations.create({ kind: 'attach', deadlineAt });
        expect(await store.operations.startStep(operation.id, 'reserve', 'do')).toBe(1);
        expect(await store.operations.startStep(operation.id, 'initialize', 'do')).toBe(2);
        await store.operations.endStep(operation.id, 2, {
          state: 'failed',
          error: { code: 'BACKEND_ERROR', message: 'tgtadm exited 22', hint: 'check tgtd' },
        });
        await store.operations.endStep(operation.id, 1, { state: 'done', data: { attachmentId: 'a-1', nested: { n: [1, 2] } } });
        expect(await store.operations.startStep(operation.id, 'reserve', 'undo')).toBe(3);

        const journal = (await store.operations.require(operation.id)).steps;
        expect(journal.map((s) => [s.seq, s.name, s.phase, s.state])).toEqual([
          [1, 'reserve', 'do', 'done'],
          [2, 'initialize', 'do', 'failed'],
          [3, 'reserve', 'undo', 'running'],
        ]);
        const [reserve, initialize, undo] = journal;
        expect(reserve?.data).toEqual({ attachmentId: 'a-1', nested: { n: [1, 2] } });
        expect(reserve?.error).toBeNull();
        expect(reserve?.endedAt).not.toBeNull();
        expect(reserve?.durationMs).toBe(Date.parse(reserve?.endedAt ?? '') - Date.parse(reserve?.startedAt ?? ''));
        expect(initialize?.error).toEqual({ code: 'BACKEND_ERROR', message: 'tgtadm exited 22', hint: 'check tgtd' });
        expect(initialize?.data).toBeNull();
        expect(undo).toMatchObject({ endedAt: null, durationMs: null, error: null, data: null });
      });

      it('startStep hands out distinct consecutive seqs to concurrent callers', async () => {
        const operation = await store.operations.create({ kind: 'attach', deadlineAt });
        const seqs = await Promise.all(
          Array.from({ length: 12 }, (_, i) => store.operations.startStep(operation.id, `step-${i}`, 'do')),
        );
        expect([...seqs].sort((x, y) => x - y)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
        expect((await store.operations.require(operation.id)).steps.map((s) => s.seq)).toEqual(
          Array.from({ length: 12 }, (_, i) => i + 1),
        );
      });

      it('startStep on a missing operation is NOT_FOUND; endStep of a missing or closed step is refused', async () => {
        await rejection(store.operations.startStep('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', 'reserve', 'do'), 'NOT_FOUND');
        const operation = await store.operations.create({ kind: 'attach', deadlineAt });
        await rejection(store.operations.endStep(operation.id, 1, { state: 'done' }), 'NOT_FOUND');
        const seq = await store.operations.startStep(operation.id, 'reserve', 'do');
        await store.operations.endStep(operation.id, seq, { state: 'done' });
        await rejection(store.operations.endStep(operation.id, seq, { state: 'failed' }), 'CONFLICT');
        expect((await store.operations.require(operation.id)).steps[0]?.state).toBe('done');
      });

      it('advanceStep closes a step and starts the next in one write, its duration from its own start', async () => {
        const operation = await store.operations.create({ kind: 'attach', deadlineAt });
        const first = await store.operations.startStep(operation.id, 'reserve', 'do');
        const second = await store.operations.advanceStep(operation.id, first, { state: 'done', data: { attachmentId: 'a-1' } }, { name: 'initialize', phase: 'do' });
        expect(second).toBe(2);
        const third = await store.operations.advanceStep(
          operation.id,
          second,
          { state: 'failed', error: { code: 'BACKEND_ERROR', message: 'tgtadm exited 22' } },
          { name: 'reserve', phase: 'undo' },
        );
        expect(third).toBe(3);
        await store.operations.endStep(operation.id, third, { state: 'done' });
        const journal = (await store.operations.require(operation.id)).steps;
        expect(journal.map((s) => [s.seq, s.name, s.phase, s.state])).toEqual([
          [1, 'reserve', 'do', 'done'],
          [2, 'initialize', 'do', 'failed'],
          [3, 'reserve', 'undo', 'done'],
        ]);
        expect(journal[0]?.data).toEqual({ attachmentId: 'a-1' });
        expect(journal[1]?.error).toEqual({ code: 'BACKEND_ERROR', message: 'tgtadm exited 22' });
        for (const step of journal) {
          // Computed by the store without reading the row back: exactly its end minus its start.
          expect(step.endedAt).not.toBeNull();
          expect(step.durationMs).toBe(Date.parse(step.endedAt ?? '') - Date.parse(step.startedAt));
        }
        // The next row starts when the previous one ends (one write, one instant of the store's clock or later).
        expect(Date.parse(journal[1]?.startedAt ?? '')).toBeGreaterThanOrEqual(Date.parse(journal[0]?.endedAt ?? ''));
      });

      it('advanceStep writes nothing when the close is refused: missing step, closed step, invalid next step', async () => {
        await rejection(store.operations.advanceStep('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', 1, { state: 'done' }, { name: 'x', phase: 'do' }), 'NOT_FOUND');
        const operation = await store.operations.create({ kind: 'attach', deadlineAt });
        await rejection(store.operations.advanceStep(operation.id, 1, { state: 'done' }, { name: 'initialize', phase: 'do' }), 'NOT_FOUND');
        expect((await store.operations.require(operation.id)).steps).toEqual([]);
        const seq = await store.operations.startStep(operation.id, 'reserve', 'do');
        await rejection(store.operations.advanceStep(operation.id, seq, { state: 'done' }, { name: 'initialize', phase: 'sideways' as 'do' }), 'VALIDATION');
        await rejection(
          store.operations.advanceStep(operation.id, seq, { state: 'running' as 'done' }, { name: 'initialize', phase: 'do' }),
          'VALIDATION',
        );
        expect((await store.operations.require(operation.id)).steps.map((s) => [s.seq, s.state])).toEqual([[1, 'running']]);
        await store.operations.endStep(operation.id, seq, { state: 'done' });
        const error = await rejection(store.operations.advanceStep(operation.id, seq, { state: 'done' }, { name: 'initialize', phase: 'do' }), 'CONFLICT');
        expect(error.details).toMatchObject({ actual: 'done', expected: ['running'] });
        expect((await store.operations.require(operation.id)).steps.map((s) => [s.seq, s.state])).toEqual([[1, 'done']]);
      });

      it('advanceStep and startStep racing on one operation hand out distinct consecutive seqs', async () => {
        const operation = await store.operations.create({ kind: 'attach', deadlineAt });
        const opened = [];
        for (let i = 0; i < 6; i++) opened.push(await store.operations.startStep(operation.id, `open-${i}`, 'do'));
        const seqs = await Promise.all([
          ...opened.map((seq, i) => store.operations.advanceStep(operation.id, seq, { state: 'done' }, { name: `next-${i}`, phase: 'do' })),
          ...Array.from({ length: 6 }, (_, i) => store.operations.startStep(operation.id, `start-${i}`, 'do')),
        ]);
        expect([...seqs].sort((x, y) => x - y)).toEqual(Array.from({ length: 12 }, (_, i) => i + 7));
        const journal = (await store.operations.require(operation.id)).steps;
        expect(journal.map((s) => s.seq)).toEqual(Array.from({ length: 18 }, (_, i) => i + 1));
        expect(journal.slice(0, 6).every((s) => s.state === 'done')).toBe(true);
        expect(journal.slice(6).every((s) => s.state === 'running')).toBe(true);
      });

      it('advanceStep inside a transaction rolls back with it', async () => {
        const operation = await store.operations.create({ kind: 'attach', deadlineAt });
        const seq = await store.operations.startStep(operation.id, 'reserve', 'do');
        await expect(
          store.transaction(async (tx) => {
            expect(await tx.operations.advanceStep(operation.id, seq, { state: 'done' }, { name: 'initialize', phase: 'do' })).toBe(2);
            throw new Error('the caller fails after the boundary');
          }),
        ).rejects.toThrow('the caller fails after the boundary');
        expect((await store.operations.require(operation.id)).steps.map((s) => [s.seq, s.name, s.state])).toEqual([[1, 'reserve', 'running']]);
      });

      it('setAttachment and setOwner update a running operation', async () => {
        const operation = await store.operations.create({ kind: 'attach', owner: '1@a', deadlineAt });
        const attachmentId = '7a0c9f5e-1b2d-4c3e-8f4a-5b6c7d8e9f00';
        await store.operations.setAttachment(operation.id, attachmentId);
        await store.operations.setOwner(operation.id, '2@b', '1@a');
        expect(await store.operations.require(operation.id)).toMatchObject({ attachmentId, owner: '2@b' });
        // A second recoverer expecting the old owner loses the race.
        await rejection(store.operations.setOwner(operation.id, '9@z', '1@a'), 'CONFLICT');
        await rejection(store.operations.setAttachment('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', attachmentId), 'NOT_FOUND');
        await rejection(store.operations.setOwner('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', 'x', null), 'NOT_FOUND');
        await store.operations.finish(operation.id, { state: 'succeeded' });
        await rejection(store.operations.setOwner(operation.id, '3@c', '2@b'), 'CONFLICT');
      });

      it('finish is a compare-and-swap from running', async () => {
        const operation = await store.operations.create({ kind: 'attach', deadlineAt });
        await store.operations.startStep(operation.id, 'reserve', 'do');
        const finished = await store.operations.finish(operation.id, {
          state: 'rolled_back',
          error: { code: 'TIMEOUT', message: 'the device did not appear' },
          result: { undone: ['reserve'] },
        });
        expect(finished).toMatchObject({
          state: 'rolled_back',
          error: { code: 'TIMEOUT', message: 'the device did not appear' },
          result: { undone: ['reserve'] },
        });
        expect(finished.endedAt).not.toBeNull();
        expect(finished.steps).toHaveLength(1);
        expect(await store.operations.require(operation.id)).toEqual(finished);
        const error = await rejection(store.operations.finish(operation.id, { state: 'succeeded' }), 'CONFLICT');
        expect(error.details).toMatchObject({ actual: 'rolled_back', expected: ['running'] });
        expect((await store.operations.require(operation.id)).state).toBe('rolled_back');
        await rejection(store.operations.finish('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', { state: 'succeeded' }), 'NOT_FOUND');
      });
    });

    describe('operations.prune', () => {
      const deadlineAt = '2030-01-01T00:00:00.000Z';
      const later = '2099-01-01T00:00:00Z';

      it('deletes finished operations that ended before the cut, oldest first, with their journal; never a running one', async () => {
        const a = await store.operations.create({ kind: 'attach', idempotencyKey: 'key-a', deadlineAt });
        await store.operations.startStep(a.id, 'reserve', 'do');
        await store.operations.finish(a.id, { state: 'rolled_back', error: { code: 'TIMEOUT', message: 'late' } });
        const b = await store.operations.create({ kind: 'detach', deadlineAt });
        await store.operations.finish(b.id, { state: 'succeeded' });
        const running = await store.operations.create({ kind: 'attach', deadlineAt });
        const c = await store.operations.create({ kind: 'attach', deadlineAt });
        await store.operations.finish(c.id, { state: 'failed' });

        // The cut at c's start: a and b ended before it, c after.
        expect(await store.operations.prune({ endedBefore: c.startedAt, dryRun: true })).toBe(2);
        expect(await store.operations.list()).toHaveLength(4);
        expect(await store.operations.prune({ endedBefore: later, limit: 1 })).toBe(1);
        expect(await store.operations.get(a.id)).toBeUndefined();
        // The key went with it: a retry with it starts a new operation.
        expect(await store.operations.findByIdempotencyKey('key-a')).toBeUndefined();
        await store.operations.create({ kind: 'attach', idempotencyKey: 'key-a', deadlineAt });

        expect(await store.operations.prune({ endedBefore: later })).toBe(2);
        const left = await store.operations.list();
        expect(left.map((o) => o.state).sort()).toEqual(['running', 'running']);
        expect(left.map((o) => o.id)).toContain(running.id);
        expect(await store.operations.prune({ endedBefore: later })).toBe(0);
      });

      it('keeps an operation whose attachment still exists (its journal may name whom the volume was exported to)', async () => {
        const { volume, server } = await attachmentFixture();
        const attachment = await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: server.hostId, mode: 'rw' });
        const attach = await store.operations.create({ kind: 'attach', volumeId: volume.id, deadlineAt });
        await store.operations.setAttachment(attach.id, attachment.id);
        await store.operations.finish(attach.id, { state: 'failed' });
        expect(await store.operations.prune({ endedBefore: later })).toBe(0);
        await store.attachments.delete(attachment.id);
        expect(await store.operations.prune({ endedBefore: later })).toBe(1);
      });

      it('keeps an older berth\'s attach that named no attachment while one of its volume and server exists (how reconcile knows berth made it)', async () => {
        const { volume, server } = await attachmentFixture();
        const attach = await store.operations.create({ kind: 'attach', volumeId: volume.id, serverId: server.id, deadlineAt });
        await store.operations.finish(attach.id, { state: 'failed' });
        const detach = await store.operations.create({ kind: 'detach', volumeId: volume.id, serverId: server.id, deadlineAt });
        await store.operations.finish(detach.id, { state: 'succeeded' });
        const attachment = await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: server.hostId, mode: 'rw' });
        // The detach (no attachment named) goes; the attach stays while the attachment does.
        expect(await store.operations.prune({ endedBefore: later })).toBe(1);
        expect((await store.operations.list()).map((o) => o.id)).toEqual([attach.id]);
        await store.attachments.delete(attachment.id);
        expect(await store.operations.prune({ endedBefore: later })).toBe(1);
      });

      it('takes the cut in any ISO-8601 form and refuses a bad filter with VALIDATION, deleting nothing', async () => {
        const a = await store.operations.create({ kind: 'attach', deadlineAt });
        await store.operations.finish(a.id, { state: 'succeeded' });
        expect(await store.operations.prune({ endedBefore: '2000-01-01T00:00:00Z' })).toBe(0);
        expect(await store.operations.prune({ endedBefore: '2099-01-01T02:00:00+02:00', dryRun: true })).toBe(1);
        await rejection(store.operations.prune({ endedBefore: 'yesterday' }), 'VALIDATION');
        await rejection(store.operations.prune({ endedBefore: later, limit: 0 }), 'VALIDATION');
        await rejection(store.operations.prune({ endedBefore: later, limit: 1.5 }), 'VALIDATION');
        expect(await store.operations.list()).toHaveLength(1);
      });
    });

    describe('devices (the ledger of connected devices)', () => {
      const hostId = '0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5';
      const volumeId = '1d2e3f4a-5b6c-4d7e-9f80-91a2b3c4d5e6';
      const connectionInfo: ConnectionInfo = {
        driver_volume_type: 'iscsi',
        data: { target_iqn: 'iqn.2010-10.org.openstack:v', target_lun: 1, auth_password: 'sekrit', vendor_key: 'kept' },
      };
      const device = { path: '/dev/loop3', type: 'block' as const, identity: { kind: 'loop', rdev: '7:3', inode: 42 } };

      it('puts, gets and lists a record without secrets; a second put replaces it in place', async () => {
        expect(await store.devices.get(hostId, volumeId)).toBeUndefined();
        const first = await store.devices.put({ hostId, volumeId, transport: 'loop', connectionInfo, device, operationId: null, hostRoot: '/srv/simhost' });
        expect(first).toMatchObject({ hostId, volumeId, transport: 'loop', device, operationId: null, hostRoot: '/srv/simhost' });
        expect(await store.devices.get(hostId, volumeId)).toEqual(first);
        expect(first.connectionInfo.data).toEqual({ target_iqn: 'iqn.2010-10.org.openstack:v', target_lun: 1, vendor_key: 'kept' });
        expect(JSON.stringify(await store.devices.list())).not.toContain('sekrit');
        const moved = { ...device, path: '/dev/loop5', identity: { kind: 'loop', rdev: '7:5', inode: 42 } };
        const second = await store.devices.put({ hostId, volumeId, transport: 'loop', connectionInfo, device: moved });
        expect(second.createdAt).toBe(first.createdAt);
        // Where it was connected is replaced with the rest (a record put without a root: unknown).
        expect(second.hostRoot).toBeNull();
        expect(await store.devices.list({ hostId })).toEqual([second]);
        expect(await store.devices.list({ volumeId: hostId })).toEqual([]);
      });

      it('delete removes the record and succeeds when it is already gone; an invalid record is VALIDATION', async () => {
        await store.devices.put({ hostId, volumeId, transport: 'loop', connectionInfo, device });
        await store.devices.delete(hostId, volumeId);
        await store.devices.delete(hostId, volumeId);
        expect(await store.devices.list()).toEqual([]);
        await rejection(store.devices.put({ hostId: 'not-a-uuid', volumeId, transport: 'loop', connectionInfo, device }), 'VALIDATION');
      });

      it('a put inside a rolled-back transaction leaves nothing', async () => {
        await store
          .transaction(async (tx) => {
            await tx.devices.put({ hostId, volumeId, transport: 'loop', connectionInfo, device });
            throw new Error('roll back');
          })
          .catch(() => undefined);
        expect(await store.devices.get(hostId, volumeId)).toBeUndefined();
      });
    });

    describe('locks (leases)', () => {
      const later = '2030-01-01T00:00:00.000Z';

      it('one owner at a time: the second gets the holder back; release lets the next one in', async () => {
        expect(await store.locks.tryAcquire('device:h:v', 'a', later)).toBeUndefined();
        expect(await store.locks.tryAcquire('device:h:v', 'b', later)).toMatchObject({ owner: 'a', expiresAt: later });
        expect(await store.locks.holder('device:h:v')).toMatchObject({ owner: 'a' });
        // Releasing someone else's lease does nothing.
        await store.locks.release('device:h:v', 'b');
        expect(await store.locks.holder('device:h:v')).toMatchObject({ owner: 'a' });
        await store.locks.release('device:h:v', 'a');
        expect(await store.locks.holder('device:h:v')).toBeUndefined();
        expect(await store.locks.tryAcquire('device:h:v', 'b', later)).toBeUndefined();
        // Other keys are independent.
        expect(await store.locks.tryAcquire('device:h:w', 'c', later)).toBeUndefined();
      });

      it('takeOver is a compare-and-swap on the owner', async () => {
        await store.locks.tryAcquire('k', 'dead', later);
        expect(await store.locks.takeOver('k', 'x', 'dead', later)).toBe(true);
        expect(await store.locks.takeOver('k', 'y', 'dead', later)).toBe(false);
        expect((await store.locks.holder('k'))?.owner).toBe('x');
        expect(await store.locks.takeOver('missing', 'y', 'dead', later)).toBe(false);
      });

      it('of ten concurrent callers exactly one gets the lease', async () => {
        const results = await Promise.all(Array.from({ length: 10 }, (_, i) => store.locks.tryAcquire('race', `owner-${i}`, later)));
        expect(results.filter((r) => r === undefined)).toHaveLength(1);
      });

      it('refuses an empty key or owner with VALIDATION', async () => {
        await rejection(store.locks.tryAcquire('', 'a', later), 'VALIDATION');
        await rejection(store.locks.tryAcquire('k', '', later), 'VALIDATION');
      });
    });

    describe('transaction', () => {
      it('commits and returns what fn returns', async () => {
        const result = await store.transaction(async (tx) => {
          const volume = await tx.volumes.create(newVolume());
          await tx.volumes.transition(volume.id, ['available'], 'reserved');
          return volume.id;
        });
        expect((await store.volumes.require(result)).status).toBe('reserved');
      });

      it('rolls back everything when fn throws, and rethrows the same error', async () => {
        const boom = new Error('boom');
        const volume = await store.volumes.create(newVolume());
        let thrown: unknown;
        try {
          await store.transaction(async (tx) => {
            await tx.volumes.transition(volume.id, ['available'], 'reserved');
            const host = await tx.hosts.create({ name: 'node-a' });
            const server = await tx.servers.create({ name: 'vm-1', projectId: 'project-a', hostId: host.id });
            await tx.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: host.id, mode: 'rw' });
            const operation = await tx.operations.create({ kind: 'attach', deadlineAt: '2030-01-01T00:00:00.000Z' });
            await tx.operations.startStep(operation.id, 'reserve', 'do');
            throw boom;
          });
        } catch (error) {
          thrown = error;
        }
        expect(thrown).toBe(boom);
        expect(await store.volumes.require(volume.id)).toEqual(volume);
        expect(await store.hosts.list()).toEqual([]);
        expect(await store.servers.list()).toEqual([]);
        expect(await store.attachments.list()).toEqual([]);
        expect(await store.operations.list()).toEqual([]);
      });

      it('a nested transaction joins the outer one and rolls back with it', async () => {
        await expect(
          store.transaction(async (tx) => {
            const inner = await tx.transaction(async (nested) => nested.volumes.create(newVolume({ name: 'inner' })));
            expect(await tx.volumes.get(inner.id)).toBeDefined();
            throw new Error('outer fails');
          }),
        ).rejects.toThrow('outer fails');
        expect(await store.volumes.list()).toEqual([]);
      });

      it('deferDurability: writes made in it commit at once, as any other, and an error passes through', async () => {
        expect(store.deferDurability).toBeTypeOf('function');
        const defer = <T>(fn: () => Promise<T>): Promise<T> => withDeferredDurability(store, fn);
        const volume = await defer(() => store.volumes.create(newVolume()));
        // Committed at once: seen outside the callback, in and after a transaction begun in it.
        expect(await store.volumes.require(volume.id)).toEqual(volume);
        await defer(() => store.transaction((tx) => tx.volumes.transition(volume.id, ['available'], 'reserved')));
        expect((await store.volumes.require(volume.id)).status).toBe('reserved');
        // A failing transaction in it rolls back as usual.
        await expect(
          defer(() =>
            store.transaction(async (tx) => {
              await tx.volumes.transition(volume.id, ['reserved'], 'attaching');
              throw new Error('deferred boom');
            }),
          ),
        ).rejects.toThrow('deferred boom');
        expect((await store.volumes.require(volume.id)).status).toBe('reserved');
        // Inside an open transaction it joins that transaction (and rolls back with it).
        await expect(
          store.transaction(async (tx) => {
            await withDeferredDurability(tx, () => tx.hosts.create({ name: 'node-deferred' }));
            throw new Error('outer fails');
          }),
        ).rejects.toThrow('outer fails');
        expect(await store.hosts.list()).toEqual([]);
        // Writes after it are durable again, and still work.
        const after = await store.volumes.create(newVolume({ name: 'after' }));
        expect(await store.volumes.require(after.id)).toEqual(after);
      });

      it('a CONFLICT caught inside fn does not abort the transaction', async () => {
        const volume = await store.volumes.create(newVolume());
        await store.volumes.transition(volume.id, ['available'], 'reserved');
        const created = await store.transaction(async (tx) => {
          await rejection(tx.volumes.transition(volume.id, ['available'], 'reserved'), 'CONFLICT');
          return tx.volumes.create(newVolume({ name: 'data2' }));
        });
        expect(await store.volumes.get(created.id)).toEqual(created);
      });

      it('the outer store used inside fn joins the transaction instead of deadlocking', async () => {
        await expect(
          store.transaction(async () => {
            await store.volumes.create(newVolume());
            await store.transaction(async (tx) => tx.hosts.create({ name: 'node-a' }));
            expect(await store.volumes.findByName('project-a', 'data1')).toBeDefined();
            throw new Error('undo it all');
          }),
        ).rejects.toThrow('undo it all');
        expect(await store.volumes.list()).toEqual([]);
        expect(await store.hosts.list()).toEqual([]);
      });

      it('transactions from concurrent callers run one after the other', async () => {
        const volume = await store.volumes.create(newVolume());
        // Read-modify-write in each transaction: without isolation two would read `available`.
        const outcomes = await Promise.allSettled(
          Array.from({ length: 5 }, () =>
            store.transaction(async (tx) => {
              const current = await tx.volumes.require(volume.id);
              if (current.status !== 'available') throw new Error('taken');
              return tx.volumes.transition(volume.id, ['available'], 'reserved');
            }),
          ),
        );
        expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
      });
    });
  });
}
