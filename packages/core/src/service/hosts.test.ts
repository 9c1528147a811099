import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import { BerthError } from '../errors.js';
import { runHostStep } from '../host-steps/run-host-step.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import type { Host } from '../model.js';
import { pickHost } from './resolve.js';
import type { Store } from '../store.js';
import { memCatalog } from '../test-support.js';
import { workItemErrorOf } from '../work-item.js';

// `berth host forget` on the memory store: a service on host h-1 (in-process) whose host h-3 runs
// a `berth agent` (a loop in the test, as in agent-work.test.ts) until the test stops it — the
// machine dies. What forget must leave: no attachment on h-3, every export to h-3 removed, the
// volumes free to be attached elsewhere, and nothing running or pending for h-3.

const TEN_MINUTES = 600_000;
const OFFLINE_AFTER_MS = 45_000;

/**
 * The service (on h-1), h-3's agent, and what the test needs to kill it. `calls` names the mem
 * drivers' calls that change something (`terminate`, `connect`, ...), the service's and h-3's alike.
 */
async function fleet(options: { failDisconnect?: BerthError; terminateFails?: () => boolean } = {}) {
  const store = createMemoryStore();
  const config = resolveConfig(
    {
      dataDir: '/nonexistent/berth-unit',
      defaultBackend: 'mem',
      consumer: 'mem',
      operationTimeoutMs: 60_000,
      agent: { leaseMs: TEN_MINUTES, pollWaitMs: 1_000, offlineAfterMs: OFFLINE_AFTER_MS },
      api: { tokens: [{ name: 'agent-h3', sha256: 'a'.repeat(64), role: 'agent', host: 'h-3' }] },
    },
    {},
  );
  const calls: string[] = [];
  const here = new Map<string, Device>();
  const catalog = memCatalog(here, undefined, { calls });
  if (options.terminateFails) {
    const backend = catalog.backend('mem');
    const terminate = backend.terminateConnection.bind(backend);
    backend.terminateConnection = async (volume, connector, signal) => {
      if (options.terminateFails?.()) throw new BerthError('BACKEND_ERROR', 'the array did not answer');
      return terminate(volume, connector, signal);
    };
  }
  const service = new BerthServiceImpl(config, store, catalog, { hostname: 'h-1', ips: [], platform: 'x86_64', osType: 'linux' }, silentLogger);
  const session = await service.agentWork.register('h-3', { instance: 'boot-1', version: '0.1.0', connector: { host: 'h-3', initiator: 'iqn.2026-01.test:h-3' }, transports: ['mem'], consumers: ['mem'] });
  const there = new Map<string, Device>();
  const h3 = { catalog: memCatalog(there), logger: silentLogger, baseConnector: () => ({ host: 'h-3' }) };
  const stop = new AbortController();
  const agent = (async () => {
    while (!stop.signal.aborted) {
      for (const { item, payload } of await service.agentWork.claim('h-3', session.worker, { waitMs: 1_000, limit: 4, signal: stop.signal })) {
        try {
          if (item.step === 'disconnect' && options.failDisconnect) throw options.failDisconnect;
          const result = await runHostStep(h3, item.step as 'connect', payload, { operationId: item.operationId, signal: AbortSignal.timeout(10_000) });
          await service.agentWork.report('h-3', session.worker, item.id, { state: 'done', result: result as Record<string, unknown> });
        } catch (error) {
          await service.agentWork.report('h-3', session.worker, item.id, { state: 'failed', error: workItemErrorOf(error) });
        }
      }
    }
  })();
  await service.createServer({ name: 'web-7', host: 'h-3' });
  let dead = false;
  /** h-3 dies: its agent stops, and it was last heard from an hour ago (the store's reads say so). */
  const kill = async (): Promise<void> => {
    stop.abort();
    await agent;
    if (!dead) silence(store, 'h-3', 3_600_000);
    dead = true;
  };
  const close = async (): Promise<void> => {
    await kill();
    await service.close();
  };
  return { service, store, calls, here, there, kill, close };
}

/** Make `name`'s agent read as last heard from `ms` ago (the store has no way to write that). */
function silence(store: Store, name: string, ms: number): void {
  const aged = (host: Host | undefined): Host | undefined =>
    host?.name === name && host.agent !== null ? { ...host, agent: { ...host.agent, lastSeenAt: new Date(Date.now() - ms).toISOString() } } : host;
  const get = store.hosts.get.bind(store.hosts);
  const findByName = store.hosts.findByName.bind(store.hosts);
  store.hosts.get = async (id) => aged(await get(id));
  store.hosts.findByName = async (hostName) => aged(await findByName(hostName));
}

/**
 * db1 attached to web-7 on h-3, then h-3's agent killed; `on`: the fields of a detach operation of
 * that attachment (owner and lease left to the test).
 */
async function attachedOnSilentHost({ service, store, kill }: Pick<Awaited<ReturnType<typeof fleet>>, 'service' | 'store' | 'kill'>) {
  const db1 = await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
  await service.attach({ volume: 'db1', server: 'web-7' });
  await kill();
  const h3 = (await store.hosts.findByName('h-3'))!;
  const web7 = await service.getServer('web-7');
  const [attachment] = await store.attachments.list({ hostId: h3.id });
  const on = { kind: 'detach' as const, volumeId: db1.id, serverId: web7.id, attachmentId: attachment!.id, hostId: h3.id, deadlineAt: new Date(Date.now() + 60_000).toISOString() };
  return { db1, h3, attachment: attachment!, on };
}

async function rejection(promise: Promise<unknown>): Promise<BerthError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!BerthError.is(error)) throw new Error(`expected a BerthError, got ${String(error)}`);
  return error;
}

describe('berth host forget', () => {
  it('refuses while the host\'s agent is online, and for the host berth runs on; nothing is changed', async () => {
    const { service, store, calls, close } = await fleet();
    try {
      await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
      await service.attach({ volume: 'db1', server: 'web-7' });
      const online = await rejection(service.forgetHost('h-3'));
      expect(online.code).toBe('CONFLICT');
      expect(online.details).toMatchObject({ reason: 'agent-online' });
      expect(online.hint).toContain('berth detach');
      await service.createServer({ name: 'vm-local' });
      const self = await rejection(service.forgetHost('h-1'));
      expect(self.details).toMatchObject({ reason: 'this-host' });
      expect((await rejection(service.forgetHost((await store.hosts.findByName('h-1'))!.id))).details).toMatchObject({ reason: 'this-host' });
      expect(calls).not.toContain('terminate');
      expect((await service.getVolume('db1')).status).toBe('in-use');
      expect((await service.listHosts()).map((h) => h.name)).toEqual(['h-1', 'h-3']);
      await service.detach({ volume: 'db1' });
    } finally {
      await close();
    }
  });

  it('drops the attachments of a dead host, removes their exports, and the volume attaches on another host', async () => {
    const { service, store, calls, here, kill, close } = await fleet();
    try {
      const db1 = await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
      const shared = await service.createVolume({ name: 'shared', sizeBytes: 2 ** 20, multiattach: true });
      await service.createServer({ name: 'web-8', host: 'h-3' });
      await service.createServer({ name: 'vm-local' });
      await service.attach({ volume: 'db1', server: 'web-7' });
      await service.attach({ volume: 'shared', server: 'web-7' });
      await service.attach({ volume: 'shared', server: 'web-8' });
      await service.attach({ volume: 'shared', server: 'vm-local' });
      const h3 = (await store.hosts.findByName('h-3'))!;
      expect(await store.devices.list({ hostId: h3.id })).toHaveLength(2);
      await kill();
      calls.length = 0;

      const report = await service.forgetHost('h-3');
      expect(report).toMatchObject({ host: { id: h3.id, name: 'h-3' }, alreadyGone: false, removed: true, operations: [], workItems: [], deviceRecords: 2, agentTokens: ['agent-h3'] });
      expect(report.servers.map((s) => s.name).sort()).toEqual(['web-7', 'web-8']);
      const byVolume = report.attachments.map((a) => `${a.volume}@${a.server}:${a.status}:${a.export}:${a.state}:${a.volumeStatus}`).sort();
      // The two attachments of `shared` on h-3 share one export: kept for the second, removed with it.
      expect(byVolume).toEqual(['db1@web-7:attached:terminated:dropped:available', 'shared@web-7:attached:shared:dropped:in-use', 'shared@web-8:attached:terminated:dropped:in-use']);
      // Two exports to h-3 removed, nothing asked of h-3 (no disconnect, no unpublish), nothing of this host touched.
      expect(calls).toEqual(['terminate', 'terminate']);
      expect([...here.keys()]).toEqual([`/dev/mem-${shared.id}`]);
      expect(JSON.stringify(report)).not.toContain('iqn.2026-01.test:h-3');

      expect((await service.getVolume('db1')).status).toBe('available');
      expect((await service.getVolume('shared')).status).toBe('in-use');
      expect((await service.listAttachments()).map((a) => a.serverId)).toEqual([(await service.getServer('vm-local')).id]);
      expect((await service.listHosts()).map((h) => h.name)).toEqual(['h-1']);
      expect(await service.listServers()).toHaveLength(1);
      expect(await store.devices.list({ hostId: h3.id })).toEqual([]);

      // db1 goes to another host now, and leaves it as usual (its storage too: no device record holds it).
      const attached = await service.attach({ volume: 'db1', server: 'vm-local' });
      expect(attached.attachment?.status).toBe('attached');
      expect(here.has(`/dev/mem-${db1.id}`)).toBe(true);
      await service.detach({ volume: 'db1' });
      await service.deleteVolume('db1');

      // Twice is fine: nothing left to do.
      const again = await service.forgetHost('h-3');
      expect(again).toMatchObject({ host: { id: null, name: 'h-3' }, alreadyGone: true, removed: false, attachments: [], agentTokens: ['agent-h3'] });
      await service.detach({ volume: 'shared' });
      // A name no host can have (nor an id) is a mistake, not a host already forgotten; a server
      // cannot name one either.
      const typo = await rejection(service.forgetHost('bad name!'));
      expect(typo.code).toBe('VALIDATION');
      expect(typo.message).toContain('must be a host name (RFC 1123)');
      expect((await rejection(service.createServer({ name: 'web-9', host: 'bad name!' }))).code).toBe('VALIDATION');
    } finally {
      await close();
    }
  });

  it('finishes what a forced detach could not without the host: error_detaching attachments go, the volume is available', async () => {
    const held = new BerthError('DRIVER_ERROR', 'logout failed: the session is gone');
    const { service, calls, kill, close } = await fleet({ failDisconnect: held });
    try {
      await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
      await service.attach({ volume: 'db1', server: 'web-7' });
      const forced = await rejection(service.detach({ volume: 'db1', force: true }));
      expect(forced.message).toContain('forced detach finished with errors');
      expect((await service.listAttachments({ volume: 'db1' }))[0]?.status).toBe('error_detaching');
      expect((await service.getVolume('db1')).status).toBe('error');
      await kill();

      const report = await service.forgetHost('h-3');
      expect(report.removed).toBe(true);
      expect(report.attachments).toEqual([expect.objectContaining({ status: 'error_detaching', export: 'terminated', state: 'dropped', volumeStatus: 'available' })]);
      expect(calls.filter((c) => c === 'terminate')).toHaveLength(2);
      expect((await service.getVolume('db1')).status).toBe('available');
      expect(await service.listAttachments()).toEqual([]);
    } finally {
      await close();
    }
  });

  it('keeps an attachment whose export cannot be removed, and the host with it; run again, it finishes', async () => {
    let arrayDown = true;
    const { service, kill, close } = await fleet({ terminateFails: () => arrayDown });
    try {
      await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
      await service.attach({ volume: 'db1', server: 'web-7' });
      await kill();
      const first = await service.forgetHost('h-3');
      expect(first.removed).toBe(false);
      expect(first.attachments).toEqual([expect.objectContaining({ export: 'failed', state: 'failed', errorCode: 'BACKEND_ERROR', error: 'the array did not answer' })]);
      expect(first.servers).toEqual([]);
      const [kept] = await service.listAttachments({ volume: 'db1' });
      expect(kept).toMatchObject({ status: 'error_detaching', error: expect.stringContaining('host h-3 forgotten; its export could not be removed') });
      expect((await service.getVolume('db1')).status).toBe('error');
      expect((await service.listHosts()).map((h) => h.name)).toContain('h-3');

      arrayDown = false;
      const second = await service.forgetHost('h-3');
      expect(second).toMatchObject({ removed: true, attachments: [expect.objectContaining({ status: 'error_detaching', export: 'terminated', state: 'dropped', volumeStatus: 'available' })] });
      expect((await service.getVolume('db1')).status).toBe('available');
    } finally {
      await close();
    }
  });

  it('refuses while a live process runs an operation on the host; ends one whose process died and cancels its work', async () => {
    const { service, store, calls, kill, close } = await fleet();
    try {
      const db1 = await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
      await service.attach({ volume: 'db1', server: 'web-7' });
      const attach = (await store.operations.list({ kind: 'attach' }))[0]!;
      await kill();
      const h3 = (await store.hosts.findByName('h-3'))!;
      const web7 = await service.getServer('web-7');
      const [attachment] = await store.attachments.list({ hostId: h3.id });

      // A detach of db1 in flight in this very process (its owner): not to be trampled.
      const detach = await store.operations.create({ kind: 'detach', volumeId: db1.id, serverId: web7.id, attachmentId: attachment!.id, hostId: h3.id, owner: attach.owner, deadlineAt: new Date(Date.now() + 60_000).toISOString() });
      const item = await store.workItems!.create({ operationId: detach.id, hostId: h3.id, step: 'unpublish' });
      const live = await rejection(service.forgetHost('h-3'));
      expect(live.code).toBe('CONFLICT');
      expect(live.details).toMatchObject({ reason: 'operations-running', operations: [detach.id] });
      expect(live.hint).toContain('berth host forget h-3');
      expect((await store.workItems!.require(item.id)).state).toBe('pending');
      expect((await store.attachments.require(attachment!.id)).status).toBe('attached');
      expect(calls).not.toContain('terminate');

      // Its process dies (a pid that runs nowhere on this host): forget ends it, journalled.
      await store.operations.setOwner(detach.id, '4194303@h-1', attach.owner);
      const report = await service.forgetHost('h-3');
      expect(report).toMatchObject({ removed: true, operations: [{ id: detach.id, kind: 'detach' }] });
      const ended = await store.operations.require(detach.id);
      expect(ended).toMatchObject({ state: 'failed', error: { code: 'CANCELLED' } });
      expect(ended.error?.message).toContain('host h-3 was forgotten');
      expect(ended.steps.map((s) => `${s.name}:${s.phase}:${s.state}`)).toEqual(['forget_host:undo:done']);
      // Its item was cancelled, and went with the host.
      expect(await store.workItems!.list({ operationId: detach.id })).toEqual([]);
      expect((await service.getVolume('db1')).status).toBe('available');
      expect(await store.operations.list({ state: 'running' })).toEqual([]);
    } finally {
      await close();
    }
  });

  it('cancels the host\'s stray work items and removes an attachment berth never exported (reserved)', async () => {
    const { service, store, calls, kill, close } = await fleet();
    try {
      await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
      const reserved = await service.reserveAttachment({ volume: 'db1', server: 'web-7' });
      expect((await service.getVolume('db1')).status).toBe('reserved');
      await kill();
      const h3 = (await store.hosts.findByName('h-3'))!;
      const old = await store.operations.create({ kind: 'reconcile', hostId: h3.id, deadlineAt: new Date().toISOString() });
      await store.operations.finish(old.id, { state: 'failed' });
      const stray = await store.workItems!.create({ operationId: old.id, hostId: h3.id, step: 'host_facts' });
      const report = await service.forgetHost(h3.id);
      expect(report).toMatchObject({ removed: true, workItems: [{ id: stray.id, step: 'host_facts' }] });
      expect(report.attachments).toEqual([expect.objectContaining({ id: reserved.attachment.id, status: 'reserved', export: 'none', state: 'dropped', volumeStatus: 'available' })]);
      expect(calls).not.toContain('terminate');
      expect((await service.getVolume('db1')).status).toBe('available');
    } finally {
      await close();
    }
  });

  it('refuses a host with no agent record while it has attachments (berth cannot tell it is dead), unless the caller asserts it', async () => {
    const { service, calls, close } = await fleet();
    try {
      await service.createVolume({ name: 'db5', sizeBytes: 2 ** 20 });
      // h-5 never ran an agent (another replica's own host, an embedded berth's): an orchestrator attached there.
      await service.createServer({ name: 'vm-5', host: 'h-5' });
      const { attachment } = await service.reserveAttachment({ volume: 'db5', server: 'vm-5' });
      await service.initializeAttachment(attachment.id, { host: 'h-5', initiator: 'iqn.2026-01.test:h-5' });
      await service.completeAttachment(attachment.id);
      calls.length = 0;

      const unknown = await rejection(service.forgetHost('h-5'));
      expect(unknown.code).toBe('CONFLICT');
      expect(unknown.details).toMatchObject({ reason: 'liveness-unknown' });
      expect(unknown.message).toContain('no berth agent');
      expect(unknown.hint).toContain('berth host forget h-5 --assume-dead');
      expect(unknown.hint).toContain('fence the machine first');
      expect(calls).not.toContain('terminate');
      expect((await service.getVolume('db5')).status).toBe('in-use');
      expect((await rejection(service.forgetHost('h-5', { assumeDead: 'yes' } as never))).code).toBe('VALIDATION');
      expect((await rejection(service.forgetHost('h-5', { assumeDead: true, force: true } as never))).code).toBe('VALIDATION');

      const report = await service.forgetHost('h-5', { assumeDead: true });
      expect(report).toMatchObject({ removed: true, attachments: [expect.objectContaining({ volume: 'db5', export: 'terminated', state: 'dropped', volumeStatus: 'available' })] });
      expect(calls).toEqual(['terminate']);

      // One with nothing attached and nothing running loses nothing: it goes (with its servers) without the assertion.
      await service.createServer({ name: 'vm-6', host: 'h-6' });
      expect(await service.forgetHost('h-6')).toMatchObject({ removed: true, servers: [{ name: 'vm-6' }] });
    } finally {
      await close();
    }
  });

  it('checks the agent again before each export is removed and before the host goes: back online, it stops there', async () => {
    let onTerminate = (): void => undefined;
    const { service, store, calls, kill, close } = await fleet({
      terminateFails: () => {
        onTerminate();
        return false;
      },
    });
    try {
      await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
      await service.createVolume({ name: 'db2', sizeBytes: 2 ** 20 });
      await service.attach({ volume: 'db1', server: 'web-7' });
      await service.attach({ volume: 'db2', server: 'web-7' });
      await kill();
      calls.length = 0;
      // The first export removal takes long enough for h-3 to boot again: its agent is heard from.
      const get = store.hosts.get.bind(store.hosts);
      onTerminate = () => {
        store.hosts.get = async (id) => {
          const host = await get(id);
          return host?.agent ? { ...host, agent: { ...host.agent, lastSeenAt: new Date().toISOString() } } : host;
        };
      };
      const back = await rejection(service.forgetHost('h-3'));
      expect(back.code).toBe('CONFLICT');
      expect(back.message).toContain('came back');
      expect(back.details).toMatchObject({ reason: 'agent-online', dropped: [expect.any(String)] });
      // One export removed, the other attachment untouched, the host kept.
      expect(calls).toEqual(['terminate']);
      const left = await service.listAttachments();
      expect(left.map((a) => a.status)).toEqual(['attached']);
      expect((await service.listHosts()).map((h) => h.name)).toContain('h-3');

      // The same right before the host goes: its one attachment dropped, then it came back.
      store.hosts.get = get;
      onTerminate = () => undefined;
      const last = await service.listAttachments();
      onTerminate = () => {
        store.hosts.get = async (id) => {
          const host = await get(id);
          return host?.agent ? { ...host, agent: { ...host.agent, lastSeenAt: new Date().toISOString() } } : host;
        };
      };
      const atEnd = await rejection(service.forgetHost('h-3'));
      expect(atEnd.details).toMatchObject({ reason: 'agent-online', dropped: [last[0]!.id] });
      expect(await service.listAttachments()).toEqual([]);
      expect((await service.listHosts()).map((h) => h.name)).toContain('h-3');
    } finally {
      await close();
    }
  });

  it('ends an abandoned operation in one transaction: a failed write leaves it its dead owner\'s, and forget runs again', async () => {
    const { service, store, kill, close } = await fleet();
    try {
      const { h3, on } = await attachedOnSilentHost({ service, store, kill });
      const dead = '4194303@h-1';
      const detach = await store.operations.create({ ...on, owner: dead });
      const item = await store.workItems!.create({ operationId: detach.id, hostId: h3.id, step: 'unpublish' });

      // The database fails under the operation's end (its last write).
      const finish = store.operations.finish.bind(store.operations);
      store.operations.finish = async () => {
        throw new BerthError('INTERNAL', 'the database went away');
      };
      expect((await rejection(service.forgetHost('h-3'))).message).toContain('the database went away');
      store.operations.finish = finish;
      // Nothing of it stayed: not this process's (which would renew it for good), its item pending, no journal row.
      const kept = await store.operations.require(detach.id);
      expect(kept).toMatchObject({ state: 'running', owner: dead, steps: [] });
      expect((await store.workItems!.require(item.id)).state).toBe('pending');

      const report = await service.forgetHost('h-3');
      expect(report).toMatchObject({ removed: true, operations: [{ id: detach.id, kind: 'detach' }] });
      expect((await store.operations.require(detach.id)).state).toBe('failed');
    } finally {
      await close();
    }
  });

  it('judges an operation a berth on the forgotten host owns by its lease, or by the caller\'s assertion without one', async () => {
    const { service, store, kill, close } = await fleet();
    try {
      const { on } = await attachedOnSilentHost({ service, store, kill });

      // An embedded berth that ran on h-3 itself (a shared store), no lease: nothing here can tell it died.
      const unleased = await store.operations.create({ ...on, owner: '4242@h-3#99' });
      const refused = await rejection(service.forgetHost('h-3'));
      expect(refused.details).toMatchObject({ reason: 'operations-running', operations: [unleased.id] });
      expect(refused.hint).toContain('berth host forget h-3 --assume-dead');
      // A replica on h-3 whose lease still runs: alive, whatever the caller says.
      const leased = await store.operations.create({ ...on, owner: '4243@h-3', leaseMs: TEN_MINUTES });
      expect((await rejection(service.forgetHost('h-3', { assumeDead: true }))).details).toMatchObject({ reason: 'operations-running', operations: [leased.id] });
      await store.operations.finish(leased.id, { state: 'failed' });
      // One whose lease passed: its replica stopped renewing it.
      const expired = await store.operations.create({ ...on, owner: '4244@h-3', leaseMs: 0 });
      expect((await rejection(service.forgetHost('h-3'))).details).toMatchObject({ operations: [unleased.id] });

      const report = await service.forgetHost('h-3', { assumeDead: true });
      expect(report.removed).toBe(true);
      expect(report.operations.map((o) => o.id).sort()).toEqual([unleased.id, expired.id].sort());
      expect(await store.operations.list({ state: 'running' })).toEqual([]);
    } finally {
      await close();
    }
  });

  it('does not take over an operation whose owner on the forgotten host renewed its lease after it was judged', async () => {
    const { service, store, kill, close } = await fleet();
    try {
      const { attachment, on } = await attachedOnSilentHost({ service, store, kill });
      const owner = '4245@h-3';
      const op = await store.operations.create({ ...on, owner, leaseMs: 0 });
      // The owner's event loop stalled past its lease; it renews right after forget judged it dead.
      const leaseExpiry = store.operations.leaseExpiry!.bind(store.operations);
      let reads = 0;
      store.operations.leaseExpiry = async (id) => {
        const expiry = await leaseExpiry(id);
        if (id === op.id && ++reads === 1) await store.operations.heartbeat!(owner, TEN_MINUTES);
        return expiry;
      };
      const refused = await rejection(service.forgetHost('h-3'));
      expect(refused.details).toMatchObject({ reason: 'operations-running', operations: [op.id] });
      expect(await store.operations.get(op.id)).toMatchObject({ state: 'running', owner });
      expect(await store.attachments.get(attachment!.id)).toBeDefined();
    } finally {
      await close();
    }
  });

  it('resolves a ref as every client does (pickHost): a UUID-shaped ref is an id only — a host named like another host\'s id is never forgotten in its place — and a new server cannot name its host like an id', async () => {
    const { service, store, close } = await fleet();
    try {
      const h3 = (await store.hosts.findByName('h-3'))!;
      expect((await rejection(service.createServer({ name: 'vm-v', host: h3.id }))).code).toBe('VALIDATION');
      // Rows as an older berth let a server make them: a host, and a decoy named with its id.
      const target = await store.hosts.create({ name: 'h-9' });
      const decoy = await store.hosts.create({ name: target.id });
      const hosts = await service.listHosts();
      expect(pickHost(hosts, target.id)?.name).toBe('h-9');
      expect(pickHost(hosts, decoy.id)?.id).toBe(decoy.id);
      expect((await service.forgetHost(target.id))).toMatchObject({ alreadyGone: false, removed: true, host: { name: 'h-9' } });
      // Repeated ("safe to repeat"): already gone — before, the decoy was forgotten in its place.
      expect((await service.forgetHost(target.id))).toMatchObject({ alreadyGone: true, removed: false });
      expect(await store.hosts.get(decoy.id)).toBeDefined();
      const online = await rejection(service.forgetHost(h3.id));
      expect(online.details).toMatchObject({ hostId: h3.id, reason: 'agent-online' });
    } finally {
      await close();
    }
  });

  it('refuses an empty host name with VALIDATION', async () => {
    const { service, close } = await fleet();
    try {
      expect((await rejection(service.forgetHost('  '))).code).toBe('VALIDATION');
    } finally {
      await close();
    }
  });
});

describe('an attach or detach on a host whose agent is offline', () => {
  it('is refused at once (UNAVAILABLE, naming the host and when it was last heard from), nothing changed, instead of waiting out the deadline', async () => {
    const { service, calls, kill, close } = await fleet();
    try {
      await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
      await service.createVolume({ name: 'db2', sizeBytes: 2 ** 20 });
      await service.attach({ volume: 'db1', server: 'web-7' });
      // h-3 dies: silent for an hour, longer than agent.offlineAfterMs.
      await kill();
      const before = calls.length;
      const started = Date.now();
      const attach = await rejection(service.attach({ volume: 'db2', server: 'web-7' }));
      expect(attach.code).toBe('UNAVAILABLE');
      expect(attach.message).toMatch(/^host h-3's agent is offline \(last heard from 36\d\d s ago\): the attach was not started there, nothing was changed$/);
      expect(attach.hint).toBe('start `berth agent` on h-3, then attach again');
      expect(attach.details).toMatchObject({ reason: 'agent-offline', offlineAfterMs: OFFLINE_AFTER_MS });
      const detach = await rejection(service.detach({ volume: 'db1' }));
      expect(detach.code).toBe('UNAVAILABLE');
      expect(detach.hint).toContain('berth host forget h-3');
      // Long before the deadline (a minute): nothing was queued for the agent, nothing touched.
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(calls.slice(before)).toEqual([]);
      expect((await service.getVolume('db2')).status).toBe('available');
      expect((await service.getVolume('db1')).status).toBe('in-use');
      expect((await service.listAttachments({ volume: 'db1' }))[0]?.status).toBe('attached');
    } finally {
      await close();
    }
  });
});
