import 'reflect-metadata';
import { processStartTicksSync } from '@berth/host';
import { describe, expect, it, vi } from 'vitest';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import { BerthError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import { reserveAttachmentRecord } from '../pipeline/attach.js';
import { memCatalog } from '../test-support.js';
import type { Store } from '../store.js';
import { ReplicaMaintenance } from './replica.js';

/** This process as a replica on host api-1 names itself (`pid@host#start-time`). */
const SELF = `${process.pid}@api-1#${processStartTicksSync(process.pid)}`;

// Replicas on one store: the heartbeat renews this process's operations, takes over those whose
// lease passed, and fences a run another replica took over. On core's memory store, whose leases
// pass the store conformance suite as SQLite's and PostgreSQL's do.

/** A service whose `mem` transport connects only when `release` is called (or its signal fires). */
function replica(store: Store, heartbeatMs = 30_000) {
  let release!: () => void;
  const connecting = new Promise<void>((resolve) => (release = resolve));
  let entered!: () => void;
  const inConnect = new Promise<void>((resolve) => (entered = resolve));
  const catalog = memCatalog(new Map(), async (c, { signal }) => {
    entered();
    await Promise.race([connecting, new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))]);
    return { path: String(c.data.device_path), type: 'block' as const };
  });
  const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', replica: { leaseMs: 60_000, heartbeatMs } }, {});
  const service = new BerthServiceImpl(config, store, catalog, { hostname: 'api-1', ips: [], platform: 'x86_64', osType: 'linux' }, silentLogger);
  return { service, release, inConnect };
}

/** An attach of volume db1 to server web-1 that replica api-2 left after its reserve, its lease (0 ms) passed. */
async function diedAfterReserve(store: Store, service: BerthServiceImpl, deadlineInMs = 60_000) {
  const volume = await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
  const server = await service.createServer({ name: 'web-1' });
  const op = await store.operations.create({ kind: 'attach', volumeId: volume.id, serverId: server.id, hostId: server.hostId, owner: '4242@api-2', deadlineAt: new Date(Date.now() + deadlineInMs).toISOString(), leaseMs: 0 });
  await reserveAttachmentRecord(store, volume.id, server, 'rw', op.id);
  await store.operations.endStep(op.id, await store.operations.startStep(op.id, 'reserve', 'do'), { state: 'done' });
  return op;
}

/**
 * The database failing under undos: when an undo step starts (`startStep`, or `advanceStep` into
 * it; of `step` only, when given), the next store transaction fails with an outage, at most
 * `times` times — PostgreSQL restarting and back for the write after. `undos` are the times undos
 * started; `restore()` stops arming.
 */
function outageOnUndo(store: Store, options: { step?: string; times?: number } = {}) {
  const times = options.times ?? 1;
  const undos: number[] = [];
  let armed = false;
  let failed = 0;
  const starts = (name: string, phase: string): void => {
    if (phase !== 'undo' || (options.step !== undefined && name !== options.step)) return;
    undos.push(Date.now());
    if (failed + (armed ? 1 : 0) < times) armed = true;
  };
  const startStep = store.operations.startStep.bind(store.operations);
  store.operations.startStep = async (...args) => {
    starts(args[1], args[2]);
    return startStep(...args);
  };
  // The runner journals an undo's start with the end of the one before it.
  const advanceStep = store.operations.advanceStep.bind(store.operations);
  store.operations.advanceStep = async (...args) => {
    const seq = await advanceStep(...args);
    starts(args[3].name, args[3].phase);
    return seq;
  };
  const transaction = store.transaction.bind(store);
  (store as { transaction: Store['transaction'] }).transaction = async (fn) => {
    if (armed) {
      armed = false;
      failed += 1;
      throw new BerthError('UNAVAILABLE', 'cannot reach the berth database', { details: { outage: true } });
    }
    return transaction(fn);
  };
  return {
    undos,
    get failed() {
      return failed;
    },
    restore(): void {
      store.operations.startStep = startStep;
      store.operations.advanceStep = advanceStep;
      (store as { transaction: Store['transaction'] }).transaction = transaction;
    },
  };
}

/** This replica's takeovers, each claimed in turn by `other` right after (a survivor frozen before its first write). */
function takenOverInTurn(store: Store, other: string): void {
  const claim = store.operations.claimExpired!.bind(store.operations);
  store.operations.claimExpired = async (owner, leaseMs, limit) => {
    const taken = await claim(owner, leaseMs, limit);
    for (const t of taken) await store.operations.setOwner(t.id, other, owner);
    return taken;
  };
}

/** What api-2 left when it stopped renewing inside its reserve: the row was begun, never closed. */
async function stoppedInsideReserve(store: Store, service: BerthServiceImpl) {
  const volume = await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
  const server = await service.createServer({ name: 'web-1' });
  const op = await store.operations.create({ kind: 'attach', volumeId: volume.id, serverId: server.id, hostId: server.hostId, owner: '4242@api-2', deadlineAt: new Date(Date.now() + 60_000).toISOString(), leaseMs: 0 });
  await reserveAttachmentRecord(store, volume.id, server, 'rw', op.id);
  await store.operations.startStep(op.id, 'reserve', 'do');
  return op;
}

describe('replicas', () => {
  it('takes over an operation whose replica stopped renewing it, and rolls it back by the recovery rules', async () => {
    const store = createMemoryStore();
    const { service } = replica(store);
    // What a replica on another machine left when it died after its reserve; its lease (0 ms)
    // passed at once: api-2 never renewed it.
    const op = await diedAfterReserve(store, service);

    const stop = service.startReplica();
    await stop();
    const after = await store.operations.require(op.id);
    expect(after.state).toBe('rolled_back');
    expect(after.owner).toBe(SELF);
    // It names the replica that stopped renewing (it may still run: a lease passes as well for a
    // replica paused or cut off from the database as for a dead one) and the one that took over.
    expect(after.error).toEqual({
      code: 'CANCELLED',
      message: `the process running this attach (4242@api-2) stopped renewing its lease before it finished (it died, was paused, or could not reach the database); replica ${SELF} took the attach over and undid it`,
      hint: 'everything was put back as it was; if 4242@api-2 still runs, it was fenced and does nothing more for this attach; run the command again',
    });
    expect(after.error?.message).not.toMatch(/stopped before it finished/);
    expect((await service.getVolume('db1')).status).toBe('available');
    expect(await service.listAttachments({ volume: 'db1' })).toEqual([]);
    await service.close();
  });

  it('a step the stopped replica left running is closed `failed` (cut short) when the takeover ends the operation', async () => {
    const store = createMemoryStore();
    const { service } = replica(store);
    const op = await stoppedInsideReserve(store, service);

    await service.startReplica()();
    const after = await store.operations.require(op.id);
    expect(after.state).toBe('rolled_back');
    // The finished operation shows no step still running: the cut-short do row says why it ended.
    expect(after.steps.map((s) => `${s.name}:${s.phase}:${s.state}`)).toEqual(['reserve:do:failed', 'reserve:undo:done']);
    expect(after.steps[0]!.error).toEqual({ code: 'CANCELLED', message: `cut short: 4242@api-2 stopped renewing the operation's lease; replica ${SELF} took the operation over` });
    expect(after.steps[0]!.endedAt).not.toBeNull();
    expect(await service.listAttachments({ volume: 'db1' })).toEqual([]);
    await service.close();
  });

  it('a takeover whose recovery fails settles the operation `failed` and closes the rows the stopped replica left running', async () => {
    const store = createMemoryStore();
    const { service } = replica(store);
    const op = await stoppedInsideReserve(store, service);
    // The recovery fails for another reason than the database (a bug, a record it cannot read).
    const get = store.attachments.get.bind(store.attachments);
    store.attachments.get = async () => {
      throw new Error('cannot read this attachment');
    };
    try {
      await service.startReplica()();
    } finally {
      store.attachments.get = get;
    }
    const after = await store.operations.require(op.id);
    expect(after.state).toBe('failed');
    expect(after.error?.message).toContain('cannot read this attachment');
    expect(after.steps.filter((s) => s.state === 'running')).toEqual([]);
    expect(after.steps[0]).toMatchObject({ name: 'reserve', phase: 'do', state: 'failed', error: { code: 'CANCELLED' } });
    expect(after.steps[0]!.error?.message).toMatch(/^cut short: its recovery failed: .*cannot read this attachment/);
    await service.close();
  });

  it('a takeover the database fails under is not settled: it stays running as this replica\'s, and a later beat recovers it once the database is back', async () => {
    const store = createMemoryStore();
    const { service } = replica(store);
    // Its deadline long passed: a later beat of this replica adopts it at once.
    const op = await diedAfterReserve(store, service, -3_600_000);
    // The database restarts under the reserve's undo (its one transaction), and is back for the
    // next write at once: the end of the recovery would be written (`failed`) if it were tried.
    const outage = outageOnUndo(store, { times: Number.POSITIVE_INFINITY });
    await service.startReplica()();
    const deferred = await store.operations.require(op.id);
    expect(deferred.state).toBe('running');
    expect(deferred.owner).toBe(SELF);
    expect((await service.listAttachments({ volume: 'db1' })).map((a) => a.status)).toEqual(['reserved']);
    await service.close();

    // The same replica (restarted here) finds its own row at its first beat and recovers it.
    outage.restore();
    const again = replica(store).service;
    await again.startReplica()();
    expect((await store.operations.require(op.id)).state).toBe('rolled_back');
    // The replica holds it with no run of it left (the takeover that the database failed under was
    // in a service closed since): said as that, not as a process that stopped, and not as a lease.
    expect((await store.operations.require(op.id)).error?.message).toMatch(/was held by .* with no run of it left there .*recovered it after its deadline and undid it$/);
    expect((await again.getVolume('db1')).status).toBe('available');
    expect(await again.listAttachments({ volume: 'db1' })).toEqual([]);
    await again.close();
  });

  it('a survivor frozen right after its takeover and taken over in turn writes nothing and undoes nothing (its recovery is fenced)', async () => {
    const store = createMemoryStore();
    const { service } = replica(store);
    const op = await diedAfterReserve(store, service);
    // This replica claims it, then "freezes": api-3 claims it in turn before the recovery's first write.
    takenOverInTurn(store, '77@api-3');
    const stop = service.startReplica();
    await stop();
    const after = await store.operations.require(op.id);
    expect(after).toMatchObject({ state: 'running', owner: '77@api-3' });
    expect(after.steps.map((s) => `${s.name}:${s.phase}:${s.state}`)).toEqual(['reserve:do:done']);
    expect(await service.listAttachments({ volume: 'db1' })).toHaveLength(1);
    await service.close();
  });

  it('a survivor taken over in turn does not cancel the work items of the replica that owns the operation now', async () => {
    const store = createMemoryStore();
    const { service } = replica(store);
    const op = await diedAfterReserve(store, service);
    // The undo work the replica owning it now (api-3) handed to a host, still pending.
    const host = await store.hosts.require(op.hostId ?? '');
    const item = await store.workItems!.create({ operationId: op.id, hostId: host.id, step: 'release', payload: {} });
    takenOverInTurn(store, '77@api-3');
    const stop = service.startReplica();
    await stop();
    expect(await store.operations.require(op.id)).toMatchObject({ state: 'running', owner: '77@api-3' });
    expect((await store.workItems!.require(item.id)).state).toBe('pending');
    await service.close();
  });

  it('fences a run another replica took over: it stops at once, undoes nothing and leaves the operation to the new owner', async () => {
    const store = createMemoryStore();
    // Beats every 100 ms: the test waits for the one after the takeover (no fixed sleep).
    const { service, inConnect } = replica(store, 100);
    await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
    const stop = service.startReplica();
    const started = await service.startAttach({ volume: 'db1' });
    const outcome = started.done.catch((e: unknown) => e);
    await inConnect;
    // Another replica claimed it (this one's lease passed during a long pause); the next beat sees it.
    await store.operations.setOwner(started.operation.id, '77@api-2', SELF);
    const error = (await outcome) as BerthError;
    expect(error.code).toBe('CONFLICT');
    expect(error.message).toMatch(/taken over by another replica/);
    const op = await store.operations.require(started.operation.id);
    expect(op.state).toBe('running');
    expect(op.owner).toBe('77@api-2');
    expect(op.steps.filter((s) => s.phase === 'undo')).toEqual([]);
    await stop();
    await service.close();
  });

  it('does not fence an operation launched while a renewal was under way (its row came after the renewal read the table)', async () => {
    const store = createMemoryStore();
    // The renewal reads the table, then its answer is held back until the attach is in flight: the
    // order two PostgreSQL connections can give (the attach's row committed after the UPDATE's snapshot).
    const heartbeat = store.operations.heartbeat!.bind(store.operations);
    let read!: () => void;
    const renewalRead = new Promise<void>((resolve) => (read = resolve));
    let answer!: () => void;
    const answerHeld = new Promise<void>((resolve) => (answer = resolve));
    store.operations.heartbeat = async (owner, leaseMs) => {
      const held = await heartbeat(owner, leaseMs);
      read();
      await answerHeld;
      return held;
    };
    const { service, release, inConnect } = replica(store);
    await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
    const stop = service.startReplica();
    await renewalRead;
    const started = await service.startAttach({ volume: 'db1' });
    const outcome = started.done.catch((e: unknown) => e);
    await inConnect;
    answer();
    // The beat has compared the renewal's answer with the runs in flight.
    await stop();
    release();
    const result = await outcome;
    expect(result).not.toBeInstanceOf(BerthError);
    const op = await store.operations.require(started.operation.id);
    expect(op.state).toBe('succeeded');
    expect(op.owner).toBe(SELF);
    await service.close();
  });

  it('an attach whose rollback the database failed under is recovered at a next beat once the database answers, not after its deadline', async () => {
    const store = createMemoryStore();
    // Beats every 100 ms: the test waits for the beat after the failure (no fixed sleep).
    const catalog = memCatalog(new Map(), async () => {
      throw new BerthError('DRIVER_ERROR', 'the target refused the login');
    });
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', replica: { leaseMs: 60_000, heartbeatMs: 100 } }, {});
    const service = new BerthServiceImpl(config, store, catalog, { hostname: 'api-1', ips: [], platform: 'x86_64', osType: 'linux' }, silentLogger);
    await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
    // PostgreSQL restarts under the rollback's reserve undo (its one transaction), once, and is back at once.
    const outage = outageOnUndo(store, { step: 'reserve' });
    const stop = service.startReplica();
    try {
      const error = (await service.attach({ volume: 'db1' }).catch((e: unknown) => e)) as BerthError;
      expect(outage.failed).toBe(1);
      expect(error.message).toMatch(/the database failed before the rollback could finish/);
      const operationId = String(error.details.operationId);
      // Its deadline is two minutes away (operationTimeoutMs): only the abandonment lets a beat take it now.
      const op = await store.operations.require(operationId);
      expect(Date.parse(op.deadlineAt)).toBeGreaterThan(Date.now() + 60_000);
      await vi.waitFor(async () => expect((await store.operations.require(operationId)).state).toBe('rolled_back'), { timeout: 10_000, interval: 20 });
      // This process never stopped: the operation's error says the database failed, not that its owner stopped.
      const settled = await store.operations.require(operationId);
      expect(settled.error?.code).toBe('CANCELLED');
      expect(settled.error?.message).toBe(`the database failed while this attach ran (in ${SELF}, which kept running); it was undone once the database answered again`);
      expect(settled.error?.message).not.toMatch(/stopped before it finished/);
      expect((await service.getVolume('db1')).status).toBe('available');
      expect(await service.listAttachments({ volume: 'db1' })).toEqual([]);
    } finally {
      await stop();
      await service.close();
    }
  });

  it('a recovery the database defers again is retried at later beats, each after a longer pause', async () => {
    const store = createMemoryStore();
    const { service } = replica(store, 100);
    const op = await diedAfterReserve(store, service);
    // Every undo's transaction fails three times (the database keeps failing), then it is back.
    const { undos: undoTimes } = outageOnUndo(store, { times: 3 });
    const stop = service.startReplica();
    try {
      await vi.waitFor(async () => expect((await store.operations.require(op.id)).state).toBe('rolled_back'), { timeout: 10_000, interval: 20 });
      expect((await service.getVolume('db1')).status).toBe('available');
      // Its owner api-2 stopped renewing; the outages came under this replica's takeover, which says so still.
      expect((await store.operations.require(op.id)).error?.message).toMatch(/^the process running this attach \(4242@api-2\) stopped renewing its lease before it finished .*took the attach over and undid it$/);
      // Tried four times; the pauses between tries grow (100, 200, 400 ms at least: beats of 100 ms).
      expect(undoTimes).toHaveLength(4);
      const pauses = undoTimes.slice(1).map((t, i) => t - undoTimes[i]!);
      expect(pauses[0]!).toBeGreaterThanOrEqual(100);
      expect(pauses[1]!).toBeGreaterThanOrEqual(200);
      expect(pauses[2]!).toBeGreaterThanOrEqual(400);
    } finally {
      await stop();
      await service.close();
    }
  });

  it('a deferred takeover that another replica claimed since is not taken back by this replica\'s recover()', async () => {
    const store = createMemoryStore();
    const { service } = replica(store);
    const op = await diedAfterReserve(store, service);
    // The first undo's transaction meets an outage: the takeover is deferred, still this replica's.
    outageOnUndo(store);
    const me = SELF;
    await service.startReplica()();
    expect((await store.operations.require(op.id)).owner).toBe(me);
    // This replica's lease lapsed (a partition); live replica api-3 claimed it and recovers it.
    await store.operations.setOwner(op.id, '777@api-3', me);
    // An operator's `berth reconcile` sent to this replica: the operation is api-3's now.
    const outcomes = await service.recover();
    expect(outcomes).toEqual([]);
    const after = await store.operations.require(op.id);
    expect(after.owner).toBe('777@api-3');
    expect(after.state).toBe('running');
    expect(after.steps.filter((s) => s.phase === 'undo')).toHaveLength(1);
    await service.close();
  });

  it('a deferred recovery settled another way (recover(), a reconcile) is forgotten at the next beat, not retried for ever', async () => {
    const store = createMemoryStore();
    const { service } = replica(store);
    const op = await diedAfterReserve(store, service);
    // The first undo's transaction meets an outage: the takeover is deferred.
    outageOnUndo(store);
    // The heartbeat's own object, beaten by hand (the service's internals, as startReplica builds it).
    const internals = service as unknown as { parts: ConstructorParameters<typeof ReplicaMaintenance>[0]; launcher: ConstructorParameters<typeof ReplicaMaintenance>[1] };
    const maintenance = new ReplicaMaintenance(internals.parts, internals.launcher);
    const retries = (maintenance as unknown as { retries: Map<string, unknown> }).retries;
    await maintenance.beat();
    await vi.waitFor(() => expect(retries.has(op.id)).toBe(true));
    expect((await store.operations.require(op.id)).state).toBe('running');
    // `berth reconcile` on this replica settles it first.
    expect((await service.recover()).map((o) => o.action)).toEqual(['rolled_back']);
    await maintenance.beat();
    expect(retries.has(op.id)).toBe(false);
    expect(internals.launcher.isAbandoned(op.id)).toBe(false);
    await service.close();
  });

  it('recovers an operation it owns but no longer runs once its deadline passed, and leaves a fresh one alone', async () => {
    const store = createMemoryStore();
    const { service } = replica(store);
    const volume = await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
    const fresh = await service.createVolume({ name: 'db2', sizeBytes: 2 ** 20 });
    const server = await service.createServer({ name: 'web-1' });
    const owner = SELF;
    // This replica's own rows that no run of it holds, leases far from passing (so no other replica
    // would ever take them): one whose deadline passed an hour ago, with no step journalled (the
    // bench's stuck operation), and one written a moment ago (a launch not yet in flight).
    const orphan = await store.operations.create({ kind: 'attach', volumeId: volume.id, serverId: server.id, hostId: server.hostId, owner, deadlineAt: new Date(Date.now() - 3_600_000).toISOString(), leaseMs: 60_000 });
    const launching = await store.operations.create({ kind: 'attach', volumeId: fresh.id, serverId: server.id, hostId: server.hostId, owner, deadlineAt: new Date(Date.now() + 60_000).toISOString(), leaseMs: 60_000 });

    const stop = service.startReplica();
    await stop();
    const recovered = await store.operations.require(orphan.id);
    expect(recovered.state).toBe('rolled_back');
    expect(recovered.owner).toBe(owner);
    expect((await service.getVolume('db1')).status).toBe('available');
    expect((await store.operations.require(launching.id)).state).toBe('running');
    await service.close();
  });

  it('leaves an orphan made on another host root to a berth on that root, and says so once, not at every beat', async () => {
    const store = createMemoryStore();
    const warnings: string[] = [];
    const logger: Logger = { ...silentLogger, warn: (_o, msg) => void warnings.push(msg ?? ''), child: () => logger };
    const catalog = memCatalog(new Map(), undefined, { root: '/', lists: true });
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', undoTimeoutMs: 1_000, replica: { leaseMs: 60_000, heartbeatMs: 100 } }, {});
    const service = new BerthServiceImpl(config, store, catalog, { hostname: 'api-1', ips: [], platform: 'x86_64', osType: 'linux' }, logger);
    const volume = await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
    const server = await service.createServer({ name: 'api-1' });
    const owner = SELF;
    // What a `--simulate` run of this replica left: its initialize journalled on the simulated root.
    const orphan = await store.operations.create({ kind: 'attach', volumeId: volume.id, serverId: server.id, hostId: server.hostId, owner, deadlineAt: new Date(Date.now() - 3_600_000).toISOString(), leaseMs: 60_000 });
    await reserveAttachmentRecord(store, volume.id, server, 'rw', orphan.id);
    for (const [name, data] of [['reserve', {}], ['initialize', { driverVolumeType: 'mem', transport: 'mem', hostRoot: '/var/lib/berth/simhost' }]] as const) {
      const seq = await store.operations.startStep(orphan.id, name, 'do');
      await store.operations.endStep(orphan.id, seq, { state: 'done', data });
    }
    let beats = 0;
    const heartbeat = store.operations.heartbeat!.bind(store.operations);
    store.operations.heartbeat = async (...args) => {
      beats += 1;
      return heartbeat(...args);
    };
    const stop = service.startReplica();
    await vi.waitFor(() => expect(beats).toBeGreaterThanOrEqual(4), { timeout: 20_000, interval: 20 });
    await stop();
    expect(warnings.filter((w) => w.includes('no run left here'))).toHaveLength(1);
    expect(await store.operations.require(orphan.id)).toMatchObject({ state: 'running', owner });
    await service.close();
  });
});
