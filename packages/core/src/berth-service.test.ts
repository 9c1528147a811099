import 'reflect-metadata';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import type { HostServices } from '@berth/host';
import { BerthServiceImpl } from './berth-service.js';
import { DriverCatalog } from './catalog.js';
import { resolveConfig } from './config.js';
import type { ConnectionInfo, Connector, Device } from './connection.js';
import type { Consumer } from './contracts/consumer.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import type { VolumeBackend } from './contracts/volume-backend.js';
import { BerthError } from './errors.js';
import { silentLogger } from './logger.js';
import { createMemoryStore } from './memory-store.js';
import { reserveAttachmentRecord } from './pipeline/attach.js';
import { transitionAttachment } from './pipeline/context.js';
import { definePlugin, PLUGIN_API_VERSION } from './plugin.js';
import type { Operation, Volume } from './model.js';
import type { Store } from './store.js';
import { stubHostFs } from './test-support.js';

// The service, its operation runner, the attach/detach pipelines and recovery, on the in-memory
// store with drivers that keep their state in memory too: what the pipelines decide, in
// milliseconds (the real devices and databases are `@berth/runtime`'s e2e suites).

const HOSTNAME = 'unit-host';

/** A backend that remembers which volumes it exports, and a transport that "connects" them. */
function world(
  options: {
    connectFails?: boolean;
    /** The operation's deadline (default 5 s). */
    operationTimeoutMs?: number;
    /** The host's unpublish fails after this many ms as a silent agent's does (TIMEOUT naming the host). */
    unpublishSilentMs?: number;
    /** The transport answers every connect with this path (a plugin handing out a device it did not make). */
    connectPath?: { path?: string };
    /** An unforced disconnect refuses without touching anything (a holder found first). */
    disconnectHeld?: boolean;
    onConnect?: () => void;
    guestHolds?: boolean;
    guestUnplugFails?: boolean;
    /** The guest's monitor cannot be reached: publish fails having touched nothing, and so does unpublish. */
    guestUnreachable?: boolean;
    /** The guest refuses the hot-plug (publish fails; unpublish works). */
    guestPlugFails?: boolean;
    /** Called once the backend exported a volume, before it answers. */
    afterExport?: () => Promise<void>;
    /** Called before the backend removes a volume's export, with the connector it is removed for. */
    beforeUnexport?: (connector: Connector) => Promise<void>;
    /** Called when the transport is asked for the host's connector properties. */
    beforeConnector?: () => Promise<void>;
    /** The backend's delete fails: having removed nothing (`untouched`), or partway. */
    deleteFails?: 'untouched' | 'partway';
    /** The transport's listing of its devices fails. */
    listingFails?: boolean;
    /** The transport's upkeep (none without it). */
    transportUpkeep?: (signal: AbortSignal) => Promise<void>;
  } = {},
) {
  const exported = new Set<string>();
  const connected = new Map<string, Device>();
  const published = new Map<string, string>();
  const backend: VolumeBackend = {
    name: 'mem',
    create: async (volume) => ({ providerLocation: `mem:${volume.id}` }),
    delete: async () => {
      if (options.deleteFails === 'untouched') throw new BerthError('PERMISSION_DENIED', 'read-only file system', { details: { untouched: true } });
      if (options.deleteFails === 'partway') throw new BerthError('BACKEND_ERROR', 'the target went, the logical volume stayed');
    },
    extend: async () => undefined,
    initializeConnection: async (volume): Promise<ConnectionInfo> => {
      exported.add(volume.id);
      await options.afterExport?.();
      return { driver_volume_type: 'mem', data: { volume_id: volume.id, device_path: `/dev/mem-${volume.id}` } };
    },
    terminateConnection: async (volume, connector) => {
      await options.beforeUnexport?.(connector);
      exported.delete(volume.id);
    },
    check: async () => ({ ok: true, summary: 'mem' }),
  };
  const transport: TransportDriver = {
    name: 'mem',
    protocols: ['mem'],
    connectorProperties: async () => {
      await options.beforeConnector?.();
      return { initiator: 'iqn.2026-01.test:unit' };
    },
    connect: async (connection) => {
      options.onConnect?.();
      if (options.connectFails) throw new BerthError('DRIVER_ERROR', 'the device never appeared');
      if (options.connectPath?.path) return { path: options.connectPath.path, type: 'block' };
      const path = String(connection.data.device_path);
      const device: Device = { path, type: 'block', identity: { kind: 'mem', path } };
      connected.set(path, device);
      return device;
    },
    disconnect: async (connection, _device, disconnectOptions) => {
      if (options.disconnectHeld && disconnectOptions.force !== true) {
        throw new BerthError('CONFLICT', 'the device is held open', { details: { untouched: true } });
      }
      connected.delete(String(connection.data.device_path));
    },
    // Listed, so reconcile can check a recorded device before it plugs it into a guest again.
    connected: async () => {
      if (options.listingFails) throw new BerthError('DRIVER_ERROR', 'the device table cannot be read');
      return [...connected.values()].map((device) => ({ device, source: { device_path: device.path } }));
    },
    sourceKeys: ['device_path'],
    ...(options.transportUpkeep ? { upkeep: options.transportUpkeep } : {}),
    check: async () => ({ ok: true, summary: 'mem' }),
  };
  const consumer: Consumer = {
    name: 'mem',
    publish: async (_server, device, attachment) => {
      published.set(attachment.id, device.path);
      return { path: `/dev/berth/${attachment.id}` };
    },
    unpublish: async (_server, attachment) => {
      if (options.unpublishSilentMs !== undefined) {
        await new Promise((resolve) => setTimeout(resolve, options.unpublishSilentMs));
        throw new BerthError('TIMEOUT', "host h1's agent did not finish step unpublish before the operation's deadline (last heard from 9 s ago)", {
          hint: 'check that `berth agent` runs on h1; the step may have run there: … `berth detach <volume> --force`',
        });
      }
      published.delete(attachment.id);
    },
  };
  // A guest consumer as `@berth/consumer-qemu` registers it: it reads the server's hypervisor, and
  // a guest that does not let go fails the unplug with `guestHoldsDevice`, leaving the host alone.
  const guestDisks = new Map<string, string>();
  const guest: Consumer = {
    name: 'qemu',
    publish: async (server, _device, attachment) => {
      if (server.hypervisor?.type !== 'qemu') throw new BerthError('CONFIG', 'not a qemu server');
      if (options.guestUnreachable) throw new BerthError('TIMEOUT', `cannot talk to the QEMU of server ${server.name}: no QMP greeting`, { details: { untouched: true } });
      if (options.guestPlugFails) throw new BerthError('DRIVER_ERROR', `QMP device_add failed for server ${server.name}`);
      guestDisks.set(attachment.volumeId, server.hypervisor.qmp);
      return { path: `/dev/berth/${attachment.volumeId}`, guestDevice: '/dev/vdb', serial: attachment.volumeId };
    },
    unpublish: async (server, attachment) => {
      if (options.guestUnreachable) throw new BerthError('TIMEOUT', `cannot talk to the QEMU of server ${server.name}: no QMP greeting`, { details: { untouched: true } });
      if (options.guestHolds && guestDisks.has(attachment.volumeId)) {
        throw new BerthError('TIMEOUT', `the guest of server ${server.name} did not release the disk`, { details: { guestHoldsDevice: true } });
      }
      if (options.guestUnplugFails) throw new BerthError('DRIVER_ERROR', `on host h2: QMP device_del failed for server ${server.name}`);
      guestDisks.delete(attachment.volumeId);
    },
    // What the guest has, by serial (a disk plugged by hand is put in the map by a test).
    guestDisks: async () => [...guestDisks.keys()].map((serial) => ({ serial, id: `/machine/peripheral/d-${serial}` })),
    unplugGuestDisk: async (_server, disk) => void guestDisks.delete(disk.serial),
  };
  const catalog = new DriverCatalog({ fs: stubHostFs() } as unknown as HostServices, '/tmp', silentLogger);
  catalog.add({
    plugin: definePlugin({
      name: 'mem',
      apiVersion: PLUGIN_API_VERSION,
      register: (r) => {
        r.backend('mem', () => backend);
        r.transport('mem', () => transport);
        r.consumer('mem', () => consumer);
        r.consumer('qemu', () => guest);
      },
    }),
    packageName: 'mem',
    version: undefined,
    options: undefined,
  });
  const store = createMemoryStore();
  const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: options.operationTimeoutMs ?? 5_000, undoTimeoutMs: 5_000 }, {});
  const identity = { hostname: HOSTNAME, ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' };
  const service = new BerthServiceImpl(config, store, catalog, identity, silentLogger);
  /** Another berth process on this host and store (its own in-process locks). */
  const otherProcess = (): BerthServiceImpl => new BerthServiceImpl(config, store, catalog, identity, silentLogger);
  return { service, otherProcess, store, exported, connected, published, guestDisks };
}

/**
 * Detach 'db' (its disconnect refused untouched: `disconnectHeld`) with the rollback's settle
 * meeting the database down once: the operation is left running, rolled back but not settled.
 */
async function detachLeftRolledBackRunning(service: BerthServiceImpl, store: Store): Promise<Operation> {
  const finish = store.operations.finish.bind(store.operations);
  let down = true;
  store.operations.finish = async (id, settled) => {
    if (down && settled.state === 'rolled_back') {
      down = false;
      throw new BerthError('UNAVAILABLE', 'cannot reach the berth database', { details: { outage: true } });
    }
    return finish(id, settled);
  };
  expect(BerthError.is(await service.detach({ volume: 'db' }).catch((e: unknown) => e))).toBe(true);
  const operation = (await store.operations.list({ kind: 'detach' })).at(-1)!;
  expect(operation.state).toBe('running');
  return operation;
}

/** A gate a driver call waits at once armed: `reached` once one is there, `open()` lets it through. */
function gate() {
  let open!: () => void;
  let entered!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  const reached = new Promise<void>((resolve) => (entered = resolve));
  let armed = false;
  return {
    /** The driver's side: the first call after `arm()` waits, others pass. */
    async pass(): Promise<void> {
      if (!armed) return;
      armed = false;
      entered();
      await opened;
    },
    arm: () => void (armed = true),
    reached,
    open: () => open(),
  };
}

/** A multiattach volume `shared` attached to server vm-1, with server vm-2 beside it (same host). */
async function sharedOnVm1(service: BerthServiceImpl): Promise<Volume> {
  const volume = await service.createVolume({ name: 'shared', sizeBytes: 2 ** 30, multiattach: true });
  await service.createServer({ name: 'vm-1' });
  await service.createServer({ name: 'vm-2' });
  await service.attach({ volume: 'shared', server: 'vm-1' });
  return volume;
}

/** How many times a process found an export's lease held by another (it waits for it). */
function exportLeaseWaits(store: Store): () => number {
  let waits = 0;
  const tryAcquire = store.locks.tryAcquire.bind(store.locks);
  store.locks.tryAcquire = async (key, owner, expiresAt) => {
    const holder = await tryAcquire(key, owner, expiresAt);
    if (holder !== undefined && key.startsWith('export:')) waits += 1;
    return holder;
  };
  return () => waits;
}

/** Until `done` settled or `waiting()` is true (the promise's own outcome is left to the caller). */
async function settledOrWaiting(done: Promise<unknown>, waiting: () => boolean): Promise<void> {
  let settled = false;
  void done.then(
    () => (settled = true),
    () => (settled = true),
  );
  await vi.waitFor(
    () => {
      if (!settled && !waiting()) throw new Error('still running, not waiting');
    },
    { timeout: 5_000, interval: 2 },
  );
}

/** Until the operation of `kind` on `volumeId` has journalled `step` running (or further). */
async function stepBegun(store: Store, volumeId: string, kind: 'attach' | 'detach', step: string): Promise<void> {
  await vi.waitFor(
    async () => {
      const operations = (await store.operations.list({ volumeId })).filter((o) => o.kind === kind);
      if (!operations.some((o) => o.steps.some((s) => s.name === step))) throw new Error(`no ${kind} has begun ${step}`);
    },
    { timeout: 5_000, interval: 5 },
  );
}

const stepsOf = async (store: Store, id: string): Promise<string[]> =>
  (await store.operations.require(id)).steps.map((s) => `${s.name}:${s.phase}:${s.state}`);

describe('recovery of a dead process\'s operation', () => {
  it('names the process that stopped, not the one recovering it (the owner is written over before the undos)', async () => {
    const { service, store } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const server = await service.createServer({ name: 'web' });
    // A berth on this host that died after its reserve: pid 999999999 runs nowhere.
    const dead = `999999999@${HOSTNAME}#1`;
    const op = await store.operations.create({ kind: 'attach', volumeId: volume.id, serverId: server.id, hostId: server.hostId, owner: dead, deadlineAt: new Date(Date.now() + 60_000).toISOString() });
    await reserveAttachmentRecord(store, volume.id, server, 'rw', op.id);
    await store.operations.endStep(op.id, await store.operations.startStep(op.id, 'reserve', 'do'), { state: 'done' });
    expect(await service.recover()).toEqual([expect.objectContaining({ operationId: op.id, action: 'rolled_back' })]);
    const after = await store.operations.require(op.id);
    // It named the recovering process before (the owner CAS had written it over the dead one).
    expect(after.error?.message).toBe(`the process running this attach (${dead}) stopped before it finished`);
    expect(after.owner).not.toBe(dead);
  });
});

describe('recovery of a detach stopped in its guest unplug', () => {
  // A berth killed while a guest's unplug was under way (or between its TIMEOUT and the undo): the
  // journal cannot say whether the guest was asked. A guest that let go is plugged again (rolled
  // back to attached); one that still has the disk may have the request pending — a paused guest
  // drops it at its resume — so the detach ends error_detaching, never attached over it.
  it.each([
    ['still has the disk', true],
    ['has let go of the disk', false],
  ] as const)('the guest %s', async (_what, holds) => {
    const { service, store, guestDisks, connected } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const server = await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    const attachment = (await service.attach({ volume: 'db', server: 'vm-1' })).attachment!;
    const dead = `999999999@${HOSTNAME}#1`;
    const op = await store.operations.create({ kind: 'detach', volumeId: volume.id, serverId: server.id, hostId: server.hostId, owner: dead, deadlineAt: new Date(Date.now() + 60_000).toISOString() });
    await store.operations.setAttachment(op.id, attachment.id);
    await store.attachments.transition(attachment.id, ['attached'], 'detaching');
    await store.operations.endStep(op.id, await store.operations.startStep(op.id, 'begin_detaching', 'do'), { state: 'done', data: { from: 'attached' } });
    await store.operations.endStep(op.id, await store.operations.startStep(op.id, 'dispatch', 'do'), { state: 'done', data: { hostId: server.hostId, agent: false } });
    await store.operations.startStep(op.id, 'unpublish', 'do');
    if (!holds) guestDisks.delete(volume.id);

    const [outcome] = await service.recover();
    const after = await store.attachments.require(attachment.id);
    expect(connected.size).toBe(1);
    expect(guestDisks.has(volume.id)).toBe(true);
    if (!holds) {
      // Let go: plugged again, attached as before.
      expect(outcome).toMatchObject({ operationId: op.id, action: 'rolled_back' });
      expect(after.status).toBe('attached');
      return;
    }
    expect(outcome).toMatchObject({ operationId: op.id, action: 'failed' });
    expect(after.status).toBe('error_detaching');
    expect(after.error).toMatch(/^the detach is waiting for the guest: the berth that detached volume db stopped while it had the guest of server vm-1 release the disk, and the guest still has it/);
    const settled = await store.operations.require(op.id);
    expect(settled.error?.hint).toBe('once the guest let go, `berth detach db` (or `berth reconcile`) finishes it');
    // The guest lets go: a plain detach finishes.
    guestDisks.clear();
    await service.detach({ volume: 'db' });
    expect(connected.size).toBe(0);
    expect((await store.volumes.require(volume.id)).status).toBe('available');
  });
});

describe('names', () => {
  it('refuses a new volume or server named like an id (it could then be reached only by its own id); stored ones still load', async () => {
    const { service, store } = world();
    const first = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const refused = await service.createVolume({ name: first.id, sizeBytes: 2 ** 30 }).catch((e: unknown) => e);
    expect(BerthError.is(refused) && refused.code).toBe('VALIDATION');
    expect(BerthError.is(refused) && refused.message).toMatch(/must not have the form of an id/);
    const server = await service.createServer({ name: crypto.randomUUID() }).catch((e: unknown) => e);
    expect(BerthError.is(server) && server.code).toBe('VALIDATION');
    expect(await store.volumes.list()).toHaveLength(1);
    // A name that merely contains hex and dashes is a name.
    await service.createVolume({ name: 'db-0123-abcd', sizeBytes: 2 ** 30 });
  });
});

describe('attach and detach on the in-memory store', () => {
  it('attaches (every step journalled, the device recorded and published) and detaches back to available', async () => {
    const { service, store, exported, connected, published } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const attached = await service.attach({ volume: 'db' });
    expect(attached.operation.state).toBe('succeeded');
    expect(attached.volume.status).toBe('in-use');
    expect(attached.attachment).toMatchObject({ status: 'attached', transport: 'mem', device: { path: `/dev/mem-${volume.id}` } });
    expect(await stepsOf(store, attached.operation.id)).toEqual(
      ['reserve', 'dispatch', 'connector', 'initialize', 'connect', 'publish', 'complete'].map((s) => `${s}:do:done`),
    );
    expect(exported.has(volume.id)).toBe(true);
    expect(connected.size).toBe(1);
    expect(published.size).toBe(1);
    expect(await store.devices.list({ volumeId: volume.id })).toHaveLength(1);

    const detached = await service.detach({ volume: 'db' });
    expect(detached.operation.state).toBe('succeeded');
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect(await store.attachments.list({ volumeId: volume.id })).toEqual([]);
    expect(await store.devices.list({ volumeId: volume.id })).toEqual([]);
    expect(exported.size + connected.size + published.size).toBe(0);
  });

  it('undoes every step, the failing one too, when connect fails: rolled back, nothing left', async () => {
    const { service, store, exported, connected } = world({ connectFails: true });
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const error = await service.attach({ volume: 'db' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
    const [operation] = await store.operations.list();
    expect(operation?.state).toBe('rolled_back');
    expect(await stepsOf(store, operation!.id)).toEqual([
      'reserve:do:done',
      'dispatch:do:done',
      'connector:do:done',
      'initialize:do:done',
      'connect:do:failed',
      'connect:undo:done',
      'initialize:undo:done',
      'reserve:undo:done',
    ]);
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect(await store.attachments.list()).toEqual([]);
    expect(exported.size + connected.size).toBe(0);
  });

  it('a step whose store write finds the database locked waits it out (retried within the deadline) instead of failing', async () => {
    const { service, store } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    // Another process holds the database: the next transactions (reserve, then delete_attachment) say "locked" twice each.
    const transaction = store.transaction.bind(store);
    let busy = 0;
    const locked = () => new BerthError('TIMEOUT', 'the berth database stayed locked by another process', { details: { reason: 'database-locked', retryable: true } });
    (store as { transaction: Store['transaction'] }).transaction = async (fn) => {
      if (busy > 0) {
        busy -= 1;
        throw locked();
      }
      return transaction(fn);
    };
    busy = 2;
    const attached = await service.attach({ volume: 'db' });
    expect(attached.operation.state).toBe('succeeded');
    busy = 2;
    const detached = await service.detach({ volume: 'db' });
    expect(detached.operation.state).toBe('succeeded');
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect(busy).toBe(0);
  });

  it('the database fails under the rollback: the attach stays running (not failed, volume not left reserved) and recovery finishes the undos once it is back', async () => {
    // What a fleet fault run found (2026-12-05): PostgreSQL restarting under the undos settled the
    // attach `failed` with its attachment still `reserved` — a volume no command could attach or detach.
    let down = false;
    const { service, store, exported } = world({ connectFails: true, onConnect: () => void (down = true) });
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const transaction = store.transaction.bind(store);
    const outage = () => new BerthError('UNAVAILABLE', 'cannot reach the berth database', { details: { outage: true } });
    (store as { transaction: Store['transaction'] }).transaction = async (fn) => {
      if (down) throw outage();
      return transaction(fn);
    };
    const error = await service.attach({ volume: 'db' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.message).toMatch(/the device never appeared \(and the database failed before the rollback could finish: cannot reach the berth database\)/);
    const [operation] = await store.operations.list();
    expect(operation?.state).toBe('running');
    // The first undo met the outage; the older ones (the reserve's among them) were left to recovery.
    expect(await stepsOf(store, operation!.id)).toEqual(['reserve:do:done', 'dispatch:do:done', 'connector:do:done', 'initialize:do:done', 'connect:do:failed', 'connect:undo:failed']);
    expect((await store.attachments.list()).map((a) => a.status)).toEqual(['attaching']);

    // Still down: recovery defers it, nothing settled.
    expect(await service.recover()).toEqual([expect.objectContaining({ operationId: operation!.id, action: 'deferred' })]);
    expect((await store.operations.require(operation!.id)).state).toBe('running');

    down = false;
    expect(await service.recover()).toEqual([expect.objectContaining({ operationId: operation!.id, action: 'rolled_back' })]);
    expect((await store.operations.require(operation!.id)).state).toBe('rolled_back');
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect(await store.attachments.list()).toEqual([]);
    expect(exported.size).toBe(0);
  });

  it('a step commit lost with its connection after it committed (reserve, begin_detaching, complete): nothing undone from memory, recovery settles it from the records', async () => {
    // The first transaction that marks step `name` done commits, then its answer is lost: what
    // PostgreSQL's connection lost while COMMIT was on its way looks like (`outcomeUnknown`).
    // Undone from the process's memory, a reserve left its attachment `reserved` (its undo never
    // learned of it), a begin_detaching left it `detaching`, and a complete undid the device of an
    // attachment recorded `attached` (a review's scratch tests, 2026-12-05).
    const loseCommitOf = (store: Store, name: string): void => {
      let lost = false;
      const transaction = store.transaction.bind(store);
      (store as { transaction: Store['transaction'] }).transaction = async (fn) => {
        const result = await transaction(fn);
        const committed = (await store.operations.list()).some((o) => o.steps.some((st) => st.name === name && st.phase === 'do' && st.state === 'done'));
        if (!lost && committed) {
          lost = true;
          throw new BerthError('UNAVAILABLE', 'cannot reach the berth database: Connection terminated unexpectedly', { details: { outage: true, outcomeUnknown: true } });
        }
        return result;
      };
    };
    const operationOf = async (store: Store, kind: string) => (await store.operations.list({ kind: kind as 'attach' })).at(-1)!;

    let w = world();
    await w.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    loseCommitOf(w.store, 'reserve');
    expect(BerthError.is(await w.service.attach({ volume: 'db' }).catch((e: unknown) => e))).toBe(true);
    expect((await operationOf(w.store, 'attach')).state).toBe('running');
    expect(await w.service.recover()).toEqual([expect.objectContaining({ action: 'rolled_back' })]);
    expect((await w.service.getVolume('db')).status).toBe('available');
    expect(await w.store.attachments.list()).toEqual([]);

    w = world();
    await w.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await w.service.attach({ volume: 'db' });
    loseCommitOf(w.store, 'begin_detaching');
    expect(BerthError.is(await w.service.detach({ volume: 'db' }).catch((e: unknown) => e))).toBe(true);
    expect((await operationOf(w.store, 'detach')).state).toBe('running');
    expect(await w.service.recover()).toEqual([expect.objectContaining({ action: 'rolled_back' })]);
    expect((await w.store.attachments.list()).map((a) => a.status)).toEqual(['attached']);
    expect((await w.service.detach({ volume: 'db' })).operation.state).toBe('succeeded');
    expect((await w.service.getVolume('db')).status).toBe('available');

    // The same for an `error_detaching` attachment: recovery puts back what begin_detaching
    // journalled it moved from, not `attached` (a second review's finding, 2026-12-05).
    w = world();
    await w.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const failed = (await w.service.attach({ volume: 'db' })).attachment!;
    await transitionAttachment(w.store, failed.id, ['attached'], 'detaching');
    await transitionAttachment(w.store, failed.id, ['detaching'], 'error_detaching');
    loseCommitOf(w.store, 'begin_detaching');
    expect(BerthError.is(await w.service.detach({ volume: 'db' }).catch((e: unknown) => e))).toBe(true);
    expect(await w.service.recover()).toEqual([expect.objectContaining({ action: 'rolled_back' })]);
    expect((await w.store.attachments.list()).map((a) => a.status)).toEqual(['error_detaching']);

    w = world();
    await w.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    loseCommitOf(w.store, 'complete');
    expect(BerthError.is(await w.service.attach({ volume: 'db' }).catch((e: unknown) => e))).toBe(true);
    expect((await operationOf(w.store, 'attach')).state).toBe('running');
    // Nothing undone: the device the attachment records is still connected.
    expect(w.connected.size).toBe(1);
    expect(await w.service.recover()).toEqual([expect.objectContaining({ action: 'completed' })]);
    expect((await w.store.attachments.list()).map((a) => a.status)).toEqual(['attached']);
    expect((await w.service.getVolume('db')).status).toBe('in-use');
    expect(w.connected.size).toBe(1);
  });

  it('a detach whose disconnect was refused and that was rolling back is rolled back by recovery, not finished with force (a held device is not let go)', async () => {
    const { service, store, connected } = world({ disconnectHeld: true });
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.attach({ volume: 'db' });
    // The rollback's last write meets the database down: the operation stays running.
    const operation = await detachLeftRolledBackRunning(service, store);
    expect(operation.steps.some((s) => s.phase === 'undo')).toBe(true);
    // Before: resumed forward with force — the held device disconnected, the attachment gone.
    expect(await service.recover()).toEqual([expect.objectContaining({ action: 'rolled_back' })]);
    expect(connected.size).toBe(1);
    expect((await store.attachments.list()).map((a) => a.status)).toEqual(['attached']);
    expect((await service.getVolume('db')).status).toBe('in-use');
  });

  it('a forced detach of an attachment that recorded no connector removes the export for the connector the attach journalled, not this process\'s bare one', async () => {
    let exportFails = true;
    let unexportFails = true;
    const removedFor: Connector[] = [];
    const { service, store } = world({
      // The export is made, then the initialize fails (before its commit); its undo cannot remove it.
      afterExport: async () => {
        if (exportFails) {
          exportFails = false;
          throw new BerthError('BACKEND_ERROR', 'the export answered late');
        }
      },
      beforeUnexport: async (connector) => {
        removedFor.push(connector);
        if (unexportFails) {
          unexportFails = false;
          throw new BerthError('BACKEND_ERROR', 'the target did not answer');
        }
      },
    });
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    expect(BerthError.is(await service.attach({ volume: 'db' }).catch((e: unknown) => e))).toBe(true);
    const [left] = await store.attachments.list({ volumeId: volume.id });
    expect([left?.status, left?.connector]).toEqual(['error_attaching', null]);
    await service.detach({ volume: 'db', force: true });
    expect(removedFor.map((c) => c.initiator)).toEqual(['iqn.2026-01.test:unit', 'iqn.2026-01.test:unit']);
    expect(await store.attachments.list()).toEqual([]);
  });

  it('a recovery whose operation a replica claims meanwhile stops at its next write instead of settling it beside that replica', async () => {
    const { service, store } = world({ disconnectHeld: true });
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.attach({ volume: 'db' });
    // A detach rolled back whose last write met the database down: left running.
    const operation = await detachLeftRolledBackRunning(service, store);
    // Once the recovery took it (its owner CAS) and read it again, another replica's claim takes it.
    const setOwner = store.operations.setOwner.bind(store.operations);
    const require = store.operations.require.bind(store.operations);
    let claimNext = false;
    store.operations.setOwner = async (id, owner, expected) => {
      await setOwner(id, owner, expected);
      claimNext = owner !== 'replica-2';
    };
    store.operations.require = async (id) => {
      const row = await require(id);
      if (claimNext && id === operation.id) {
        claimNext = false;
        await setOwner(id, 'replica-2', row.owner);
      }
      return row;
    };
    // Before: recovered unfenced, rolled back and settled though replica-2 owned it.
    expect(await service.recover()).toEqual([expect.objectContaining({ action: 'skipped' })]);
    expect(await require(operation.id)).toMatchObject({ state: 'running', owner: 'replica-2' });
  });

  it('a forced detach does not go past the database failing in its disconnect as it goes past a host step\'s failure: left running, recovery finishes it', async () => {
    const { service, store, connected } = world();
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.attach({ volume: 'db' });
    // The disconnect's write of its device record meets the database down, once.
    let down = true;
    const remove = store.devices.delete.bind(store.devices);
    store.devices.delete = async (...args) => {
      if (down) {
        down = false;
        throw new BerthError('UNAVAILABLE', 'cannot reach the berth database', { details: { outage: true } });
      }
      return remove(...args);
    };
    const error = await service.detach({ volume: 'db', force: true }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.message).toMatch(/cannot reach the berth database/);
    // Not `error_detaching` with the operation failed: running, for recovery.
    expect((await store.operations.list({ kind: 'detach' })).at(-1)?.state).toBe('running');
    expect(await service.recover()).toEqual([expect.objectContaining({ action: 'resumed' })]);
    expect((await service.getVolume('db')).status).toBe('available');
    expect(await store.attachments.list()).toEqual([]);
    expect(connected.size).toBe(0);
  });

  it('two detaches of one attachment at once: the first detaches, the second (queued on the volume lock) finds it gone and is rolled back', async () => {
    const { service, store } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.attach({ volume: 'db' });
    // Both find the attachment `attached` before either takes the lock: the second's CAS from
    // what it saw fails, and its read then says the attachment is gone.
    const [first, second] = await Promise.allSettled([service.detach({ volume: 'db' }), service.detach({ volume: 'db' })]);
    expect(first.status).toBe('fulfilled');
    expect(second.status === 'rejected' && BerthError.is(second.reason) && second.reason.code).toBe('NOT_FOUND');
    const operations = await store.operations.list({ kind: 'detach' });
    expect(operations.map((o) => o.state).sort()).toEqual(['rolled_back', 'succeeded']);
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect(await store.attachments.list()).toEqual([]);
  });

  it('a forced detach that went past a silent agent\'s unpublish and then passed its deadline says what it went past (the host), and its hint names the volume', async () => {
    const { service, store } = world({ operationTimeoutMs: 300, unpublishSilentMs: 400 });
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.attach({ volume: 'db' });
    const error = await service.detach({ volume: 'db', force: true }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    expect(BerthError.is(error) && error.message).toContain("(the forced detach had gone past: unpublish: host h1's agent did not finish step unpublish");
    expect(BerthError.is(error) && error.hint).not.toContain('<volume>');
    // The journal says the step was gone past, not merely "done".
    const [operation] = await store.operations.list({ kind: 'detach' });
    const unpublish = operation?.steps.find((s) => s.name === 'unpublish' && s.phase === 'do');
    expect(unpublish?.data).toMatchObject({ forcedPast: expect.stringContaining("unpublish: host h1's agent did not finish step unpublish") });
  });

  it('a server\'s host named like an existing host but for case is refused (CONFLICT): no second host that no agent registers for', async () => {
    const { service, store } = world();
    await service.createServer({ name: 'a', host: 'h1.example' });
    const error = await service.createServer({ name: 'b', host: 'H1.Example' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('CONFLICT');
    expect(BerthError.is(error) && error.hint).toBe('name it as it is known: --host h1.example');
    expect((await store.hosts.list()).map((h) => h.name)).not.toContain('H1.Example');
    await service.createServer({ name: 'c', host: 'h1.example' });
  });

  it('a detach naming an attachment the volume does not have is NOT_FOUND (not "not attached"), nothing touched', async () => {
    const { service, store } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.attach({ volume: 'db' });
    const error = await service.detach({ volume: 'db', attachmentId: '00000000-0000-4000-8000-000000000000' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('NOT_FOUND');
    expect(BerthError.is(error) && error.message).toBe('volume db has no attachment 00000000-0000-4000-8000-000000000000');
    expect((await store.volumes.require(volume.id)).status).toBe('in-use');
  });

  it('an attach without a server is refused (CONFLICT, nothing reserved) when the server named like this host is on another host or a guest, never attached there', async () => {
    const { service, store } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: HOSTNAME, host: 'elsewhere' });
    const error = await service.attach({ volume: 'db' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('CONFLICT');
    expect(BerthError.is(error) && error.message).toContain(`server ${HOSTNAME} in project default is on another host, not this host`);
    expect(BerthError.is(error) && error.details.reason).toBe('local-server-elsewhere');
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect(await store.attachments.list()).toEqual([]);
  });

  it('a transport that answers a connect with the device another volume uses is refused (DRIVER_ERROR), nothing recorded or published for it, the other volume untouched', async () => {
    const handOut: { path?: string } = {};
    const { service, store, connected, published } = world({ connectPath: handOut });
    const first = await service.createVolume({ name: 'v1', sizeBytes: 2 ** 30 });
    const second = await service.createVolume({ name: 'v2', sizeBytes: 2 ** 30 });
    await service.attach({ volume: 'v1' });
    handOut.path = `/dev/mem-${first.id}`;
    const error = await service.attach({ volume: 'v2' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
    expect(BerthError.is(error) && error.message).toContain(`as /dev/mem-${first.id}, which is the device of another volume on this host`);
    expect(BerthError.is(error) && error.details.reason).toBe('device-of-another-volume');
    expect((await store.volumes.require(second.id)).status).toBe('available');
    expect(await store.attachments.list({ volumeId: second.id })).toEqual([]);
    // v1 keeps its device (the undo's disconnect was not given it) and its publication.
    expect([...connected.keys()]).toEqual([`/dev/mem-${first.id}`]);
    expect(published.size).toBe(1);
    expect((await store.attachments.list({ volumeId: first.id }))[0]?.status).toBe('attached');
  });

  it('an attaching attachment is not initialized again for another initiator (the first export would stay, and outlive the attachment); the same connector again is fine', async () => {
    const { service, store } = world();
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-2' });
    const reserved = await service.reserveAttachment({ volume: 'db', server: 'vm-2' });
    const first = { host: HOSTNAME, initiator: 'iqn.2026-01.test:unit' };
    await service.initializeAttachment(reserved.attachment.id, first);
    for (const other of [{ ...first, initiator: 'iqn.2020-01.com.other:x' }, { ...first, host: 'elsewhere' }]) {
      const error = await service.initializeAttachment(reserved.attachment.id, other).catch((e: unknown) => e);
      expect(BerthError.is(error) && error.code).toBe('CONFLICT');
      expect(BerthError.is(error) && error.message).toContain(`was initialized for host ${HOSTNAME} (initiator iqn.2026-01.test:unit)`);
      expect(BerthError.is(error) && error.details.reason).toBe('connector-changed');
    }
    expect((await store.attachments.require(reserved.attachment.id)).connector).toMatchObject(first);
    // The same host and initiator again (a retried call, a new IP in the connector): initialized again.
    const again = await service.initializeAttachment(reserved.attachment.id, { ...first, ip: '127.0.0.2' });
    expect(again.attachment.status).toBe('attaching');
  });

  it('a multiattach volume: detaching one attachment while another is reserved, or being attached, ends cleanly for both (no volume wedged detaching)', async () => {
    const { service, store } = world();
    const volume = await sharedOnVm1(service);
    // Cinder's three phases: vm-2's attachment only reserved while vm-1's is detached.
    const reserved = await service.reserveAttachment({ volume: 'shared', server: 'vm-2' });
    const detached = await service.detach({ volume: 'shared', server: 'vm-1' });
    expect(detached.operation.state).toBe('succeeded');
    expect((await store.volumes.require(volume.id)).status).toBe('reserved');
    await service.initializeAttachment(reserved.attachment.id, { host: HOSTNAME, initiator: 'iqn.2026-01.test:unit' });
    expect((await store.volumes.require(volume.id)).status).toBe('attaching');
    await service.completeAttachment(reserved.attachment.id);
    expect((await store.volumes.require(volume.id)).status).toBe('in-use');

    // Now the other way: vm-1 attached again while vm-2's attachment is detached.
    const [again, gone] = await Promise.all([service.attach({ volume: 'shared', server: 'vm-1' }), service.detach({ volume: 'shared', server: 'vm-2' })]);
    expect(again.operation.state).toBe('succeeded');
    expect(gone.operation.state).toBe('succeeded');
    expect((await store.volumes.require(volume.id)).status).toBe('in-use');
    expect((await store.attachments.list({ volumeId: volume.id })).map((a) => a.status)).toEqual(['attached']);
    expect(await store.operations.list({ state: 'running' })).toEqual([]);
  });

  it('an attach on the host exports only after a detach that decided to remove the export removed it (export lease)', async () => {
    const unexport = gate();
    const connector = gate();
    const { service, otherProcess, store, exported } = world({ beforeUnexport: () => unexport.pass(), beforeConnector: () => connector.pass() });
    const waits = exportLeaseWaits(store);
    const volume = await sharedOnVm1(service);
    // Another berth process's attach to vm-2 on the same host has reserved (no export yet) ...
    connector.arm();
    const attach = otherProcess().attach({ volume: 'shared', server: 'vm-2' });
    await connector.reached;
    // ... and vm-1's detach counted no other user of the export and is removing it.
    unexport.arm();
    const detach = service.detach({ volume: 'shared', server: 'vm-1' });
    await unexport.reached;
    connector.open();
    await settledOrWaiting(attach, () => waits() > 0);
    unexport.open();
    const [attached, gone] = await Promise.all([attach, detach]);
    expect(attached.operation.state).toBe('succeeded');
    expect(gone.operation.state).toBe('succeeded');
    // vm-2's export was made after the removal: its host can log in again.
    expect(exported.has(volume.id)).toBe(true);
  });

  it('a three-phase initialize on the host exports only after a detach that decided to remove the export removed it (export lease)', async () => {
    const unexport = gate();
    const { service, otherProcess, store, exported } = world({ beforeUnexport: () => unexport.pass() });
    const waits = exportLeaseWaits(store);
    const volume = await sharedOnVm1(service);
    const other = otherProcess();
    const reserved = await other.reserveAttachment({ volume: 'shared', server: 'vm-2' });
    unexport.arm();
    const detach = service.detach({ volume: 'shared', server: 'vm-1' });
    await unexport.reached;
    const initialized = other.initializeAttachment(reserved.attachment.id, { host: HOSTNAME, initiator: 'iqn.2026-01.test:unit' });
    await settledOrWaiting(initialized, () => waits() > 0);
    unexport.open();
    expect((await detach).operation.state).toBe('succeeded');
    expect((await initialized).attachment.status).toBe('attaching');
    expect(exported.has(volume.id)).toBe(true);
  });

  it('a detach waits for another process\'s attach on the host to record its export, then keeps it (export lease)', async () => {
    const exporting = gate();
    const { service, otherProcess, store, exported } = world({ afterExport: () => exporting.pass() });
    const volume = await sharedOnVm1(service);
    // Another berth process's attach to vm-2 has made the export and not yet recorded it ...
    exporting.arm();
    const attach = otherProcess().attach({ volume: 'shared', server: 'vm-2' });
    await exporting.reached;
    // ... when vm-1's detach comes to decide whether the export goes.
    const detach = service.detach({ volume: 'shared', server: 'vm-1' });
    await stepBegun(store, volume.id, 'detach', 'terminate');
    exporting.open();
    const [attached, gone] = await Promise.all([attach, detach]);
    expect(attached.operation.state).toBe('succeeded');
    expect(gone.operation.state).toBe('succeeded');
    expect(exported.has(volume.id)).toBe(true);
  });

  it('a second attach to the same server says whether the first is attached or still in progress (which may yet roll back)', async () => {
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    let exporting: () => void = () => undefined;
    const exportBegun = new Promise<void>((resolve) => (exporting = resolve));
    const { service } = world({
      afterExport: async () => {
        exporting();
        await held;
      },
    });
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const first = service.attach({ volume: 'db' });
    await exportBegun;
    // The first is reserved and exporting: not "already attached" — a script must not take it for success.
    const during = await service.attach({ volume: 'db' }).catch((e: unknown) => e);
    expect(BerthError.is(during) && during.details).toMatchObject({ reason: 'in-progress', attachment: 'reserved' });
    expect(BerthError.is(during) && during.message).toMatch(/is being attached to server/);
    release();
    await first;
    const after = await service.attach({ volume: 'db' }).catch((e: unknown) => e);
    expect(BerthError.is(after) && after.details).toMatchObject({ reason: 'attached', attachment: 'attached' });
    expect(BerthError.is(after) && after.message).toMatch(/is already attached to server/);
  });

  it('lets exactly one of two attaches of one volume to two servers win; the other gets CONFLICT', async () => {
    const { service } = world();
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-2' });
    const outcomes = await Promise.allSettled([service.attach({ volume: 'db' }), service.attach({ volume: 'db', server: 'vm-2' })]);
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
    const lost = outcomes.find((o) => o.status === 'rejected');
    expect(lost?.status === 'rejected' && BerthError.is(lost.reason) && lost.reason.code).toBe('CONFLICT');
  });
});

describe('recovery on the in-memory store', () => {
  it('rolls back an attach whose process died after initialize: export removed, volume available', async () => {
    const { service, store, exported } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const host = await store.hosts.create({ name: HOSTNAME });
    const server = await store.servers.create({ name: 'vm-1', projectId: volume.projectId, hostId: host.id });
    // What a dead process left: the journal up to initialize, the export made, no owner alive.
    const operation = await store.operations.create({ kind: 'attach', volumeId: volume.id, serverId: server.id, hostId: host.id, owner: null, deadlineAt: new Date(Date.now() + 60_000).toISOString() });
    const attachment = await reserveAttachmentRecord(store, volume.id, server, 'rw', operation.id);
    const connector = { host: HOSTNAME, initiator: 'iqn.2026-01.test:unit' };
    for (const [name, data] of [['reserve', { attachmentId: attachment.id }], ['dispatch', { hostId: host.id }], ['connector', { connector }]] as const) {
      const seq = await store.operations.startStep(operation.id, name, 'do');
      await store.operations.endStep(operation.id, seq, { state: 'done', data });
    }
    const seq = await store.operations.startStep(operation.id, 'initialize', 'do');
    exported.add(volume.id);
    await store.attachments.transition(attachment.id, ['reserved'], 'attaching', { connector, transport: 'mem', connectionInfo: { driver_volume_type: 'mem', data: { device_path: `/dev/mem-${volume.id}` } } });
    void seq;

    const outcomes = await service.recover();
    expect(outcomes).toEqual([expect.objectContaining({ operationId: operation.id, action: 'rolled_back' })]);
    expect((await store.operations.require(operation.id)).state).toBe('rolled_back');
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect(await store.attachments.list()).toEqual([]);
    expect(exported.size).toBe(0);
  });
});

describe('servers with a hypervisor: the pipeline publishes through their consumer', () => {
  it('hot-plugs through the qemu consumer, records the guest device and serial, and unplugs on detach', async () => {
    const { service, store, published, guestDisks, connected } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    const server = await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    expect(server.hypervisor).toEqual({ type: 'qemu', qmp: '/run/vm-1/qmp.sock', bus: 'pci.0' });
    const attached = await service.attach({ volume: 'db', server: 'vm-1' });
    expect(attached.attachment).toMatchObject({ publishedPath: `/dev/berth/${volume.id}`, guestDevice: '/dev/vdb', serial: volume.id });
    expect(await store.attachments.require(attached.attachment!.id)).toMatchObject({ guestDevice: '/dev/vdb', serial: volume.id });
    expect(guestDisks.get(volume.id)).toBe('/run/vm-1/qmp.sock');
    expect(published.size).toBe(0);
    const operation = await store.operations.require(attached.operation.id);
    expect(operation.steps.find((s) => s.name === 'publish')?.data).toMatchObject({ consumer: 'qemu', guestDevice: '/dev/vdb', serial: volume.id });
    await service.detach({ volume: 'db' });
    expect(guestDisks.size + connected.size).toBe(0);
  });

  it('a guest that cannot be reached at publish (nothing touched): the attach rolls back cleanly, the volume available, not error', async () => {
    const { service, store, exported, connected, guestDisks } = world({ guestUnreachable: true });
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    const error = await service.attach({ volume: 'db', server: 'vm-1' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    expect(BerthError.is(error) && error.message).not.toContain('rollback failed');
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect((await store.attachments.list({ volumeId: volume.id })).filter((a) => a.status !== 'detached')).toEqual([]);
    expect(exported.size + connected.size + guestDisks.size).toBe(0);
  });

  it('a guest that cannot be reached at detach (nothing touched): rolled back without asking it again, no "rollback failed", still attached', async () => {
    const options: { guestUnreachable?: boolean } = {};
    const { service, store, connected, guestDisks } = world(options);
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    await service.attach({ volume: 'db', server: 'vm-1' });
    options.guestUnreachable = true;
    const error = await service.detach({ volume: 'db' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    expect(BerthError.is(error) && error.message).not.toContain('rollback failed');
    expect((await store.attachments.list({ volumeId: volume.id })).map((a) => a.status)).toEqual(['attached']);
    expect(connected.size + guestDisks.size).toBe(2);
    const op = (await store.operations.list({ kind: 'detach' }))[0]!;
    expect(op.state).toBe('rolled_back');
    expect(op.steps.find((st) => st.name === 'unpublish' && st.phase === 'undo')?.state).toBe('done');
    options.guestUnreachable = false;
    await service.detach({ volume: 'db' });
    expect(connected.size + guestDisks.size).toBe(0);
  });

  it('a detach rolled back whose plug back into the guest fails: the attachment is error_detaching with the reason, not attached over a disk the guest no longer has', async () => {
    const options: { disconnectHeld?: boolean; guestPlugFails?: boolean } = {};
    const { service, store, guestDisks } = world(options);
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    await service.attach({ volume: 'db', server: 'vm-1' });
    options.disconnectHeld = true;
    options.guestPlugFails = true;
    const error = await service.detach({ volume: 'db' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.message).toContain('rollback failed');
    expect(guestDisks.size).toBe(0);
    const [attachment] = await store.attachments.list({ volumeId: volume.id });
    expect(attachment?.status).toBe('error_detaching');
    expect(attachment?.error).toMatch(/the rollback of the detach failed: .*device_add failed/);
    expect((await store.volumes.require(volume.id)).status).toBe('error');
    // A retry from there detaches.
    options.disconnectHeld = false;
    options.guestPlugFails = false;
    await service.detach({ volume: 'db' });
    expect((await store.attachments.list({ volumeId: volume.id })).filter((a) => a.status !== 'detached')).toEqual([]);
  });

  it('one guest is one server: a second server for the same QMP socket or libvirt domain on the host is refused (CONFLICT), another host or guest is not', async () => {
    const { service, store } = world();
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    for (const qmp of ['/run/vm-1/qmp.sock', '/run/vm-1//qmp.sock', '/run/vm-1/./qmp.sock', '/var/run/vm-1/qmp.sock']) {
      const error = await service.createServer({ name: 'vm-1b', hypervisor: { type: 'qemu', qmp } }).catch((e: unknown) => e);
      expect(BerthError.is(error) && error.code, qmp).toBe('CONFLICT');
      expect(BerthError.is(error) && error.message).toContain('server vm-1 already reaches the guest');
      expect(BerthError.is(error) && error.hint).toContain('--server vm-1');
    }
    await service.createServer({ name: 'web-1', hypervisor: { type: 'libvirt', domain: 'web-1' } });
    for (const uri of ['qemu:///system', 'qemu+unix:///system', 'qemu:///system/']) {
      const twice = await service.createServer({ name: 'web-1b', hypervisor: { type: 'libvirt', domain: 'web-1', uri } }).catch((e: unknown) => e);
      expect(BerthError.is(twice) && twice.code, uri).toBe('CONFLICT');
    }
    // On this host a socket reached through a symlink — of the socket, or of its directory — is the same guest.
    const dir = mkdtempSync(path.join(tmpdir(), 'berth-qmp-'));
    try {
      mkdirSync(path.join(dir, 'vm-3'));
      writeFileSync(path.join(dir, 'vm-3', 'qmp.sock'), '');
      symlinkSync(path.join(dir, 'vm-3', 'qmp.sock'), path.join(dir, 'link.sock'));
      symlinkSync(path.join(dir, 'vm-3'), path.join(dir, 'vm-3-dir'));
      await service.createServer({ name: 'vm-3', hypervisor: { type: 'qemu', qmp: path.join(dir, 'vm-3', 'qmp.sock') } });
      for (const qmp of [path.join(dir, 'link.sock'), path.join(dir, 'vm-3-dir', 'qmp.sock')]) {
        const error = await service.createServer({ name: 'vm-3b', hypervisor: { type: 'qemu', qmp } }).catch((e: unknown) => e);
        expect(BerthError.is(error) && error.code, qmp).toBe('CONFLICT');
        expect(BerthError.is(error) && error.message).toContain('server vm-3 already reaches the guest');
      }
      // Another host's paths are that host's: not resolved here.
      await service.createServer({ name: 'vm-3-on-h2', host: 'h2', hypervisor: { type: 'qemu', qmp: path.join(dir, 'link.sock') } });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // Another guest, another libvirt connection, another host, and host servers: all fine.
    await service.createServer({ name: 'vm-2', hypervisor: { type: 'qemu', qmp: '/run/vm-2/qmp.sock' } });
    await service.createServer({ name: 'web-1-session', hypervisor: { type: 'libvirt', domain: 'web-1', uri: 'qemu:///session' } });
    await service.createServer({ name: 'vm-1-on-h2', host: 'h2', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    await service.createServer({ name: 'plain-1' });
    await service.createServer({ name: 'plain-2', hypervisor: { type: 'host' } });
    expect((await store.servers.list()).map((s) => s.name).sort()).toEqual(['plain-1', 'plain-2', 'vm-1', 'vm-1-on-h2', 'vm-2', 'vm-3', 'vm-3-on-h2', 'web-1', 'web-1-session']);
    // A libvirt URI that is not one (a shell's `;`, spaces) is refused at create.
    for (const uri of ['qemu:///system;rm', 'qemu:///system rm', "qemu:///system'"]) {
      const bad = await service.createServer({ name: 'web-bad', hypervisor: { type: 'libvirt', domain: 'web-9', uri } }).catch((e: unknown) => e);
      expect(BerthError.is(bad) && bad.code, uri).toBe('VALIDATION');
    }
    // Only local URIs: the guest runs on the server's host, and libvirt's others run or reach what
    // they name, as root (a security review ran a program through `qemu+ext:///…?command=`), or
    // spell one guest another way (`qemu://localhost/system`, `?socket=`).
    for (const uri of [
      'qemu+ext:///system?command=/tmp/x.sh',
      'qemu+ssh://root@h1.example/system',
      'qemu+tcp://10.0.0.1:16509/system',
      'qemu+unix:///system?socket=/run/libvirt/libvirt-sock',
      'qemu:///system?',
      'qemu://localhost/system',
      'qemu+libssh2://h/system?keyfile=/root/.ssh/id_rsa',
    ]) {
      const bad = await service.createServer({ name: 'web-far', hypervisor: { type: 'libvirt', domain: 'web-1', uri } }).catch((e: unknown) => e);
      expect(BerthError.is(bad) && bad.code, uri).toBe('VALIDATION');
    }
    await service.createServer({ name: 'web-test', hypervisor: { type: 'libvirt', domain: 'web-ok', uri: 'test:///default' } });
    // A QMP socket spelled through /proc (another spelling of any path: one guest as two servers).
    for (const qmp of ['/proc/self/root/run/vm-1/qmp.sock', '/proc/1/cwd/qmp.sock', '/proc', '/dev/fd/3', '/sys/x']) {
      const bad = await service.createServer({ name: 'vm-proc', hypervisor: { type: 'qemu', qmp } }).catch((e: unknown) => e);
      expect(BerthError.is(bad) && bad.code, qmp).toBe('VALIDATION');
    }
  });

  it('refuses a server whose consumer is not installed with CONFIG, before anything is journalled or touched', async () => {
    const { service, store, exported, connected } = world();
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'web-1', hypervisor: { type: 'libvirt', domain: 'web-1' } });
    const error = await service.attach({ volume: 'db', server: 'web-1' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('CONFIG');
    expect(BerthError.is(error) && error.message).toContain('server web-1 needs the libvirt consumer (its hypervisor is libvirt), and it is not installed');
    expect(BerthError.is(error) && error.hint).toContain('@berth/consumer-libvirt');
    expect(await store.operations.list()).toEqual([]);
    expect((await store.volumes.require((await service.getVolume('db')).id)).status).toBe('available');
    expect(exported.size + connected.size).toBe(0);
  });

  it('a guest that does not let go: TIMEOUT, the host side intact, the attachment error_detaching (the unplug request stays pending in the guest); --force refuses too; once it lets go the detach finishes', async () => {
    const { service, store, exported, connected, guestDisks } = world({ guestHolds: true });
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    await service.attach({ volume: 'db', server: 'vm-1' });
    for (const force of [false, true]) {
      const error = await service.detach({ volume: 'db', force }).catch((e: unknown) => e);
      expect(BerthError.is(error) && error.code, `force ${force}`).toBe('TIMEOUT');
      expect(BerthError.is(error) && error.message).toContain('vm-1');
      if (force) expect(BerthError.is(error) && error.hint).toContain('--force never disconnects a disk a guest still holds');
      const [attachment] = await store.attachments.list({ volumeId: volume.id });
      // Not `attached`: the guest got the request and may drop the disk whenever it acts on it.
      expect(attachment?.status).toBe('error_detaching');
      expect(attachment?.error).toMatch(/^the detach is waiting for the guest: the guest of server vm-1 was asked to release the disk of volume db and may still do so/);
      expect((await store.volumes.require(volume.id)).status).toBe('error');
      expect(connected.size + exported.size + guestDisks.size).toBe(3);
    }
    // The guest lets go: a plain detach finishes.
    guestDisks.clear();
    await service.detach({ volume: 'db' });
    expect(connected.size + exported.size).toBe(0);
    expect((await store.volumes.require(volume.id)).status).toBe('available');
  });

  it('an attach rolled back after its hot-plug, whose guest does not let go, leaves the host device connected (not pulled out from under the guest) and its export', async () => {
    const { service, store, connected, guestDisks, exported } = world({ guestHolds: true });
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    // The publish's record fails after the disk was plugged into the guest: the attach rolls back.
    const update = store.attachments.update.bind(store.attachments);
    store.attachments.update = async (id, patch) => {
      if ('publishedPath' in patch) throw new BerthError('CONFLICT', 'the attachment changed under the publish');
      return update(id, patch);
    };
    const error = await service.attach({ volume: 'db', server: 'vm-1' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('CONFLICT');
    // The guest still has the disk, and so does the host (before: disconnected under the guest),
    // and the export it reaches the volume through (before: removed — an explorer saw tgtd's ACL
    // of the live session gone, which would refuse the session's next login).
    expect(guestDisks.size).toBe(1);
    expect(connected.size).toBe(1);
    expect(exported.size).toBe(1);
    expect((await store.attachments.list({ volumeId: volume.id }))[0]?.status).toBe('error_attaching');
    const op = (await store.operations.list({ kind: 'attach' }))[0]!;
    expect(op.steps.find((st) => st.name === 'initialize' && st.phase === 'undo')).toMatchObject({ state: 'failed', error: { code: 'CONFLICT' } });
    // Once the guest lets go, --force takes everything away.
    guestDisks.clear();
    await service.detach({ volume: 'db', force: true });
    expect(connected.size + exported.size).toBe(0);
  });

  it('--force does not go through any failure of a guest server\'s unplug (an agent\'s answer may lose guestHoldsDevice)', async () => {
    const { service, store, connected, guestDisks } = world({ guestUnplugFails: true });
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock' } });
    await service.attach({ volume: 'db', server: 'vm-1' });
    const error = await service.detach({ volume: 'db', force: true }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
    expect(BerthError.is(error) && error.hint).toContain('may still have the disk');
    expect((await store.attachments.list({ volumeId: volume.id }))[0]?.status).toBe('attached');
    expect(connected.size + guestDisks.size).toBe(2);
  });
});

describe('reconcile of a guest server: what the guest has against the attachments', () => {
  const QMP = '/run/vm-1/qmp.sock';
  const guestKinds = (report: { differences: Array<{ kind: string }> }) => report.differences.filter((d) => d.kind.includes('guest'));

  it('a disk with a berth volume serial and no attachment is unplugged (a dry run lists it and changes nothing); a foreign serial is never touched', async () => {
    const { service, guestDisks } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: QMP } });
    guestDisks.set(volume.id, QMP);
    guestDisks.set('QM00001', QMP);
    const dry = await service.reconcile({ dryRun: true });
    expect(guestKinds(dry)).toEqual([expect.objectContaining({ kind: 'guest_disk_without_attachment', fix: 'unplug', state: 'planned', volumeId: volume.id })]);
    expect([...guestDisks.keys()]).toEqual([volume.id, 'QM00001']);
    const applied = await service.reconcile();
    expect(guestKinds(applied)).toEqual([expect.objectContaining({ kind: 'guest_disk_without_attachment', state: 'applied', result: `unplugged /machine/peripheral/d-${volume.id} from server vm-1` })]);
    expect([...guestDisks.keys()]).toEqual(['QM00001']);
    expect(guestKinds(await service.reconcile({ dryRun: true }))).toEqual([]);
  });

  it('an attached volume the guest lost (unplugged behind berth\'s back) is plugged in again through the server\'s consumer', async () => {
    const { service, store, guestDisks, published } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: QMP } });
    const { attachment } = await service.attach({ volume: 'db', server: 'vm-1' });
    guestDisks.delete(volume.id);
    const dry = await service.reconcile({ dryRun: true });
    expect(guestKinds(dry)).toEqual([expect.objectContaining({ kind: 'attachment_missing_from_guest', fix: 'replug', state: 'planned', attachmentId: attachment!.id })]);
    expect(guestDisks.size).toBe(0);
    const applied = await service.reconcile();
    expect(guestKinds(applied)).toEqual([expect.objectContaining({ kind: 'attachment_missing_from_guest', state: 'applied' })]);
    expect(guestDisks.get(volume.id)).toBe(QMP);
    expect(published.size).toBe(0);
    expect(await store.attachments.require(attachment!.id)).toMatchObject({ status: 'attached', guestDevice: '/dev/vdb' });
  });

  it('a failed detach of a guest server is finished by reconcile through the server\'s consumer (the guest lets go), not the default one', async () => {
    const { service, store, guestDisks, connected } = world();
    const volume = await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.createServer({ name: 'vm-1', hypervisor: { type: 'qemu', qmp: QMP } });
    const { attachment } = await service.attach({ volume: 'db', server: 'vm-1' });
    await transitionAttachment(store, attachment!.id, ['attached'], 'error_detaching', { error: 'a detach cut short after the unplug request' });
    const report = await service.reconcile();
    expect(report.differences).toEqual(expect.arrayContaining([expect.objectContaining({ kind: 'attachment_error', state: 'applied' })]));
    expect(guestDisks.size + connected.size).toBe(0);
    expect(await store.attachments.list({ volumeId: volume.id })).toEqual([]);
    expect((await store.volumes.require(volume.id)).status).toBe('available');
  });
});

describe('reconcile: what it could not look at', () => {
  it('a part that cannot be looked at has no errorCode; one whose look failed has the failure\'s code', async () => {
    const reconcile = async (w: ReturnType<typeof world>) => {
      await w.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
      return w.service.reconcile({ dryRun: true });
    };
    // The backend has no `exports`: it cannot be looked at, which is not a failure.
    const cannot = await reconcile(world());
    expect(cannot.unchecked).toEqual([{ kind: 'backend', name: 'mem', reason: 'it cannot list its exports', errorCode: null }]);
    const failed = await reconcile(world({ listingFails: true }));
    expect(failed.unchecked).toEqual([
      { kind: 'backend', name: 'mem', reason: 'it cannot list its exports', errorCode: null },
      { kind: 'transport', name: 'mem', reason: 'listing its devices failed: the device table cannot be read', errorCode: 'DRIVER_ERROR' },
    ]);
    // A guest server whose consumer is not installed (uninstalled while the server stayed): not
    // looked at, and no failure — every reconcile would otherwise exit non-zero for it.
    const w = world();
    await w.service.createServer({ name: 'web-9', hypervisor: { type: 'libvirt', domain: 'web-9' } });
    const missing = await reconcile(w);
    expect(missing.unchecked).toContainEqual({ kind: 'server', name: 'web-9', reason: 'its libvirt consumer is not installed on its host', errorCode: null });
  });
});

describe('pruning the journal', () => {
  /** A world on a faked `Date` whose volume db was attached and detached once (two operations); `hours` later when `fn` runs. */
  async function pruneWorld<T>(hours: number, fn: (w: ReturnType<typeof world>) => Promise<T>): Promise<T> {
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const w = world();
      await w.service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
      await w.service.attach({ volume: 'db' });
      await w.service.detach({ volume: 'db' });
      vi.setSystemTime(Date.now() + hours * 3_600_000);
      return await fn(w);
    } finally {
      vi.useRealTimers();
    }
  }

  it('deletes finished operations older than the age asked, in batches, keeps newer and running ones; dry run counts only', async () => {
    await pruneWorld(3, async ({ service, store }) => {
      const recent = await service.attach({ volume: 'db' });
      const running = await store.operations.create({ kind: 'detach', deadlineAt: '2099-01-01T00:00:00.000Z' });

      expect(await service.pruneOperations({ olderThanMs: 2 * 3_600_000, dryRun: true })).toMatchObject({ pruned: 2, dryRun: true });
      expect(await store.operations.list()).toHaveLength(4);
      const report = await service.pruneOperations({ olderThanMs: 2 * 3_600_000 });
      expect(report).toMatchObject({ pruned: 2, dryRun: false });
      expect(report.endedBefore < recent.operation.startedAt).toBe(true);
      expect((await store.operations.list()).map((o) => o.id).sort()).toEqual([recent.operation.id, running.id].sort());
      // What the journal is for stays: the volume and its attachment.
      expect((await service.getVolume('db')).status).toBe('in-use');
    });
  });

  it('with the cut a dry run answered, deletes what it counted and nothing that ended since', async () => {
    await pruneWorld(1.5, async ({ service, store }) => {
      const counted = await service.pruneOperations({ olderThanMs: 3_600_000, dryRun: true });
      expect(counted.pruned).toBe(2);
      // Two more end after the count; by the time the prune runs, the age alone would take them too.
      await service.attach({ volume: 'db' });
      await service.detach({ volume: 'db' });
      vi.setSystemTime(Date.now() + 1.5 * 3_600_000);
      expect(await service.pruneOperations({ olderThanMs: 3_600_000, endedBefore: counted.endedBefore, dryRun: true })).toMatchObject({ pruned: 2 });
      expect(await service.pruneOperations({ olderThanMs: 3_600_000, dryRun: true })).toMatchObject({ pruned: 4 });
      expect(await service.pruneOperations({ olderThanMs: 3_600_000, endedBefore: counted.endedBefore })).toMatchObject({ pruned: 2, endedBefore: counted.endedBefore });
      expect(await store.operations.list()).toHaveLength(2);
    });
  });

  it('`berth serve` (startUpkeep) prunes what ended more than journal.retainDays (30) ago, at once, and keeps the rest', async () => {
    await pruneWorld(31 * 24, async ({ service, store }) => {
      const recent = await service.attach({ volume: 'db' });
      const stop = service.startUpkeep();
      await stop();
      expect((await store.operations.list()).map((o) => o.id)).toEqual([recent.operation.id]);
    });
    await pruneWorld(29 * 24, async ({ service, store }) => {
      await service.startUpkeep()();
      expect(await store.operations.list()).toHaveLength(2);
    });
  });

  it('`berth serve` (startUpkeep) runs the transports\' upkeep only while this process runs its own host\'s steps: not before its host row exists, not once an agent registered for it', async () => {
    let calls = 0;
    const { service, store } = world({ transportUpkeep: async () => void (calls += 1) });
    // The gate's store read, counted once answered.
    let asked = 0;
    const findByName = store.hosts.findByName.bind(store.hosts);
    store.hosts.findByName = async (name) => {
      const host = await findByName(name);
      if (name === HOSTNAME) asked += 1;
      return host;
    };
    const round = async (): Promise<void> => {
      const before = asked;
      const stop = service.startUpkeep();
      // The first round runs at once: its gate answered (vi.waitFor polls on a timer, so the round's
      // rest, which waits on nothing else, has run by then), then stop.
      await vi.waitFor(() => expect(asked).toBeGreaterThan(before), { timeout: 5_000 });
      await stop();
      (service as unknown as { upkeepStop: undefined }).upkeepStop = undefined;
    };
    await round();
    expect(calls).toBe(0);
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.attach({ volume: 'db' });
    await round();
    expect(calls).toBe(1);
    const host = (await store.hosts.findByName(HOSTNAME))!;
    await store.hosts.recordAgent(host.id, { instance: 'agent-1', version: '0.1.0', transports: ['mem'], consumers: ['mem'] });
    await round();
    expect(calls).toBe(1);
  });

  it('refuses an age under an hour, or not a whole number of ms, with VALIDATION before anything is deleted', async () => {
    const { service, store } = world();
    await service.createVolume({ name: 'db', sizeBytes: 2 ** 30 });
    await service.attach({ volume: 'db' });
    for (const olderThanMs of [0, 59 * 60_000, 1.5 * 3_600_000 + 0.5, -1]) {
      await expect(service.pruneOperations({ olderThanMs })).rejects.toMatchObject({ code: 'VALIDATION' });
    }
    await expect(service.pruneOperations({ olderThanMs: 3_600_000, extra: true } as never)).rejects.toMatchObject({ code: 'VALIDATION' });
    expect(await store.operations.list()).toHaveLength(1);
  });
});

describe('a volume delete the backend refuses', () => {
  it('that removed nothing gives the volume back available; one that failed partway leaves it error, with a hint to delete it again', async () => {
    const untouched = world({ deleteFails: 'untouched' });
    await untouched.service.createVolume({ name: 'ro', sizeBytes: 2 ** 30 });
    await expect(untouched.service.deleteVolume('ro')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    expect((await untouched.service.getVolume('ro')).status).toBe('available');
    expect((await untouched.service.attach({ volume: 'ro' })).operation.state).toBe('succeeded');

    const partway = world({ deleteFails: 'partway' });
    await partway.service.createVolume({ name: 'half', sizeBytes: 2 ** 30 });
    await expect(partway.service.deleteVolume('half')).rejects.toMatchObject({ code: 'BACKEND_ERROR' });
    expect((await partway.service.getVolume('half')).status).toBe('error');
    for (const refused of [partway.service.attach({ volume: 'half' }), partway.service.extendVolume('half', 2 ** 31)]) {
      const error = await refused.catch((e: unknown) => e);
      expect(BerthError.is(error) && error.code).toBe('CONFLICT');
      expect(BerthError.is(error) && error.hint).toContain('berth volume delete half');
    }
  });
});
