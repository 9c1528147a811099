import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { hostChannel } from '../agent-protocol.js';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import { BerthError } from '../errors.js';
import { runHostStep } from '../host-steps/run-host-step.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import { memCatalog } from '../test-support.js';
import { workItemErrorOf } from '../work-item.js';
import { machineChange } from './agent-work.js';

// The API side of the agent protocol and the replica waiting on it, in one process (what
// `berth serve` is on SQLite): an agent's report through the service wakes the waiting operation
// at once — the agents' lease here is ten minutes, so an operation that only learned of a result
// at its lease's end would never finish within the test's time.

const TEN_MINUTES = 600_000;

/** A service on the memory store whose agents' leases last ten minutes (nothing expires in a test). */
function agentService(more: { operationTimeoutMs?: number } = {}) {
  const store = createMemoryStore();
  const config = resolveConfig(
    { dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', ...more, agent: { leaseMs: TEN_MINUTES, pollWaitMs: 1_000, offlineAfterMs: TEN_MINUTES } },
    {},
  );
  const service = new BerthServiceImpl(config, store, memCatalog(new Map()), { hostname: 'h-1', ips: [], platform: 'x86_64', osType: 'linux' }, silentLogger);
  return { store, service };
}

/** A service on the memory store, h-3's agent registered with it, and that agent's loop. */
async function serveWithAgent(failDisconnect?: BerthError) {
  const { service } = agentService({ operationTimeoutMs: 60_000 });
  const session = await service.agentWork.register('h-3', { instance: 'boot-1', version: '0.1.0', connector: { host: 'h-3' }, transports: ['mem'], consumers: ['mem'] });
  const there = new Map<string, Device>();
  const h3 = { catalog: memCatalog(there), logger: silentLogger, baseConnector: () => ({ host: 'h-3' }) };
  const stop = new AbortController();
  // The agent: long-poll, run each item with h-3's own drivers, report through the service.
  const agent = (async () => {
    while (!stop.signal.aborted) {
      for (const { item, payload } of await service.agentWork.claim('h-3', session.worker, { waitMs: 1_000, limit: 4, signal: stop.signal })) {
        try {
          if (item.step === 'disconnect' && failDisconnect) throw failDisconnect;
          const result = await runHostStep(h3, item.step as 'connect', payload, { operationId: item.operationId, signal: AbortSignal.timeout(10_000) });
          await service.agentWork.report('h-3', session.worker, item.id, { state: 'done', result: result as Record<string, unknown> });
        } catch (error) {
          await service.agentWork.report('h-3', session.worker, item.id, { state: 'failed', error: workItemErrorOf(error) });
        }
      }
    }
  })();
  await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
  await service.createServer({ name: 'web-7', host: 'h-3' });
  const close = async (): Promise<void> => {
    stop.abort();
    await agent;
    await service.close();
  };
  return { service, there, close };
}

describe('the agent protocol served in the waiting process', () => {
  it("an agent's reports wake the operation at once (no lease-long wait): attach and detach on h-3", async () => {
    const { service, there, close } = await serveWithAgent();
    try {
      const attached = await service.attach({ volume: 'db1', server: 'web-7' });
      expect(attached.attachment?.status).toBe('attached');
      expect([...there.keys()]).toEqual([`/dev/mem-${attached.volume.id}`]);
      await service.detach({ volume: 'db1' });
      expect(there.size).toBe(0);
    } finally {
      await close();
    }
  });

  it("a report of a disconnect that touched nothing (untouched) leaves the attachment attached, through the service's result", async () => {
    const busy = new BerthError('CONFLICT', 'the device is held open by pid 42', { hint: 'close it, then detach again', details: { untouched: true } });
    const { service, there, close } = await serveWithAgent(busy);
    try {
      await service.attach({ volume: 'db1', server: 'web-7' });
      const error = (await service.detach({ volume: 'db1' }).catch((e: unknown) => e)) as BerthError;
      expect(error.code).toBe('CONFLICT');
      expect(error.hint).toBe('close it, then detach again');
      expect((await service.listAttachments({ volume: 'db1' }))[0]?.status).toBe('attached');
      expect(there.size).toBe(1);
    } finally {
      await close();
    }
  });
});

describe('a replaced agent', () => {
  it('its waiting claim is answered with CONFLICT at once, and the work made after goes to its successor only', async () => {
    const { store, service } = agentService();
    const registration = { version: '0.1.0', connector: { host: 'h-3' }, transports: ['mem'], consumers: ['mem'] };
    try {
      const old = await service.agentWork.register('h-3', { instance: 'boot-1', ...registration });
      const started = Date.now();
      const waiting = service.agentWork.claim('h-3', old.worker, { waitMs: 20_000, limit: 4 }).then(
        (items) => ({ items, error: undefined }),
        (error: unknown) => ({ items: [], error: error as BerthError }),
      );
      await new Promise((resolve) => setTimeout(resolve, 50));
      const successor = await service.agentWork.register('h-3', { instance: 'boot-2', ...registration });
      // Work for the host right after the registration: the replaced worker must not get it.
      const operation = await store.operations.create({ kind: 'attach', hostId: successor.hostId, owner: 'api-1', leaseMs: TEN_MINUTES, deadlineAt: '2030-01-01T00:00:00.000Z' });
      const item = await store.workItems!.create({ operationId: operation.id, hostId: successor.hostId, step: 'host_facts', payload: {} });
      // Woken by the registration, its long-poll answers nothing (a woken long-poll never claims);
      // its next claim, sent at once by an agent, is refused.
      const answer = await waiting;
      expect(answer.items.map((w) => w.item.id)).toEqual([]);
      expect(answer.error).toBeUndefined();
      expect(Date.now() - started).toBeLessThan(5_000);
      // Its calls are refused, and the item waits for the successor.
      await expect(service.agentWork.claim('h-3', old.worker, { waitMs: 0, limit: 4 })).rejects.toMatchObject({ code: 'CONFLICT' });
      const claimed = await service.agentWork.claim('h-3', successor.worker, { waitMs: 0, limit: 4 });
      expect(claimed.map((w) => w.item.id)).toEqual([item.id]);
      await expect(service.agentWork.report('h-3', old.worker, item.id, { state: 'done', result: { listings: [] } })).rejects.toMatchObject({ code: 'CONFLICT' });
      await expect(service.agentWork.renew('h-3', old.worker, item.id)).rejects.toMatchObject({ code: 'CONFLICT' });
    } finally {
      await service.close();
    }
  });
});

describe('a report sent twice', () => {
  it('is accepted again when the item ended as reported by this worker (an agent that moved on from a silent replica); any other is CONFLICT', async () => {
    const { store, service } = agentService();
    const registration = { version: '0.1.0', connector: { host: 'h-3' }, transports: ['mem'], consumers: ['mem'] };
    try {
      const session = await service.agentWork.register('h-3', { instance: 'boot-1', ...registration });
      const operation = await store.operations.create({ kind: 'attach', hostId: session.hostId, owner: 'api-1', leaseMs: TEN_MINUTES, deadlineAt: '2030-01-01T00:00:00.000Z' });
      const item = await store.workItems!.create({ operationId: operation.id, hostId: session.hostId, step: 'host_facts', payload: {} });
      const claimed = await service.agentWork.claim('h-3', session.worker, { waitMs: 0, limit: 1 });
      expect(claimed.map((w) => w.item.id)).toEqual([item.id]);
      const outcome = { state: 'done' as const, result: { listings: [] } };
      await service.agentWork.report('h-3', session.worker, item.id, outcome);
      const first = await store.workItems!.get(item.id);
      await service.agentWork.report('h-3', session.worker, item.id, outcome);
      // Nothing written the second time.
      expect(await store.workItems!.get(item.id)).toEqual(first);
      // Another outcome, or another worker, is not the same report.
      await expect(service.agentWork.report('h-3', session.worker, item.id, { state: 'failed' })).rejects.toMatchObject({ code: 'CONFLICT' });
      const successor = await service.agentWork.register('h-3', { instance: 'boot-2', ...registration });
      await expect(service.agentWork.report('h-3', successor.worker, item.id, outcome)).rejects.toMatchObject({ code: 'CONFLICT' });
    } finally {
      await service.close();
    }
  });
});

describe('a long-poll woken by new work', () => {
  it('answers nothing and claims nothing (its answer may sit unread in a frozen agent): the item stays pending for the claim the agent sends next', async () => {
    const { store, service } = agentService();
    try {
      const session = await service.agentWork.register('h-3', { instance: 'boot-1', version: '0.1.0', connector: { host: 'h-3' }, transports: ['mem'], consumers: ['mem'] });
      const started = Date.now();
      const waiting = service.agentWork.claim('h-3', session.worker, { waitMs: 20_000, limit: 4 });
      const operation = await store.operations.create({ kind: 'attach', hostId: session.hostId, owner: 'api-1', leaseMs: TEN_MINUTES, deadlineAt: '2030-01-01T00:00:00.000Z' });
      const item = await store.workItems!.create({ operationId: operation.id, hostId: session.hostId, step: 'host_facts', payload: {} });
      await store.notifications!.notify(hostChannel(session.hostId));
      expect(await waiting).toEqual([]);
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(await store.workItems!.get(item.id)).toMatchObject({ state: 'pending', attempts: 0 });
      const claimed = await service.agentWork.claim('h-3', session.worker, { waitMs: 20_000, limit: 4 });
      expect(claimed.map((w) => w.item.id)).toEqual([item.id]);
      expect(await store.workItems!.get(item.id)).toMatchObject({ state: 'claimed', attempts: 1 });
    } finally {
      await service.close();
    }
  });
});

describe('an agent whose host is not registered', () => {
  it('tells a host known without an agent (no-agent) from one that is gone — forgotten after its agent registered (unknown-host)', async () => {
    const { store, service } = agentService();
    try {
      // h-4 is known (a server named it) but no agent ever registered for it.
      await service.createServer({ name: 'web-4', host: 'h-4' });
      const unregistered = (await service.agentWork.claim('h-4', 'boot-1', { waitMs: 0, limit: 4 }).catch((e: unknown) => e)) as BerthError;
      expect(unregistered).toMatchObject({ code: 'NOT_FOUND', message: 'no agent registered for host h-4', details: { kind: 'host', host: 'h-4', reason: 'no-agent' } });
      expect(unregistered.hint).toMatch(/^register first/);

      // h-3's agent registered, then the host was removed as `berth host forget` ends (the store's
      // `hosts.delete`, which takes the agent's registration with it) while the agent still ran.
      const session = await service.agentWork.register('h-3', { instance: 'boot-1', version: '0.1.0', connector: { host: 'h-3' }, transports: ['mem'], consumers: ['mem'] });
      await store.hosts.delete(session.hostId);
      for (const call of [
        () => service.agentWork.claim('h-3', session.worker, { waitMs: 0, limit: 4 }),
        () => service.agentWork.renew('h-3', session.worker, '00000000-0000-4000-8000-000000000000'),
        () => service.agentWork.report('h-3', session.worker, '00000000-0000-4000-8000-000000000000', { state: 'done', result: {} }),
      ]) {
        const gone = (await call().catch((e: unknown) => e)) as BerthError;
        expect(gone).toMatchObject({ code: 'NOT_FOUND', details: { kind: 'host', host: 'h-3', reason: 'unknown-host' } });
        expect(gone.message).toBe("host h-3 is not known to the API: no agent registered for it, or it was forgotten (berth host forget removes a host with its agent's registration)");
        expect(gone.hint).not.toMatch(/^register first/);
      }
    } finally {
      await service.close();
    }
  });
});

describe('an agent registering from another machine than the last one', () => {
  it('is said in a warning naming what changed (host name, initiator), and still registered; the same machine again is not', async () => {
    const warnings: string[] = [];
    const logger = { ...silentLogger, warn: (_obj: unknown, message?: string) => void (message?.includes('another machine') === true && warnings.push(message)), child: () => logger } as unknown as typeof silentLogger;
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem' }, {});
    const service = new BerthServiceImpl(config, createMemoryStore(), memCatalog(new Map()), { hostname: 'h-1', ips: [], platform: 'x86_64', osType: 'linux' }, logger);
    try {
      const register = (instance: string, connector: { host: string; initiator: string }) =>
        service.agentWork.register('h-3', { instance, version: '0.1.0', connector, transports: ['mem'], consumers: ['mem'] });
      await register('boot-1', { host: 'h-3', initiator: 'iqn.2026-12.test:h-3' });
      await register('boot-2', { host: 'h-3', initiator: 'iqn.2026-12.test:h-3' });
      expect(warnings).toEqual([]);
      const session = await register('boot-3', { host: 'other-machine', initiator: 'iqn.2026-12.test:h-3' });
      expect(session.worker).toBe('h-3/boot-3');
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/host h-3 runs on another machine than the last one \(host h-3 → other-machine\).*token is on the wrong machine/);
    } finally {
      await service.close();
    }
  });

  it('machineChange compares only what both connectors name', () => {
    expect(machineChange(null, { host: 'a' })).toBeUndefined();
    expect(machineChange({ host: 'a' }, { host: 'a', initiator: 'iqn.x' })).toBeUndefined();
    expect(machineChange({ host: 'a', initiator: 'iqn.x' }, { host: 'a', initiator: 'iqn.y' })).toEqual([{ field: 'initiator', from: 'iqn.x', to: 'iqn.y' }]);
  });
});
