import { BerthError } from '@berth/core';
import type {
  BerthErrorCode,
  Host,
  Operation,
  OperationRepository,
  Store,
  StoreNotifications,
  WorkItem,
  WorkItemRepository,
} from '@berth/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

/** The BerthError of `code` that `promise` rejects with (the test fails on anything else). */
async function rejection(promise: Promise<unknown>, code: BerthErrorCode): Promise<BerthError> {
  const outcome = await promise.then(
    () => new Error(`expected a BerthError ${code}, got success`),
    (error: unknown) => error,
  );
  expect(BerthError.is(outcome) ? outcome.code : String(outcome)).toBe(code);
  return outcome as BerthError;
}

/** A deadline for waiting on an event (a notification); generous, since the machine is shared. */
const EVENT_DEADLINE_MS = 15_000;

/** The next `count` payloads delivered to a listener, or a failure past the deadline. */
function collector(): { listener: (payload: string) => void; next: () => Promise<string>; received: string[] } {
  const received: string[] = [];
  const waiters: Array<(payload: string) => void> = [];
  let read = 0;
  return {
    received,
    listener: (payload) => {
      received.push(payload);
      const waiter = waiters.shift();
      if (waiter !== undefined) {
        read += 1;
        waiter(payload);
      }
    },
    next: () =>
      new Promise<string>((resolve, reject) => {
        if (read < received.length) {
          const payload = received[read] as string;
          read += 1;
          resolve(payload);
          return;
        }
        const timer = setTimeout(() => reject(new Error(`no notification within ${EVENT_DEADLINE_MS} ms`)), EVENT_DEADLINE_MS);
        waiters.push((payload) => {
          clearTimeout(timer);
          resolve(payload);
        });
      }),
  };
}

/** One turn of the event loop: whatever was already delivered has run its listeners. */
const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

const HOUR = 3_600_000;
const deadlineAt = '2030-01-01T00:00:00.000Z';

/**
 * The store members the many-hosts flow needs (operation leases, work items, notifications), as a
 * vitest suite, run beside `describeStoreConformance` with the same kind of `open` (a store over
 * a fresh, empty, migrated database each time; closed after each test).
 */
export function describeManyHostsStoreConformance(name: string, open: () => Promise<Store>): void {
  describe(`Store conformance, many hosts: ${name}`, () => {
    let store: Store;
    let operations: Required<Pick<OperationRepository, 'heartbeat' | 'claimExpired'>> & OperationRepository;
    let workItems: WorkItemRepository;
    let notifications: StoreNotifications;
    let opened: Store | undefined;
    const stopListening: Array<() => Promise<void>> = [];

    beforeEach(async () => {
      opened = await open();
      store = opened;
      if (store.workItems === undefined || store.notifications === undefined) throw new Error(`${name} has no workItems/notifications`);
      const repo = store.operations;
      if (repo.heartbeat === undefined || repo.claimExpired === undefined) throw new Error(`${name} has no operation leases`);
      operations = repo as typeof operations;
      workItems = store.workItems;
      notifications = store.notifications;
    });

    afterEach(async () => {
      for (const stop of stopListening.splice(0)) await stop();
      await opened?.close();
      opened = undefined;
    });

    async function hostAndOperation(hostName = 'host-1'): Promise<{ host: Host; operation: Operation }> {
      const host = await store.hosts.create({ name: hostName });
      const operation = await store.operations.create({ kind: 'attach', hostId: host.id, owner: 'api-1', leaseMs: HOUR, deadlineAt });
      return { host, operation };
    }

    describe('operation leases', () => {
      it('a lease needs an owner, and a whole number of milliseconds', async () => {
        await rejection(store.operations.create({ kind: 'attach', leaseMs: 1000, deadlineAt }), 'VALIDATION');
        await rejection(store.operations.create({ kind: 'attach', owner: 'a', leaseMs: -1, deadlineAt }), 'VALIDATION');
        await rejection(store.operations.create({ kind: 'attach', owner: 'a', leaseMs: 1.5, deadlineAt }), 'VALIDATION');
        expect(await store.operations.list()).toEqual([]);
      });

      it('heartbeat renews the running operations of its owner only and names them', async () => {
        const mine = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: 0, deadlineAt });
        const mineToo = await store.operations.create({ kind: 'detach', owner: 'api-1', deadlineAt });
        const finished = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: 0, deadlineAt });
        await store.operations.finish(finished.id, { state: 'succeeded' });
        await store.operations.create({ kind: 'attach', owner: 'api-2', leaseMs: 0, deadlineAt });
        expect(await operations.heartbeat('api-1', HOUR)).toEqual([mine.id, mineToo.id].sort());
        expect(await operations.heartbeat('nobody', HOUR)).toEqual([]);
        // Renewed for an hour: nobody can take them now; api-2's lease has passed.
        const taken = await operations.claimExpired('api-3', HOUR);
        expect(taken.map((o) => o.owner)).toEqual(['api-3']);
        expect((await store.operations.require(mine.id)).owner).toBe('api-1');
      });

      it('leaseExpiry tells when an operation\'s lease passes: null without one, undefined for no operation', async () => {
        if (operations.leaseExpiry === undefined) return;
        const leased = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: HOUR, deadlineAt });
        const unleased = await store.operations.create({ kind: 'attach', owner: 'api-1', deadlineAt });
        const until = Date.parse((await operations.leaseExpiry(leased.id)) ?? '');
        expect(until - Date.now()).toBeGreaterThan(HOUR - 60_000);
        expect(until - Date.now()).toBeLessThanOrEqual(HOUR + 1_000);
        expect(await operations.leaseExpiry(unleased.id)).toBeNull();
        expect(await operations.leaseExpiry('00000000-0000-4000-8000-000000000000')).toBeUndefined();
      });

      it('claimExpired takes running operations whose lease passed, and only those', async () => {
        const expired = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: 0, deadlineAt });
        const live = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: HOUR, deadlineAt });
        const unleased = await store.operations.create({ kind: 'attach', owner: '123@node-a', deadlineAt });
        const done = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: 0, deadlineAt });
        await store.operations.startStep(expired.id, 'reserve', 'do');
        await store.operations.finish(done.id, { state: 'rolled_back' });

        const taken = await operations.claimExpired('api-2', HOUR);
        expect(taken.map((o) => o.id)).toEqual([expired.id]);
        // Owned by the claimer now; who it was taken from (the process that stopped) comes with it.
        expect(taken[0]).toMatchObject({ owner: 'api-2', state: 'running', previousOwner: 'api-1' });
        expect(taken[0]?.steps.map((s) => s.name)).toEqual(['reserve']);
        expect((await store.operations.require(live.id)).owner).toBe('api-1');
        expect((await store.operations.require(unleased.id)).owner).toBe('123@node-a');
        // The old owner learns from its heartbeat that the operation is no longer its own.
        expect(await operations.heartbeat('api-1', HOUR)).toEqual([live.id]);
        // With a fresh lease it is not taken again.
        expect(await operations.claimExpired('api-3', HOUR)).toEqual([]);
      });

      it('claimExpired honours its limit, oldest lease first', async () => {
        const created: Operation[] = [];
        for (let i = 0; i < 5; i += 1) created.push(await store.operations.create({ kind: 'attach', owner: 'dead', leaseMs: 0, deadlineAt }));
        const first = await operations.claimExpired('api-2', HOUR, 2);
        expect(first.map((o) => o.id)).toEqual(created.slice(0, 2).map((o) => o.id));
        const rest = await operations.claimExpired('api-2', HOUR);
        expect(rest.map((o) => o.id)).toEqual(created.slice(2).map((o) => o.id));
        await rejection(operations.claimExpired('api-2', HOUR, 0), 'VALIDATION');
      });

      it('concurrent claimers never take the same operation', async () => {
        const ids = new Set<string>();
        for (let i = 0; i < 24; i += 1) ids.add((await store.operations.create({ kind: 'attach', owner: 'dead', leaseMs: 0, deadlineAt })).id);
        const claimer = async (owner: string): Promise<string[]> => {
          const mine: string[] = [];
          for (;;) {
            const batch = await operations.claimExpired(owner, HOUR, 3);
            if (batch.length === 0) return mine;
            mine.push(...batch.map((o) => o.id));
          }
        };
        const results = await Promise.all(['r1', 'r2', 'r3', 'r4'].map(claimer));
        const all = results.flat();
        expect(all).toHaveLength(24);
        expect(new Set(all)).toEqual(ids);
        for (const [index, owner] of ['r1', 'r2', 'r3', 'r4'].entries()) {
          for (const id of results[index] ?? []) expect((await store.operations.require(id)).owner).toBe(owner);
        }
      });
    });

    describe('journal writes fenced by the owner', () => {
      const notOwner = async (write: Promise<unknown>, owner: string): Promise<void> => {
        const error = await rejection(write, 'CONFLICT');
        expect(error.details).toMatchObject({ reason: 'not-owner', owner });
      };

      it("start, end and advance write for the operation's owner, and for nobody else: nothing written", async () => {
        const op = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: HOUR, deadlineAt });
        const first = await store.operations.startStep(op.id, 'reserve', 'do', 'api-1');
        await notOwner(store.operations.startStep(op.id, 'dispatch', 'do', 'api-2'), 'api-2');
        await notOwner(store.operations.endStep(op.id, first, { state: 'done' }, 'api-2'), 'api-2');
        await notOwner(store.operations.advanceStep(op.id, first, { state: 'done' }, { name: 'dispatch', phase: 'do' }, 'api-2'), 'api-2');
        expect((await store.operations.require(op.id)).steps.map((s) => [s.name, s.state])).toEqual([['reserve', 'running']]);
        const second = await store.operations.advanceStep(op.id, first, { state: 'done', data: { a: 1 } }, { name: 'dispatch', phase: 'do' }, 'api-1');
        await store.operations.endStep(op.id, second, { state: 'done' }, 'api-1');
        expect((await store.operations.require(op.id)).steps.map((s) => [s.name, s.state])).toEqual([
          ['reserve', 'done'],
          ['dispatch', 'done'],
        ]);
        // The other errors stay what they were, for the owner: a closed row, a missing one.
        await rejection(store.operations.endStep(op.id, second, { state: 'done' }, 'api-1'), 'CONFLICT');
        await rejection(store.operations.endStep(op.id, 99, { state: 'done' }, 'api-1'), 'NOT_FOUND');
        await rejection(store.operations.startStep('00000000-0000-4000-8000-000000000000', 'reserve', 'do', 'api-1'), 'NOT_FOUND');
      });

      it('a takeover fences the old owner out; an ended operation takes no more journal from its owner either', async () => {
        const op = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: 0, deadlineAt });
        const seq = await store.operations.startStep(op.id, 'reserve', 'do', 'api-1');
        expect((await operations.claimExpired('api-2', HOUR)).map((o) => o.id)).toEqual([op.id]);
        await notOwner(store.operations.endStep(op.id, seq, { state: 'failed', error: { code: 'INTERNAL', message: 'late' } }, 'api-1'), 'api-1');
        await notOwner(store.operations.advanceStep(op.id, seq, { state: 'done' }, { name: 'dispatch', phase: 'do' }, 'api-1'), 'api-1');
        await notOwner(store.operations.startStep(op.id, 'reserve', 'undo', 'api-1'), 'api-1');
        // The new owner goes on where the journal stands; without an owner a write is not fenced.
        await store.operations.endStep(op.id, seq, { state: 'done' }, 'api-2');
        await store.operations.finish(op.id, { state: 'succeeded' });
        // Ended as its own: a plain CONFLICT, not another owner's.
        const ended = await rejection(store.operations.startStep(op.id, 'extra', 'do', 'api-2'), 'CONFLICT');
        expect(ended.details).toMatchObject({ actual: 'succeeded' });
        expect(ended.details.reason).toBeUndefined();
        expect((await store.operations.require(op.id)).steps.map((s) => [s.name, s.state])).toEqual([['reserve', 'done']]);
      });

      it('concurrent fenced writes and a takeover: every write lands before the takeover or not at all', async () => {
        const op = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: 0, deadlineAt });
        const writes = Array.from({ length: 12 }, () =>
          store.operations.startStep(op.id, 'connect', 'do', 'api-1').then(
            () => 'written' as const,
            (error: unknown) => {
              if (!BerthError.is(error) || error.details.reason !== 'not-owner') throw error;
              return 'fenced' as const;
            },
          ),
        );
        // A takeover skips the row while a write holds it (PostgreSQL): it tries again, as a replica's next beat would.
        const claim = async (): Promise<Operation> => {
          for (;;) {
            const [taken] = await operations.claimExpired('api-2', HOUR);
            if (taken !== undefined) return taken;
          }
        };
        const [claimed, ...outcomes] = await Promise.all([claim(), ...writes]);
        expect(claimed.id).toBe(op.id);
        // The journal the takeover read is the journal: nothing was written after it.
        const journal = (await store.operations.require(op.id)).steps;
        expect(journal).toHaveLength(outcomes.filter((o) => o === 'written').length);
        expect(claimed.steps).toHaveLength(journal.length);
      });
    });

    describe('operations.prune and work items', () => {
      it('keeps a finished operation while one of its work items is pending or claimed; deletes its finished items with it', async () => {
        const { host, operation } = await hostAndOperation();
        const second = await store.operations.create({ kind: 'detach', hostId: host.id, owner: 'api-1', leaseMs: HOUR, deadlineAt });
        const done = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
        await workItems.claim(host.id, 'agent-1', HOUR);
        await workItems.complete(done.id, 'agent-1', { state: 'done' });
        const open = await workItems.create({ operationId: second.id, hostId: host.id, step: 'disconnect' });
        // Both end while an agent may still hold the second one's step (a deadline passed, say).
        await store.operations.finish(operation.id, { state: 'succeeded' });
        await store.operations.finish(second.id, { state: 'rolled_back' });
        const later = '2099-01-01T00:00:00Z';
        expect(await store.operations.prune({ endedBefore: later })).toBe(1);
        expect(await store.operations.get(operation.id)).toBeUndefined();
        expect(await workItems.get(done.id)).toBeUndefined();
        expect(await workItems.require(open.id)).toMatchObject({ state: 'pending' });
        await workItems.claim(host.id, 'agent-1', HOUR);
        expect(await store.operations.prune({ endedBefore: later })).toBe(0);
        await workItems.complete(open.id, 'agent-1', { state: 'failed' });
        expect(await store.operations.prune({ endedBefore: later })).toBe(1);
        expect(await workItems.list()).toEqual([]);
      });
    });

    describe('work items', () => {
      it('creates a pending item; a missing operation or host is NOT_FOUND; secrets are dropped at any depth', async () => {
        const { host, operation } = await hostAndOperation();
        const item = await workItems.create({
          operationId: operation.id,
          hostId: host.id,
          step: 'connect',
          payload: { connection: { driver_volume_type: 'iscsi', data: { target_iqn: 'iqn.x', auth_password: 'chap-secret' } }, list: [{ password: 'p' }] },
        });
        expect(item).toMatchObject({
          operationId: operation.id,
          hostId: host.id,
          step: 'connect',
          state: 'pending',
          attempts: 0,
          leaseOwner: null,
          leaseExpiresAt: null,
          result: null,
          error: null,
        });
        expect(item.payload).toEqual({ connection: { driver_volume_type: 'iscsi', data: { target_iqn: 'iqn.x' } }, list: [{}] });
        expect(await workItems.require(item.id)).toEqual(item);
        expect(JSON.stringify(await workItems.list())).not.toContain('chap-secret');
        await rejection(workItems.create({ operationId: '2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', hostId: host.id, step: 'connect' }), 'NOT_FOUND');
        const error = await rejection(
          workItems.create({ operationId: operation.id, hostId: '2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', step: 'connect' }),
          'NOT_FOUND',
        );
        expect(error.message).toContain('host');
        await rejection(workItems.create({ operationId: operation.id, hostId: host.id, step: 'Connect Now' }), 'VALIDATION');
        await rejection(workItems.require('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b'), 'NOT_FOUND');
      });

      it('claim hands out the oldest pending items of one host with a lease', async () => {
        const { host, operation } = await hostAndOperation('host-1');
        const other = await store.hosts.create({ name: 'host-2' });
        const a = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connector' });
        const b = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
        const c = await workItems.create({ operationId: operation.id, hostId: other.id, step: 'connect' });
        const claimed = await workItems.claim(host.id, 'agent-1', HOUR);
        expect(claimed.map((i) => i.id)).toEqual([a.id]);
        expect(claimed[0]).toMatchObject({ state: 'claimed', leaseOwner: 'agent-1', attempts: 1 });
        expect(claimed[0]?.leaseExpiresAt !== null && claimed[0]!.leaseExpiresAt > claimed[0]!.updatedAt).toBe(true);
        expect((await workItems.claim(host.id, 'agent-1', HOUR, 10)).map((i) => i.id)).toEqual([b.id]);
        expect(await workItems.claim(host.id, 'agent-1', HOUR, 10)).toEqual([]);
        expect((await workItems.list({ hostId: other.id, state: 'pending' })).map((i) => i.id)).toEqual([c.id]);
        expect((await workItems.list({ operationId: operation.id, state: ['claimed'] })).map((i) => i.id)).toEqual([a.id, b.id]);
        expect(await workItems.list({ state: [] })).toEqual([]);
      });

      it('concurrent claimers never get the same item', async () => {
        const { host, operation } = await hostAndOperation();
        const ids = new Set<string>();
        for (let i = 0; i < 30; i += 1) ids.add((await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' })).id);
        const agent = async (worker: string): Promise<WorkItem[]> => {
          const mine: WorkItem[] = [];
          for (;;) {
            const batch = await workItems.claim(host.id, worker, HOUR, 2);
            if (batch.length === 0) return mine;
            mine.push(...batch);
          }
        };
        const workers = ['w1', 'w2', 'w3', 'w4', 'w5', 'w6'];
        const results = await Promise.all(workers.map(agent));
        const all = results.flat();
        expect(all).toHaveLength(30);
        expect(new Set(all.map((i) => i.id))).toEqual(ids);
        expect(all.every((i) => i.attempts === 1)).toBe(true);
      });

      it('renew and complete are for the holder only; an item completes once', async () => {
        const { host, operation } = await hostAndOperation();
        const item = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
        await rejection(workItems.renew(item.id, 'agent-1', HOUR), 'CONFLICT');
        const [claimed] = await workItems.claim(host.id, 'agent-1', 1000);
        const renewed = await workItems.renew(item.id, 'agent-1', HOUR);
        expect(renewed.leaseExpiresAt !== null && claimed?.leaseExpiresAt != null && renewed.leaseExpiresAt > claimed.leaseExpiresAt).toBe(true);
        await rejection(workItems.renew(item.id, 'agent-2', HOUR), 'CONFLICT');
        await rejection(workItems.complete(item.id, 'agent-2', { state: 'done' }), 'CONFLICT');
        const done = await workItems.complete(item.id, 'agent-1', {
          state: 'done',
          result: { device: { path: '/dev/sdb', type: 'block' }, auth_password: 'never-stored' },
        });
        expect(done).toMatchObject({ state: 'done', result: { device: { path: '/dev/sdb', type: 'block' } }, leaseExpiresAt: null });
        const error = await rejection(workItems.complete(item.id, 'agent-1', { state: 'failed' }), 'CONFLICT');
        expect(error.details).toMatchObject({ actual: 'done' });
        await rejection(workItems.renew('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', 'agent-1', HOUR), 'NOT_FOUND');

        const second = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'publish' });
        await workItems.claim(host.id, 'agent-1', HOUR);
        const failed = await workItems.complete(second.id, 'agent-1', {
          state: 'failed',
          error: { code: 'DRIVER_ERROR', message: 'losetup exited 1', hint: 'see the agent log' },
        });
        expect(failed).toMatchObject({ state: 'failed', error: { code: 'DRIVER_ERROR', message: 'losetup exited 1' }, result: null });
        // A step that says it touched nothing on the host keeps saying so (a detach rolls back on it).
        const third = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'disconnect' });
        await workItems.claim(host.id, 'agent-1', HOUR);
        const untouched = { code: 'CONFLICT', message: '/dev/loop7 is held open', hint: 'close it', untouched: true };
        expect((await workItems.complete(third.id, 'agent-1', { state: 'failed', error: untouched })).error).toEqual(untouched);
        expect((await workItems.require(third.id)).error).toEqual(untouched);
        await rejection(workItems.complete(second.id, 'agent-1', { state: 'running' as 'done' }), 'VALIDATION');
      });

      it('expire puts items whose lease passed back to pending; the old holder is fenced off', async () => {
        const { host, operation } = await hostAndOperation();
        const dying = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
        const alive = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'publish' });
        await workItems.claim(host.id, 'agent-dead', 0);
        await workItems.claim(host.id, 'agent-live', HOUR);
        const expired = await workItems.expire();
        expect(expired.map((i) => i.id)).toEqual([dying.id]);
        expect(expired[0]).toMatchObject({ state: 'pending', leaseOwner: null, leaseExpiresAt: null, attempts: 1 });
        expect((await workItems.require(alive.id)).state).toBe('claimed');
        expect(await workItems.expire()).toEqual([]);
        // The restarted agent (or another) runs the step again.
        const [again] = await workItems.claim(host.id, 'agent-new', HOUR);
        expect(again).toMatchObject({ id: dying.id, attempts: 2, leaseOwner: 'agent-new' });
        await rejection(workItems.complete(dying.id, 'agent-dead', { state: 'done' }), 'CONFLICT');
        expect((await workItems.complete(dying.id, 'agent-new', { state: 'done' })).state).toBe('done');
      });

      it('cancel fails a pending or claimed item for good, keeping attempts; a finished one is CONFLICT', async () => {
        const { host, operation } = await hostAndOperation();
        const offline = { code: 'TIMEOUT' as const, message: "host-1's agent did not pick up step connect before the deadline" };
        const waiting = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
        const cancelled = await workItems.cancel(waiting.id, offline);
        expect(cancelled).toMatchObject({ state: 'failed', attempts: 0, leaseOwner: null, leaseExpiresAt: null, error: offline });
        expect(await workItems.claim(host.id, 'agent-1', HOUR)).toEqual([]);

        const running = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'publish' });
        await workItems.claim(host.id, 'agent-1', HOUR);
        const taken = await workItems.cancel(running.id, offline);
        expect(taken).toMatchObject({ state: 'failed', attempts: 1, leaseOwner: null, leaseExpiresAt: null });
        // The agent that held it is fenced off: its report and renewal are refused.
        await rejection(workItems.complete(running.id, 'agent-1', { state: 'done', result: { device: { path: '/dev/loop9' } } }), 'CONFLICT');
        await rejection(workItems.renew(running.id, 'agent-1', HOUR), 'CONFLICT');
        expect((await workItems.require(running.id)).result).toBeNull();

        const again = await rejection(workItems.cancel(running.id, offline), 'CONFLICT');
        expect(again.details).toMatchObject({ actual: 'failed' });
        const finished = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'unpublish' });
        await workItems.claim(host.id, 'agent-1', HOUR);
        await workItems.complete(finished.id, 'agent-1', { state: 'done' });
        const done = await rejection(workItems.cancel(finished.id, offline), 'CONFLICT');
        expect(done.details).toMatchObject({ actual: 'done' });
        expect((await workItems.require(finished.id)).state).toBe('done');
        await rejection(workItems.cancel('2f3e4d5c-6b7a-4981-9a0b-1c2d3e4f5a6b', offline), 'NOT_FOUND');
        await rejection(workItems.cancel(finished.id, { code: 'TIMEOUT' } as never), 'VALIDATION');
      });

      it("hosts.delete refuses while the host has a pending or claimed item, and removes its finished ones with it", async () => {
        const { host, operation } = await hostAndOperation();
        const other = await store.hosts.create({ name: 'host-2' });
        const elsewhere = await workItems.create({ operationId: operation.id, hostId: other.id, step: 'connect' });
        const waiting = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
        const used = await rejection(store.hosts.delete(host.id), 'CONFLICT');
        expect(used.details).toMatchObject({ reason: 'host-in-use', servers: 0, attachments: 0, openWorkItems: 1 });
        await workItems.claim(host.id, 'agent-1', HOUR);
        expect((await rejection(store.hosts.delete(host.id), 'CONFLICT')).details).toMatchObject({ openWorkItems: 1 });
        expect((await workItems.require(waiting.id)).state).toBe('claimed');

        await workItems.cancel(waiting.id, { code: 'CANCELLED', message: 'cancelled: host-1 is forgotten' });
        const finished = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'unpublish' });
        await workItems.claim(host.id, 'agent-1', HOUR);
        await workItems.complete(finished.id, 'agent-1', { state: 'done' });
        await store.hosts.delete(host.id);
        expect(await store.hosts.get(host.id)).toBeUndefined();
        expect(await workItems.list({ hostId: host.id })).toEqual([]);
        expect(await workItems.get(waiting.id)).toBeUndefined();
        // Another host's items are untouched; the operation (history) stays.
        expect((await workItems.require(elsewhere.id)).state).toBe('pending');
        expect((await store.operations.require(operation.id)).state).toBe('running');
      });

      it('cancel and complete race: exactly one wins', async () => {
        const { host, operation } = await hostAndOperation();
        for (let i = 0; i < 5; i += 1) {
          const item = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
          await workItems.claim(host.id, 'agent-1', HOUR);
          const [cancel, complete] = await Promise.allSettled([
            workItems.cancel(item.id, { code: 'TIMEOUT', message: 'deadline' }),
            workItems.complete(item.id, 'agent-1', { state: 'done' }),
          ]);
          expect([cancel.status, complete.status].filter((s) => s === 'fulfilled')).toHaveLength(1);
          const final = await workItems.require(item.id);
          expect(final.state).toBe(cancel.status === 'fulfilled' ? 'failed' : 'done');
        }
      });

      it("requeue hands a host's items held by other workers back to pending, lease or not", async () => {
        const { host, operation } = await hostAndOperation('host-1');
        const other = await store.hosts.create({ name: 'host-2' });
        const old1 = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
        const old2 = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'publish' });
        const mine = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'unpublish' });
        const elsewhere = await workItems.create({ operationId: operation.id, hostId: other.id, step: 'connect' });
        const waiting = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'disconnect' });
        await workItems.claim(host.id, 'agent-old', HOUR, 2);
        await workItems.claim(host.id, 'agent-new', HOUR);
        await workItems.claim(other.id, 'agent-h2', HOUR);
        const requeued = await workItems.requeue(host.id, 'agent-new');
        expect(requeued.map((i) => i.id)).toEqual([old1.id, old2.id]);
        expect(requeued.every((i) => i.state === 'pending' && i.leaseOwner === null && i.leaseExpiresAt === null && i.attempts === 1)).toBe(true);
        expect((await workItems.require(mine.id)).leaseOwner).toBe('agent-new');
        expect((await workItems.require(elsewhere.id)).leaseOwner).toBe('agent-h2');
        expect((await workItems.require(waiting.id)).state).toBe('pending');
        await rejection(workItems.complete(old1.id, 'agent-old', { state: 'done' }), 'CONFLICT');
        expect(await workItems.requeue(host.id, 'agent-new')).toEqual([]);
        const reclaimed = await workItems.claim(host.id, 'agent-new', HOUR, 10);
        expect(reclaimed.map((i) => i.id)).toEqual([old1.id, old2.id, waiting.id]);
        expect(reclaimed.map((i) => i.attempts)).toEqual([2, 2, 1]);
      });

      it("a replaced agent claims, renews and completes nothing: fenced by the host's agent record", async () => {
        const { host, operation } = await hostAndOperation('host-1');
        const agent = (instance: string) => ({ instance, version: '0.1.0', transports: ['loop'], consumers: ['host'] });
        await store.hosts.recordAgent(host.id, agent('host-1/old'));
        const held = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
        expect((await workItems.claim(host.id, 'host-1/old', HOUR)).map((i) => i.id)).toEqual([held.id]);
        const next = await workItems.create({ operationId: operation.id, hostId: host.id, step: 'publish' });
        // Registered anew without its items being requeued: the host's record alone fences.
        await store.hosts.recordAgent(host.id, agent('host-1/new'));
        const refused = await rejection(workItems.claim(host.id, 'host-1/old', HOUR, 10), 'CONFLICT');
        expect(refused.details).toMatchObject({ id: host.id, instance: 'host-1/old', actual: 'host-1/new' });
        expect((await workItems.require(next.id)).state).toBe('pending');
        await rejection(workItems.renew(held.id, 'host-1/old', HOUR), 'CONFLICT');
        await rejection(workItems.complete(held.id, 'host-1/old', { state: 'done' }), 'CONFLICT');
        expect(await workItems.require(held.id)).toMatchObject({ state: 'claimed', leaseOwner: 'host-1/old' });
        expect((await workItems.claim(host.id, 'host-1/new', HOUR, 10)).map((i) => i.id)).toEqual([next.id]);
        expect((await workItems.complete(next.id, 'host-1/new', { state: 'done' })).state).toBe('done');
      });

      it('a registration racing claims of the replaced agent: it claims nothing after, and what it took before is requeued', async () => {
        const { host, operation } = await hostAndOperation('host-1');
        const agent = (instance: string) => ({ instance, version: '0.1.0', transports: ['loop'], consumers: ['host'] });
        await store.hosts.recordAgent(host.id, agent('host-1/old'));
        for (let i = 0; i < 20; i += 1) await workItems.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
        const oldAgent = async (): Promise<void> => {
          for (;;) {
            try {
              if ((await workItems.claim(host.id, 'host-1/old', HOUR, 1)).length === 0) return;
            } catch (error) {
              expect(BerthError.is(error) && error.code).toBe('CONFLICT');
              return;
            }
          }
        };
        const register = async (): Promise<void> => {
          await tick();
          await store.transaction(async (tx) => {
            await tx.hosts.recordAgent(host.id, agent('host-1/new'));
            await (tx.workItems ?? workItems).requeue(host.id, 'host-1/new');
          });
        };
        await Promise.all([oldAgent(), oldAgent(), register()]);
        // Whatever the old agent took before the registration went back to pending; nothing after.
        expect(await workItems.list({ hostId: host.id, state: 'claimed' })).toEqual([]);
        await rejection(workItems.claim(host.id, 'host-1/old', HOUR), 'CONFLICT');
      });

      it('work items roll back with their transaction', async () => {
        const { host, operation } = await hostAndOperation();
        await expect(
          store.transaction(async (tx) => {
            await tx.workItems?.create({ operationId: operation.id, hostId: host.id, step: 'connect' });
            throw new Error('undo');
          }),
        ).rejects.toThrow('undo');
        expect(await workItems.list()).toEqual([]);
      });
    });

    describe('notifications', () => {
      it('a listener gets each notification of its channel, in order', async () => {
        const got = collector();
        const other = collector();
        stopListening.push(await notifications.listen('work_host_1', got.listener));
        stopListening.push(await notifications.listen('work_host_2', other.listener));
        await notifications.notify('work_host_1', 'first');
        await notifications.notify('work_host_1');
        await notifications.notify('work_host_2', 'elsewhere');
        expect(await got.next()).toBe('first');
        expect(await got.next()).toBe('');
        expect(await other.next()).toBe('elsewhere');
        expect(got.received).toEqual(['first', '']);
      });

      it('inside a transaction a notification is sent on commit, and never on rollback', async () => {
        const got = collector();
        stopListening.push(await notifications.listen('wake', got.listener));
        await expect(
          store.transaction(async (tx) => {
            await tx.notifications?.notify('wake', 'rolled-back');
            throw new Error('undo');
          }),
        ).rejects.toThrow('undo');
        await store.transaction(async (tx) => {
          await tx.notifications?.notify('wake', 'committed');
        });
        expect(await got.next()).toBe('committed');
        await notifications.notify('wake', 'after');
        expect(await got.next()).toBe('after');
        expect(got.received).toEqual(['committed', 'after']);
      });

      it('a stopped listener gets nothing more; others on the channel still do', async () => {
        const stopped = collector();
        const kept = collector();
        const stop = await notifications.listen('wake', stopped.listener);
        stopListening.push(await notifications.listen('wake', kept.listener));
        await notifications.notify('wake', 'one');
        expect(await kept.next()).toBe('one');
        expect(await stopped.next()).toBe('one');
        await stop();
        await notifications.notify('wake', 'two');
        expect(await kept.next()).toBe('two');
        await tick();
        expect(stopped.received).toEqual(['one']);
      });

      it('refuses channel names that are not plain identifiers and payloads of 8000 bytes', async () => {
        await rejection(notifications.notify('Work-Host'), 'VALIDATION');
        await rejection(notifications.notify('x"; drop table volumes; --'), 'VALIDATION');
        await rejection(notifications.listen('1st', () => undefined), 'VALIDATION');
        await rejection(notifications.notify('wake', 'x'.repeat(8000)), 'VALIDATION');
        expect(await store.volumes.list()).toEqual([]);
      });
    });
  });
}
