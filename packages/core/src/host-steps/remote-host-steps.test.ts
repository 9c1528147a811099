import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BerthServiceImpl } from '../berth-service.js';
import { resolveConfig } from '../config.js';
import type { Device } from '../connection.js';
import { memCatalog } from '../test-support.js';
import { runHostStep } from './run-host-step.js';
import { hostChannel, WORK_DONE_CHANNEL } from '../agent-protocol.js';
import { BerthError } from '../errors.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import type { Host } from '../model.js';
import type { WorkItemRepository } from '../store.js';
import { workItemErrorOf, type WorkItem } from '../work-item.js';
import { OperationDeadlines, remoteHostSteps } from './remote-host-steps.js';
import { WorkItemWaiter } from './work-item-waiter.js';

// The remote executor against core's memory store (its work items and notifications pass the
// store conformance suite, as SQLite's and PostgreSQL's do): an agent here is the test itself
// claiming, completing or abandoning the items.

/** A memory store with the many-hosts members, a host h-3 with a registered agent, and one operation on it. */
async function world(agentLeaseMs = 60_000) {
  const store = createMemoryStore();
  const { workItems, notifications } = store;
  if (workItems === undefined || notifications === undefined) throw new Error('the memory store lost its work items');
  const created = await store.hosts.create({ name: 'h-3' });
  const host = (await store.hosts.recordAgent(created.id, { instance: 'agent-1', version: '0.1.0', transports: ['loop'], consumers: ['host'] })) as Host & { agent: NonNullable<Host['agent']> };
  const operation = await store.operations.create({ kind: 'attach', hostId: host.id, owner: 'test', deadlineAt: new Date(Date.now() + 60_000).toISOString() });
  const waiter = new WorkItemWaiter({ workItems, notifications }, silentLogger, agentLeaseMs);
  const steps = remoteHostSteps({ store, waiter, undoTimeoutMs: 60_000, offlineAfterMs: 45_000, deadlines: new OperationDeadlines() }, host);
  /** Resolves with the next item enqueued for h-3 (an agent's wake-up). */
  const nextItem = async (): Promise<WorkItem> => {
    const pending = await workItems.list({ hostId: host.id, state: 'pending' });
    if (pending[0]) return pending[0];
    return new Promise((resolve) => {
      void notifications.listen(hostChannel(host.id), () => void workItems.list({ hostId: host.id, state: 'pending' }).then((p) => p[0] && resolve(p[0])));
    });
  };
  /** An agent claims the next item of h-3 and reports `outcome`. */
  const agent = async (worker: string, outcome?: Parameters<WorkItemRepository['complete']>[2], leaseMs = 15_000): Promise<WorkItem> => {
    await nextItem();
    const [claimed] = await workItems.claim(host.id, worker, leaseMs);
    if (!claimed) throw new Error('nothing to claim');
    if (outcome) {
      await workItems.complete(claimed.id, worker, outcome);
      await notifications.notify(WORK_DONE_CHANNEL, claimed.id);
    }
    return claimed;
  };
  return { store, workItems, notifications, host, operationId: operation.id, steps, agent, nextItem, close: () => waiter.close() };
}

const connection = { driver_volume_type: 'file', data: { device_path: '/srv/v.img', auth_password: 's3cret' } };
const request = { transport: 'loop', connection, volumeId: randomUUID() };

describe('remote host steps', () => {
  it('enqueues the step for the host (no secrets stored), and answers the agent\'s result', async () => {
    const w = await world();
    const running = w.steps.run('connect', request, { operationId: w.operationId, signal: new AbortController().signal });
    const claimed = await w.agent('agent-1', { state: 'done', result: { device: { path: '/dev/loop7', type: 'block' } } });
    expect(await running).toEqual({ device: { path: '/dev/loop7', type: 'block' } });
    expect(claimed.payload).toMatchObject({ transport: 'loop', volumeId: request.volumeId, deadlineAt: expect.any(String) });
    expect(JSON.stringify(claimed.payload)).not.toContain('s3cret');
    expect(await w.steps.ran(w.operationId, 'connect')).toBe(true);
    await w.close();
  });

  it('a step asked for after the operation\'s deadline passed (recovery finishing a detach) gets an undo\'s budget, not the passed deadline', async () => {
    const w = await world();
    const late = await w.store.operations.create({ kind: 'detach', hostId: w.host.id, owner: 'test', deadlineAt: new Date(Date.now() - 60_000).toISOString() });
    const running = w.steps.run('disconnect', { ...request, force: true, inUse: [] }, { operationId: late.id, signal: new AbortController().signal });
    const claimed = await w.agent('agent-1', { state: 'done', result: { identityMismatch: false } });
    await running;
    // Before: the passed deadline, which the agent aborts the step at at once.
    expect(Date.parse(String((claimed.payload as { deadlineAt: string }).deadlineAt))).toBeGreaterThan(Date.now() + 30_000);
    await w.close();
  });

  it('fails with the agent\'s error, named with the host', async () => {
    const w = await world();
    const running = w.steps.run('connect', request, { operationId: w.operationId, signal: new AbortController().signal }).catch((e: unknown) => e);
    await w.agent('agent-1', { state: 'failed', error: { code: 'COMMAND_FAILED', message: 'losetup: no free loop device', hint: 'free one' } });
    const error = (await running) as BerthError;
    expect(error.code).toBe('COMMAND_FAILED');
    expect(error.message).toBe('on host h-3: losetup: no free loop device');
    expect(error.details).toMatchObject({ hostId: w.host.id, step: 'connect', ranOnHost: true });
    await w.close();
  });

  it("keeps the driver's untouched, code and hint through the item: a remote disconnect that touched nothing says so", async () => {
    const w = await world();
    const disconnect = { transport: 'loop', connection, volumeId: request.volumeId, device: { path: '/dev/loop7', type: 'block' as const }, force: false, inUse: [] };
    const running = w.steps.run('disconnect', disconnect, { operationId: w.operationId, signal: new AbortController().signal }).catch((e: unknown) => e);
    const busy = new BerthError('CONFLICT', '/dev/loop7 is held open by pid 42', { hint: 'close it (fuser -m /dev/loop7)', details: { untouched: true, pid: 42 } });
    const reported = workItemErrorOf(busy);
    expect(reported).toEqual({ code: 'CONFLICT', message: '/dev/loop7 is held open by pid 42', hint: 'close it (fuser -m /dev/loop7)', untouched: true });
    await w.agent('agent-1', { state: 'failed', error: reported });
    const error = (await running) as BerthError;
    expect(error.code).toBe('CONFLICT');
    expect(error.hint).toBe('close it (fuser -m /dev/loop7)');
    expect(error.details).toMatchObject({ hostId: w.host.id, step: 'disconnect', untouched: true });
    // A failure that does not say so may have touched the device: no untouched.
    expect(workItemErrorOf(new BerthError('DRIVER_ERROR', 'losetup -d failed'))).not.toHaveProperty('untouched');
    await w.close();
  });

  it("keeps a guest consumer's guestHoldsDevice and unplugRequested through the item: a remote unplug a paused guest left pending says so", async () => {
    const w = await world();
    // Any step's error carries them (here a disconnect's payload; the consumer's unpublish is the one that sets them).
    const running = w.steps.run('disconnect', { ...request, force: false, inUse: [] }, { operationId: w.operationId, signal: new AbortController().signal }).catch((e: unknown) => e);
    const paused = new BerthError('TIMEOUT', 'the guest of server vm-1 did not release the disk', { details: { guestHoldsDevice: true, unplugRequested: true, guestState: 'paused' } });
    const reported = workItemErrorOf(paused);
    expect(reported).toEqual({ code: 'TIMEOUT', message: 'the guest of server vm-1 did not release the disk', guestHoldsDevice: true, unplugRequested: true });
    await w.agent('agent-1', { state: 'failed', error: reported });
    const error = (await running) as BerthError;
    expect(error.code).toBe('TIMEOUT');
    expect(error.details).toMatchObject({ step: 'disconnect', guestHoldsDevice: true, unplugRequested: true });
    await w.close();
  });

  it("a step the caller cancelled (Ctrl-C) is CANCELLED, not a deadline: untouched when no agent picked it up, not when one was running it", async () => {
    const w = await world();
    const cancel = new AbortController();
    const pending = w.steps.run('disconnect', { ...request, force: false, inUse: [] }, { operationId: w.operationId, signal: cancel.signal }).catch((e: unknown) => e);
    const item = await w.nextItem();
    cancel.abort(new BerthError('CANCELLED', 'the detach was cancelled: interrupted (Ctrl-C)'));
    const error = (await pending) as BerthError;
    expect(error.code).toBe('CANCELLED');
    expect(error.message).toBe("the detach was cancelled: interrupted (Ctrl-C) (host h-3's agent had not picked up step disconnect)");
    expect(error.details).toMatchObject({ hostId: w.host.id, step: 'disconnect', workItemId: item.id, ranOnHost: false, untouched: true });
    expect(await w.workItems.get(item.id)).toMatchObject({ state: 'failed', attempts: 0 });

    const again = new AbortController();
    const claimed = w.steps.run('disconnect', { ...request, force: false, inUse: [] }, { operationId: w.operationId, signal: again.signal }).catch((e: unknown) => e);
    await w.agent('agent-1');
    again.abort(new BerthError('CANCELLED', 'the detach was cancelled: interrupted (Ctrl-C)'));
    const running = (await claimed) as BerthError;
    expect(running.code).toBe('CANCELLED');
    expect(running.message).toMatch(/\(host h-3's agent was running step disconnect\)$/);
    expect(running.details).toMatchObject({ ranOnHost: true });
    expect(running.details).not.toHaveProperty('untouched');
    await w.close();
  });

  it('a step no agent picked up before the deadline is cancelled, never ran, and names the host', async () => {
    const w = await world();
    const deadline = new AbortController();
    const running = w.steps.run('connect', request, { operationId: w.operationId, signal: deadline.signal }).catch((e: unknown) => e);
    const item = await w.nextItem();
    deadline.abort(new BerthError('TIMEOUT', 'the operation passed its deadline of 3000 ms'));
    const error = (await running) as BerthError;
    expect(error.code).toBe('TIMEOUT');
    // What is known, not "online" (an agent counts as offline only after 45 s, past many a deadline).
    expect(error.message).toMatch(/^host h-3's agent did not pick up step connect before the operation's deadline \(last heard from \d+ s ago\)$/);
    expect(error.details.agentSilentMs).toEqual(expect.any(Number));
    expect(error.hint).toMatch(/check that `berth agent` runs on h-3 \(start it if not; if it does, it is slow or stuck/);
    expect(error.details).toMatchObject({ hostId: w.host.id, step: 'connect', workItemId: item.id, ranOnHost: false });
    expect(await w.workItems.get(item.id)).toMatchObject({ state: 'failed', attempts: 0 });
    // An agent coming back finds nothing to run, and the undo knows nothing was done on the host.
    expect(await w.workItems.claim(w.host.id, 'agent-1', 15_000)).toEqual([]);
    expect(await w.steps.ran(w.operationId, 'connect')).toBe(false);
    await w.close();
  });

  it('an item left open by a wait that failed (not the deadline): asking whether it ran cancels it, so no agent runs it after the undo decided', async () => {
    const w = await world();
    // The wait failed for another reason than the deadline (the database failed under it): the
    // item stays pending; an agent back later would have connected a device nobody undoes.
    const item = await w.workItems.create({ operationId: w.operationId, hostId: w.host.id, step: 'connect', payload: {} });
    expect(await w.steps.ran(w.operationId, 'connect')).toBe(false);
    expect(await w.workItems.get(item.id)).toMatchObject({ state: 'failed', attempts: 0 });
    expect(await w.workItems.claim(w.host.id, 'agent-1', 15_000)).toEqual([]);
    // Claimed before the undo asked: cancelled too (its agent fenced), and it may have run.
    const claimed = await w.workItems.create({ operationId: w.operationId, hostId: w.host.id, step: 'connect', payload: {} });
    expect((await w.workItems.claim(w.host.id, 'agent-1', 15_000)).map((i) => i.id)).toEqual([claimed.id]);
    expect(await w.steps.ran(w.operationId, 'connect')).toBe(true);
    await expect(w.workItems.complete(claimed.id, 'agent-1', { state: 'done', result: {} })).rejects.toMatchObject({ code: 'CONFLICT' });
    await w.close();
  });

  it('a step claimed but unfinished at the deadline is cancelled (its agent fenced) and may have ran: its undo runs', async () => {
    const w = await world();
    const deadline = new AbortController();
    const running = w.steps.run('connect', request, { operationId: w.operationId, signal: deadline.signal }).catch((e: unknown) => e);
    const claimed = await w.agent('agent-1');
    deadline.abort(new BerthError('TIMEOUT', 'deadline'));
    const error = (await running) as BerthError;
    expect(error.message).toMatch(/did not finish step connect/);
    expect(error.details.ranOnHost).toBe(true);
    await expect(w.workItems.complete(claimed.id, 'agent-1', { state: 'done', result: {} })).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(await w.steps.ran(w.operationId, 'connect')).toBe(true);
    await w.close();
  });

  it('an agent that dies holding the item loses its lease: the item is pending again and the next agent runs it', async () => {
    // The waiter looks at a pending item again one agent lease later (a claim sends no notification).
    const w = await world(20);
    const running = w.steps.run('publish', { consumer: 'host', server: {} as never, attachment: {} as never, device: { path: '/dev/loop7', type: 'block' } }, {
      operationId: w.operationId,
      signal: new AbortController().signal,
    });
    // The first agent claims with a short lease and never reports.
    const first = await w.agent('agent-1', undefined, 20);
    // The next agent registers for the host (the dead one's claims are refused from then on).
    await w.store.hosts.recordAgent(w.host.id, { instance: 'agent-2', version: '0.1.0', transports: ['loop'], consumers: ['host'] });
    const second = await w.agent('agent-2', { state: 'done', result: { path: '/dev/berth/v' } });
    expect(second.id).toBe(first.id);
    expect(second.attempts).toBe(2);
    expect(await running).toEqual({ path: '/dev/berth/v' });
    await w.close();
  });
});

describe('remote host steps of an operation another replica took over', () => {
  it('a thawed replica creates no work item: the creation confirms the owner in its transaction, and nothing is written', async () => {
    const w = await world();
    // Replica `test` froze; `r1` took the operation over (and may have ended it already).
    await w.store.operations.setOwner(w.operationId, 'r1', 'test');
    for (const when of ['running for r1', 'ended by r1'] as const) {
      if (when === 'ended by r1') await w.store.operations.finish(w.operationId, { state: 'rolled_back', error: { code: 'CANCELLED', message: 'undone by r1' } });
      const running = w.steps.run('connect', request, { operationId: w.operationId, signal: new AbortController().signal, owner: 'test' });
      await expect(running).rejects.toMatchObject({ code: 'CONFLICT', details: { takenOver: true } });
    }
    expect(await w.workItems.list({ hostId: w.host.id })).toEqual([]);
    expect(await w.steps.ran(w.operationId, 'connect')).toBe(false);
    await w.close();
  });

  it('the owner that still holds the operation hands the step out as before', async () => {
    const w = await world();
    const running = w.steps.run('connect', request, { operationId: w.operationId, signal: new AbortController().signal, owner: 'test' });
    await w.agent('agent-1', { state: 'done', result: { device: { path: '/dev/loop7', type: 'block' } } });
    expect(await running).toEqual({ device: { path: '/dev/loop7', type: 'block' } });
    await w.close();
  });
});

describe('an attach to a server on a host with an agent', () => {
  it('runs the host steps on that host\'s agent (connector from its registration), and an agent offline rolls back naming the host', async () => {
    const w = await world();
    const here = new Map<string, Device>();
    const there = new Map<string, Device>();
    const options = { dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', undoTimeoutMs: 5_000 };
    const identity = { hostname: 'h-1', ips: [], platform: 'x86_64', osType: 'linux' };
    const service = new BerthServiceImpl(resolveConfig({ ...options, operationTimeoutMs: 30_000 }, {}), w.store, memCatalog(here), identity, silentLogger);
    await w.store.hosts.recordAgent(w.host.id, { instance: 'agent-1', version: '0.1.0', transports: ['mem'], consumers: ['mem'] });
    await w.store.hosts.setConnector(w.host.id, { host: 'h-3', initiator: 'iqn.2026-12.test:h-3' });
    await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
    await service.createServer({ name: 'web-7', host: 'h-3' });

    // h-3's agent: on each wake-up, claim and run what is there with h-3's own drivers, report.
    const h3 = { catalog: memCatalog(there), logger: silentLogger, baseConnector: () => ({ host: 'h-3' }) };
    const runAll = async (): Promise<void> => {
      for (const item of await w.workItems.claim(w.host.id, 'agent-1', 15_000, 10)) {
        const result = await runHostStep(h3, item.step as 'connect', item.payload, { operationId: item.operationId, signal: AbortSignal.timeout(5_000) });
        await w.workItems.complete(item.id, 'agent-1', { state: 'done', result: result as Record<string, unknown> });
        await w.notifications.notify(WORK_DONE_CHANNEL, item.id);
      }
    };
    const stop = await w.notifications.listen(hostChannel(w.host.id), () => void runAll());

    const attached = await service.attach({ volume: 'db1', server: 'web-7' });
    const journal = (await w.store.operations.require(attached.operation.id)).steps.filter((s) => s.phase === 'do');
    expect(journal.find((s) => s.name === 'dispatch')?.data).toEqual({ hostId: w.host.id, agent: 'agent-1' });
    expect(journal.find((s) => s.name === 'connector')?.data).toMatchObject({ source: 'registration', connector: { initiator: 'iqn.2026-12.test:h-3' } });
    expect([...there.keys()]).toEqual([`/dev/mem-${attached.volume.id}`]);
    expect(here.size).toBe(0);
    expect(attached.attachment?.publishedPath).toBe(`/dev/berth/dev/mem-${attached.volume.id}`);
    await service.detach({ volume: 'db1' });
    expect(there.size).toBe(0);
    const steps = (await w.workItems.list({ hostId: w.host.id })).filter((i) => i.operationId !== w.operationId);
    expect(steps.map((i) => `${i.step}:${i.state}`)).toEqual(['connect:done', 'publish:done', 'unpublish:done', 'disconnect:done']);

    // The agent stops: the next attach's connect is never picked up.
    await stop();
    const short = new BerthServiceImpl(resolveConfig({ ...options, operationTimeoutMs: 300 }, {}), w.store, memCatalog(here), identity, silentLogger);
    const error = (await short.attach({ volume: 'db1', server: 'web-7' }).catch((e: unknown) => e)) as BerthError;
    expect(error.code).toBe('TIMEOUT');
    expect(error.message).toMatch(/host h-3's agent did not pick up step connect/);
    expect((await short.getVolume('db1')).status).toBe('available');
    const op = await w.store.operations.require(String(error.details.operationId));
    expect(op.state).toBe('rolled_back');
    const items = await w.workItems.list({ operationId: op.id });
    expect(items.map((i) => `${i.step}:${i.state}:${i.attempts}`)).toEqual(['connect:failed:0']);

    // Attached while the agent runs, then it stops: the detach's unpublish is never picked up. Rolled
    // back at the deadline without asking the silent agent to publish again (nothing was taken
    // away there), so it says TIMEOUT, not "the rollback failed", and waits no undo deadline.
    const restart = await w.notifications.listen(hostChannel(w.host.id), () => void runAll());
    await service.attach({ volume: 'db1', server: 'web-7' });
    await restart();
    const started = Date.now();
    const refused = (await short.detach({ volume: 'db1' }).catch((e: unknown) => e)) as BerthError;
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(refused.code).toBe('TIMEOUT');
    expect(refused.message).toMatch(/host h-3's agent did not pick up step unpublish/);
    expect(refused.message).not.toMatch(/roll/);
    const detachOp = await w.store.operations.require(String(refused.details.operationId));
    expect(detachOp.state).toBe('rolled_back');
    expect((await w.workItems.list({ operationId: detachOp.id })).map((i) => `${i.step}:${i.state}:${i.attempts}`)).toEqual(['unpublish:failed:0']);
    expect((await short.listAttachments({ volume: 'db1' })).map((a) => a.status)).toEqual(['attached']);
    // Back: the agent runs again and the detach goes through.
    const again = await w.notifications.listen(hostChannel(w.host.id), () => void runAll());
    await service.detach({ volume: 'db1' });
    expect(there.size).toBe(0);
    await again();
    await short.close();
    await service.close();
    await w.close();
  });

  it("picks the transport among the agent's: one installed on the agent only is chosen, one it lacks is refused naming the host", async () => {
    const w = await world();
    const options = { dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', undoTimeoutMs: 5_000, operationTimeoutMs: 30_000 };
    const identity = { hostname: 'h-1', ips: [], platform: 'x86_64', osType: 'linux' };
    // This process has transport `mem` only; h-3's agent has `mem-rdma` only, the config names it for mem volumes.
    const config = resolveConfig({ ...options, transports: { mem: 'mem-rdma' } }, {});
    const service = new BerthServiceImpl(config, w.store, memCatalog(new Map()), identity, silentLogger);
    await w.store.hosts.recordAgent(w.host.id, { instance: 'agent-1', version: '0.1.0', transports: ['mem-rdma'], consumers: ['mem'] });
    await w.store.hosts.setConnector(w.host.id, { host: 'h-3' });
    await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
    await service.createServer({ name: 'web-7', host: 'h-3' });
    // h-3's agent: connects with its mem-rdma and publishes, as told.
    const seen: string[] = [];
    const runAll = async (): Promise<void> => {
      for (const item of await w.workItems.claim(w.host.id, 'agent-1', 15_000, 10)) {
        seen.push(`${item.step}:${String(item.payload.transport ?? '')}`);
        const result = item.step === 'connect' ? { device: { path: '/dev/rdma0', type: 'block' } } : item.step === 'publish' ? { path: '/dev/berth/rdma0' } : {};
        await w.workItems.complete(item.id, 'agent-1', { state: 'done', result });
        await w.notifications.notify(WORK_DONE_CHANNEL, item.id);
      }
    };
    const stop = await w.notifications.listen(hostChannel(w.host.id), () => void runAll());
    const attached = await service.attach({ volume: 'db1', server: 'web-7' });
    expect(attached.attachment).toMatchObject({ status: 'attached', transport: 'mem-rdma', publishedPath: '/dev/berth/rdma0' });
    expect(seen).toEqual(['connect:mem-rdma', 'publish:']);

    // A transport the agent lacks (forced with --transport) is refused before anything runs on the host.
    await service.createVolume({ name: 'db2', sizeBytes: 2 ** 20 });
    const error = (await service.attach({ volume: 'db2', server: 'web-7', transport: 'mem' }).catch((e: unknown) => e)) as BerthError;
    expect(error.code).toBe('CONFIG');
    expect(error.message).toBe("host h-3's agent has no transport mem (it has mem-rdma)");
    expect((await service.getVolume('db2')).status).toBe('available');
    expect(seen).toHaveLength(2);
    await stop();
    await service.close();
    await w.close();
  });

  it('a detach whose remote disconnect failed without touching the device rolls back to attached, as a local one does', async () => {
    const w = await world();
    const there = new Map<string, Device>();
    const options = { dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', undoTimeoutMs: 5_000, operationTimeoutMs: 30_000 };
    const identity = { hostname: 'h-1', ips: [], platform: 'x86_64', osType: 'linux' };
    const service = new BerthServiceImpl(resolveConfig(options, {}), w.store, memCatalog(new Map()), identity, silentLogger);
    await w.store.hosts.recordAgent(w.host.id, { instance: 'agent-1', version: '0.1.0', transports: ['mem'], consumers: ['mem'] });
    await w.store.hosts.setConnector(w.host.id, { host: 'h-3' });
    await service.createVolume({ name: 'db1', sizeBytes: 2 ** 20 });
    await service.createServer({ name: 'web-7', host: 'h-3' });
    // h-3's agent, whose device turns out held open when it comes to disconnect it.
    const h3 = { catalog: memCatalog(there), logger: silentLogger, baseConnector: () => ({ host: 'h-3' }) };
    const runAll = async (): Promise<void> => {
      for (const item of await w.workItems.claim(w.host.id, 'agent-1', 15_000, 10)) {
        try {
          if (item.step === 'disconnect') throw new BerthError('CONFLICT', 'the device is held open by pid 42', { hint: 'close it, then detach again', details: { untouched: true } });
          const result = await runHostStep(h3, item.step as 'connect', item.payload, { operationId: item.operationId, signal: AbortSignal.timeout(5_000) });
          await w.workItems.complete(item.id, 'agent-1', { state: 'done', result: result as Record<string, unknown> });
        } catch (error) {
          await w.workItems.complete(item.id, 'agent-1', { state: 'failed', error: workItemErrorOf(error) });
        }
        await w.notifications.notify(WORK_DONE_CHANNEL, item.id);
      }
    };
    const stop = await w.notifications.listen(hostChannel(w.host.id), () => void runAll());

    await service.attach({ volume: 'db1', server: 'web-7' });
    const error = (await service.detach({ volume: 'db1' }).catch((e: unknown) => e)) as BerthError;
    expect(error.code).toBe('CONFLICT');
    expect(error.hint).toBe('close it, then detach again');
    const [attachment] = await service.listAttachments({ volume: 'db1' });
    expect(attachment?.status).toBe('attached');
    expect((await service.getVolume('db1')).status).toBe('in-use');
    expect(there.size).toBe(1);
    await stop();
    await service.close();
    await w.close();
  });
});
