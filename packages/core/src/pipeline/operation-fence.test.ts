import { describe, expect, it } from 'vitest';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import type { Store } from '../store.js';
import { ownedFinish, ownedTransaction } from './operation-fence.js';
import { OperationRunner } from './operation-runner.js';
import type { Step } from './step.js';

/**
 * `store` logging the operation-repository calls made in its transactions, in order; with
 * `alone`, the calls made outside a transaction too, as `NAME(alone, owner)` for a journal write
 * fenced by an owner (its last argument).
 */
function logged(store: Store, calls: string[], alone = false): Store {
  const spy = (tx: Store, outside: boolean): Store => {
    const operations = new Proxy(tx.operations, {
      get(target, name, receiver) {
        const value: unknown = Reflect.get(target, name, receiver);
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          const journal = name === 'startStep' || name === 'endStep' || name === 'advanceStep';
          const given = journal ? args[name === 'advanceStep' ? 4 : 3] : undefined;
          const owner = typeof given === 'string' ? given : undefined;
          calls.push(outside ? `${String(name)}(alone${owner === undefined ? '' : `, ${owner}`})` : String(name));
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    return { ...tx, operations };
  };
  const top = alone ? spy(store, true) : store;
  return { ...top, transaction: (work) => store.transaction((tx) => work(spy(tx, false))) } as Store;
}

async function world() {
  const store = createMemoryStore();
  const host = await store.hosts.create({ name: 'h' });
  const operation = await store.operations.create({ kind: 'attach', hostId: host.id, owner: 'r0', deadlineAt: new Date(Date.now() + 60_000).toISOString() });
  return { store, operationId: operation.id };
}

/** A step with a commit (a transaction), then one without (its end a write alone). */
const committedThenPlain: Array<Step<unknown>> = [
  { name: 'mark', async run() {}, commit: async () => ({}) },
  { name: 'last', async run() {} },
];

describe('the owner confirmed last in its transaction', () => {
  it('ownedTransaction confirms after the work, just before the commit (the row stays unlocked while the work waits on others)', async () => {
    const w = await world();
    const calls: string[] = [];
    await ownedTransaction(logged(w.store, calls), w.operationId, 'r0', (tx) => tx.operations.startStep(w.operationId, 'reserve', 'do'));
    expect(calls).toEqual(['startStep', 'setOwner']);
  });

  it("a step's commit and its boundary come first, the confirmation last; a boundary alone is one write the store fences by the owner", async () => {
    const w = await world();
    const calls: string[] = [];
    const outcome = await new OperationRunner(logged(w.store, calls, true)).run(committedThenPlain, {}, { operationId: w.operationId, signal: AbortSignal.timeout(5_000), undoTimeoutMs: 1_000, logger: silentLogger, owner: 'r0' });
    expect(outcome.ok).toBe(true);
    // The commit's transaction: its boundary, then setOwner; a boundary alone carries the owner, no transaction.
    expect(calls).toEqual(['startStep(alone, r0)', 'advanceStep', 'setOwner', 'endStep(alone, r0)']);
  });

  it('embedded mode (no owner) journals as it always did: plain writes, no confirmation', async () => {
    const w = await world();
    const calls: string[] = [];
    const outcome = await new OperationRunner(logged(w.store, calls, true)).run(committedThenPlain, {}, { operationId: w.operationId, signal: AbortSignal.timeout(5_000), undoTimeoutMs: 1_000, logger: silentLogger });
    expect(outcome.ok).toBe(true);
    expect(calls).toEqual(['startStep(alone)', 'advanceStep', 'endStep(alone)']);
  });

  it("a journal write refused because another replica owns the operation now fences the run: nothing more written, nothing undone", async () => {
    const w = await world();
    let undone = false;
    const list: Array<Step<unknown>> = [
      {
        name: 'first',
        async run() {
          // Taken over while the step works: its boundary is refused.
          await w.store.operations.setOwner(w.operationId, 'r1', 'r0');
        },
        async undo() {
          undone = true;
        },
      },
      { name: 'second', async run() {} },
    ];
    const outcome = await new OperationRunner(w.store).run(list, {}, { operationId: w.operationId, signal: AbortSignal.timeout(5_000), undoTimeoutMs: 1_000, logger: silentLogger, owner: 'r0' });
    expect(outcome).toMatchObject({ ok: false, fenced: true, rolledBack: false });
    expect(undone).toBe(false);
    expect((await w.store.operations.require(w.operationId)).steps.map((step) => [step.name, step.state])).toEqual([['first', 'running']]);
  });

  it("an operation's end comes right after the confirmation (it needs the row still running), the last statement", async () => {
    const w = await world();
    const calls: string[] = [];
    await ownedFinish(logged(w.store, calls), w.operationId, 'r0', { state: 'succeeded', result: {} }, (tx) => tx.operations.startStep(w.operationId, 'last', 'do'));
    expect(calls).toEqual(['startStep', 'setOwner', 'finish']);
    await expect(ownedFinish(w.store, w.operationId, 'r0', { state: 'failed', error: { code: 'TIMEOUT', message: 'again' } })).rejects.toMatchObject({ details: { takenOver: true } });
  });

  it('its own end, committed but its answer lost, is not reported as a takeover: the store error stands', async () => {
    const w = await world();
    // The COMMIT landed, then the connection broke before its answer came back.
    const lost = { ...w.store, transaction: async (work: (tx: Store) => Promise<unknown>) => {
      await w.store.transaction(work);
      throw Object.assign(new Error('Connection terminated unexpectedly'), { code: 'ECONNRESET' });
    } } as Store;
    const ended = ownedFinish(lost, w.operationId, 'r0', { state: 'succeeded', result: {} });
    await expect(ended).rejects.toThrow('Connection terminated unexpectedly');
    expect((await w.store.operations.require(w.operationId)).state).toBe('succeeded');
  });

  it('a write that fails first because another replica already ended the operation is reported as the takeover it is', async () => {
    const w = await world();
    await w.store.operations.setOwner(w.operationId, 'r1', 'r0');
    await w.store.operations.finish(w.operationId, { state: 'rolled_back', error: { code: 'CANCELLED', message: 'undone by r1' } });
    const ended = ownedTransaction(w.store, w.operationId, 'r0', (tx) => tx.operations.finish(w.operationId, { state: 'failed', error: { code: 'TIMEOUT', message: 'late' } }));
    await expect(ended).rejects.toMatchObject({ code: 'CONFLICT', details: { takenOver: true } });
    expect((await w.store.operations.require(w.operationId)).state).toBe('rolled_back');
  });
});
