import { AsyncLocalStorage } from 'node:async_hooks';
import { describe, expect, it } from 'vitest';
import { BerthError } from '../errors.js';
import { silentLogger } from '../logger.js';
import { createMemoryStore } from '../memory-store.js';
import type { Store } from '../store.js';
import { takenOverError } from './operation-fence.js';
import { OperationRunner, type RunOutcome } from './operation-runner.js';
import type { Step } from './step.js';

// The runner against a journal that fails the way a real one does: another process holding the
// database's write lock past the busy timeout (a retryable TIMEOUT), or for good.

const busy = (): BerthError => new BerthError('TIMEOUT', 'the berth database stayed locked', { details: { retryable: true, reason: 'database-locked' } });
const broken = (): BerthError => new BerthError('HOST_UNSUPPORTED', 'the disk is full', { details: { retryable: false, reason: 'disk-full' } });

interface Journal {
  rows: Array<{ name: string; phase: string; state: string }>;
  /**
   * Fail the next writes: a function of the write (`start:<name>:<phase>` or `end:<name>:<state>`;
   * a boundary written as one is refused when either of its halves is, and then writes nothing).
   */
  failWhen?: (write: string) => BerthError | undefined;
  /** The store calls that wrote, in order (`start`, `end`, `advance`). */
  writes?: string[];
}

function journalStore(journal: Journal): Store {
  const refuse = (write: string): void => {
    const failure = journal.failWhen?.(write);
    if (failure) throw failure;
  };
  const start = (name: string, phase: string): number => {
    journal.rows.push({ name, phase, state: 'running' });
    return journal.rows.length;
  };
  const operations = {
    async startStep(_id: string, name: string, phase: 'do' | 'undo') {
      refuse(`start:${name}:${phase}`);
      journal.writes?.push('start');
      return start(name, phase);
    },
    async endStep(_id: string, seq: number, outcome: { state: string }) {
      const row = journal.rows[seq - 1]!;
      refuse(`end:${row.name}:${outcome.state}`);
      journal.writes?.push('end');
      row.state = outcome.state;
    },
    async advanceStep(_id: string, seq: number, outcome: { state: string }, next: { name: string; phase: 'do' | 'undo' }) {
      const row = journal.rows[seq - 1]!;
      refuse(`end:${row.name}:${outcome.state}`);
      refuse(`start:${next.name}:${next.phase}`);
      journal.writes?.push('advance');
      row.state = outcome.state;
      return start(next.name, next.phase);
    },
  };
  return { operations } as unknown as Store;
}

/** Steps that record what they did and undid. */
function steps(log: string[], options: { failAt?: string; noReturnAt?: string; failurePassesNoReturn?: boolean } = {}): Array<Step<unknown>> {
  return ['reserve', 'connect', 'disconnect', 'finish'].map((name) => ({
    name,
    ...(name === options.noReturnAt ? { pointOfNoReturn: true, failurePassesNoReturn: () => options.failurePassesNoReturn === true } : {}),
    async run() {
      log.push(`do ${name}`);
      if (name === options.failAt) throw new BerthError('DRIVER_ERROR', `${name} failed`, { details: { untouched: options.failurePassesNoReturn !== true } });
    },
    async undo() {
      log.push(`undo ${name}`);
    },
  }));
}

/** A step `mark` whose commit reserves volume `volumeId` (and fails after it when `failCommit`), then a step `last`. */
function markThenLast(volumeId: string, log: string[], work: () => Promise<Record<string, unknown> | void>, failCommit = false): Array<Step<{ applied: string[] }>> {
  return [
    {
      name: 'mark',
      async run() {
        log.push('do mark');
        return work();
      },
      async commit(_ctx, tx) {
        await tx.volumes.transition(volumeId, ['available'], 'reserved');
        if (failCommit) throw new BerthError('CONFLICT', 'the commit lost a race');
        return { data: { marked: true }, apply: (c) => c.applied.push('mark') };
      },
      async undo() {
        log.push('undo mark');
      },
    },
    { name: 'last', async run() {} },
  ];
}

async function run(journal: Journal, stepList: Array<Step<unknown>>, deadlineMs = 5_000): Promise<RunOutcome> {
  return new OperationRunner(journalStore(journal)).run(stepList, {}, {
    operationId: 'op',
    signal: AbortSignal.timeout(deadlineMs),
    undoTimeoutMs: 1_000,
    logger: silentLogger,
  });
}

describe('OperationRunner and a failing journal (finding 5 of issue 9)', () => {
  it('retries a journal write the store refuses for a moment, and the operation goes on', async () => {
    let refusals = 3;
    const journal: Journal = { rows: [], failWhen: (write) => (write === 'start:connect:do' && refusals-- > 0 ? busy() : undefined) };
    const log: string[] = [];
    const outcome = await run(journal, steps(log));
    expect(outcome.ok).toBe(true);
    expect(log).toEqual(['do reserve', 'do connect', 'do disconnect', 'do finish']);
    expect(journal.rows.map((r) => `${r.name}:${r.state}`)).toEqual(['reserve:done', 'connect:done', 'disconnect:done', 'finish:done']);
  });

  it('a step that cannot be journalled never runs, and what ran before it is undone: rolled back for real', async () => {
    const journal: Journal = { rows: [], failWhen: (write) => (write === 'start:disconnect:do' ? broken() : undefined) };
    const log: string[] = [];
    const outcome = await run(journal, steps(log));
    expect(outcome).toMatchObject({ ok: false, rolledBack: true, forward: false });
    expect(log).toEqual(['do reserve', 'do connect', 'undo connect', 'undo reserve']);
  });

  it('a lock held past the deadline: the write fails after retrying, and the undos still run', async () => {
    const journal: Journal = { rows: [], failWhen: (write) => (write === 'start:connect:do' ? busy() : undefined) };
    const log: string[] = [];
    const outcome = await run(journal, steps(log), 300);
    expect(outcome).toMatchObject({ ok: false, rolledBack: true });
    expect(outcome.ok === false && outcome.error.code).toBe('TIMEOUT');
    expect(log).toEqual(['do reserve', 'undo reserve']);
  });

  it('a step whose end cannot be journalled is undone with the ones before it', async () => {
    const journal: Journal = { rows: [], failWhen: (write) => (write === 'end:connect:done' ? broken() : undefined) };
    const log: string[] = [];
    const outcome = await run(journal, steps(log));
    expect(outcome).toMatchObject({ ok: false, rolledBack: true });
    expect(log).toEqual(['do reserve', 'do connect', 'undo connect', 'undo reserve']);
  });

  it('undos run even when their own journal rows cannot be written', async () => {
    const journal: Journal = { rows: [], failWhen: (write) => (write === 'start:disconnect:do' || write.endsWith(':undo') ? broken() : undefined) };
    const log: string[] = [];
    const outcome = await run(journal, steps(log));
    expect(outcome).toMatchObject({ ok: false, rolledBack: true });
    expect(outcome.ok === false && outcome.journalErrors.length).toBeGreaterThan(0);
    expect(log).toEqual(['do reserve', 'do connect', 'undo connect', 'undo reserve']);
  });

  it('past the point of no return a journal failure undoes nothing: the work stands, the journal is behind', async () => {
    const journal: Journal = { rows: [], failWhen: (write) => (write === 'end:finish:done' ? broken() : undefined) };
    const log: string[] = [];
    const outcome = await run(journal, steps(log, { noReturnAt: 'disconnect' }));
    expect(outcome.ok).toBe(true);
    expect(outcome.journalErrors).toHaveLength(1);
    expect(log).toEqual(['do reserve', 'do connect', 'do disconnect', 'do finish']);
  });
});

describe('OperationRunner writes each step boundary once (issue 12 item 2)', () => {
  it('a run of 4 steps is 5 journal writes: one start, 3 boundaries (end + next start), one end', async () => {
    const journal: Journal = { rows: [], writes: [] };
    const outcome = await run(journal, steps([]));
    expect(outcome.ok).toBe(true);
    expect(journal.writes).toEqual(['start', 'advance', 'advance', 'advance', 'end']);
    expect(journal.rows.map((r) => `${r.name}:${r.phase}:${r.state}`)).toEqual(['reserve:do:done', 'connect:do:done', 'disconnect:do:done', 'finish:do:done']);
  });

  it('undos are journalled the same way, newest first', async () => {
    const journal: Journal = { rows: [], writes: [] };
    const log: string[] = [];
    const outcome = await run(journal, steps(log, { failAt: 'disconnect' }));
    expect(outcome).toMatchObject({ ok: false, rolledBack: true });
    // start reserve, reserve→connect, connect→disconnect, disconnect failed; then the 3 undos.
    expect(journal.writes).toEqual(['start', 'advance', 'advance', 'end', 'start', 'advance', 'advance', 'end']);
    expect(journal.rows.map((r) => `${r.name}:${r.phase}:${r.state}`)).toEqual([
      'reserve:do:done',
      'connect:do:done',
      'disconnect:do:failed',
      'disconnect:undo:done',
      'connect:undo:done',
      'reserve:undo:done',
    ]);
  });

  it('past the point of no return, a boundary that cannot be written leaves the step running and the next one starts its own row', async () => {
    const journal: Journal = { rows: [], writes: [], failWhen: (write) => (write === 'end:disconnect:done' ? broken() : undefined) };
    const log: string[] = [];
    const outcome = await run(journal, steps(log, { noReturnAt: 'disconnect' }));
    expect(outcome.ok).toBe(true);
    expect(outcome.journalErrors).toHaveLength(1);
    expect(log).toEqual(['do reserve', 'do connect', 'do disconnect', 'do finish']);
    expect(journal.rows.map((r) => `${r.name}:${r.state}`)).toEqual(['reserve:done', 'connect:done', 'disconnect:running', 'finish:done']);
  });
});

describe('OperationRunner and a point-of-no-return step that fails', () => {
  it('rolls back when the step says it touched nothing', async () => {
    const log: string[] = [];
    const outcome = await run({ rows: [] }, steps(log, { failAt: 'disconnect', noReturnAt: 'disconnect', failurePassesNoReturn: false }));
    expect(outcome).toMatchObject({ ok: false, forward: false, rolledBack: true });
    expect(log).toEqual(['do reserve', 'do connect', 'do disconnect', 'undo disconnect', 'undo connect', 'undo reserve']);
  });

  it('fails forward, undoing nothing, when it may have changed what cannot be put back', async () => {
    const log: string[] = [];
    const outcome = await run({ rows: [] }, steps(log, { failAt: 'disconnect', noReturnAt: 'disconnect', failurePassesNoReturn: true }));
    expect(outcome).toMatchObject({ ok: false, forward: true, rolledBack: false });
    expect(log).toEqual(['do reserve', 'do connect', 'do disconnect']);
  });
});

describe('OperationRunner and a deadline that passes while a driver runs a command', () => {
  it('reports the deadline (TIMEOUT), not the CANCELLED of the command the signal cut short, and undoes what ran', async () => {
    const log: string[] = [];
    const controller = new AbortController();
    const stepList: Array<Step<unknown>> = [
      { name: 'reserve', async run() { log.push('do reserve'); }, async undo() { log.push('undo reserve'); } },
      {
        name: 'connect',
        async run() {
          controller.abort(new BerthError('TIMEOUT', 'the operation passed its deadline of 200 ms'));
          // What the loop transport says when the runner killed its losetup on that signal.
          throw new BerthError('CANCELLED', 'attaching /v.img: cancelled');
        },
        async undo() { log.push('undo connect'); },
      },
    ];
    const outcome = await new OperationRunner(journalStore({ rows: [] })).run(stepList, {}, {
      operationId: 'op',
      signal: controller.signal,
      undoTimeoutMs: 1_000,
      logger: silentLogger,
    });
    expect(outcome.ok).toBe(false);
    expect(!outcome.ok && outcome.error.code).toBe('TIMEOUT');
    expect(!outcome.ok && outcome.rolledBack).toBe(true);
    expect(log).toEqual(['do reserve', 'undo connect', 'undo reserve']);
  });

  it('a run another replica took over (fenced) stops where it is: no undo, no journal row of its own after it', async () => {
    const journal: Journal = { rows: [] };
    const log: string[] = [];
    const fence = new AbortController();
    const list = steps(log);
    // The takeover lands while `connect` runs: the step is cut short by the signal.
    list[1] = {
      ...list[1]!,
      async run(_ctx, signal) {
        log.push('do connect');
        fence.abort(new BerthError('CONFLICT', 'taken over by another replica'));
        signal.throwIfAborted();
      },
    };
    const signal = AbortSignal.any([AbortSignal.timeout(5_000), fence.signal]);
    const outcome = await new OperationRunner(journalStore(journal)).run(list, {}, { operationId: 'op', signal, undoTimeoutMs: 1_000, logger: silentLogger, fenced: fence.signal });
    expect(outcome.ok).toBe(false);
    if (outcome.ok) return;
    expect(outcome).toMatchObject({ fenced: true, rolledBack: false, undoErrors: [] });
    expect(outcome.error.code).toBe('CONFLICT');
    expect(log).toEqual(['do reserve', 'do connect']);
    // The cut-short step's row stays `running` for the new owner to undo.
    expect(journal.rows).toEqual([
      { name: 'reserve', phase: 'do', state: 'done' },
      { name: 'connect', phase: 'do', state: 'running' },
    ]);
  });

  it('a run frozen past its lease resumes before its heartbeat fences it: its first write finds the new owner, and it stops there', async () => {
    // What `berth serve` does after a SIGSTOP or a long pause: the step it was waiting in ends
    // (failed, or done), and no `fenced` signal has fired yet. Every write confirms the owner first.
    for (const outcome of ['fails', 'succeeds'] as const) {
      const store = createMemoryStore();
      const host = await store.hosts.create({ name: 'h' });
      const operation = await store.operations.create({ kind: 'attach', hostId: host.id, owner: 'r0', deadlineAt: new Date(Date.now() + 60_000).toISOString() });
      const log: string[] = [];
      const list = steps(log);
      list[1] = {
        ...list[1]!,
        async run() {
          log.push('do connect');
          // Replica r1 took the operation over while this one was frozen here.
          await store.operations.setOwner(operation.id, 'r1', 'r0');
          if (outcome === 'fails') throw new BerthError('TIMEOUT', 'the operation passed its deadline');
        },
      };
      const result = await new OperationRunner(store).run(list, {}, { operationId: operation.id, signal: AbortSignal.timeout(5_000), undoTimeoutMs: 1_000, logger: silentLogger, owner: 'r0' });
      expect(result).toMatchObject({ ok: false, fenced: true, rolledBack: false, undoErrors: [] });
      expect(!result.ok && result.error.details.takenOver).toBe(true);
      // No undo ran, and the journal is as the takeover found it: `connect` still running, for r1.
      expect(log).toEqual(['do reserve', 'do connect']);
      const journal = (await store.operations.require(operation.id)).steps.map((s) => `${s.name}:${s.phase}:${s.state}`);
      expect(journal).toEqual(['reserve:do:done', 'connect:do:running']);
    }
  });

  it("a step's commit lands with its end in the journal, or neither does; a commit that fails is the step's failure and is undone", async () => {
    const store = createMemoryStore();
    const host = await store.hosts.create({ name: 'h' });
    const volume = await store.volumes.create({ name: 'v', projectId: 'p', sizeBytes: 1024, backend: 'file', multiattach: false, status: 'available' });
    const run = async (failCommit: boolean) => {
      const operation = await store.operations.create({ kind: 'attach', hostId: host.id, owner: 'test', deadlineAt: new Date(Date.now() + 60_000).toISOString() });
      const log: string[] = [];
      const context = { applied: [] as string[] };
      const list = markThenLast(volume.id, log, async () => ({ ran: true }), failCommit);
      const outcome = await new OperationRunner(store).run(list, context, { operationId: operation.id, signal: AbortSignal.timeout(5_000), undoTimeoutMs: 1_000, logger: silentLogger });
      return { outcome, log, context, journal: (await store.operations.require(operation.id)).steps };
    };
    const failed = await run(true);
    expect(failed.outcome).toMatchObject({ ok: false, rolledBack: true });
    // Rolled back with the transaction: the volume's change, and the context untouched.
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect(failed.context.applied).toEqual([]);
    expect(failed.log).toEqual(['do mark', 'undo mark']);
    expect(failed.journal.map((s) => [s.name, s.phase, s.state])).toEqual([
      ['mark', 'do', 'failed'],
      ['mark', 'undo', 'done'],
    ]);
    const ok = await run(false);
    expect(ok.outcome.ok).toBe(true);
    expect((await store.volumes.require(volume.id)).status).toBe('reserved');
    expect(ok.context.applied).toEqual(['mark']);
    expect(ok.journal.map((s) => [s.name, s.state, s.data])).toEqual([
      ['mark', 'done', { ran: true, marked: true }],
      ['last', 'done', null],
    ]);
  });
});

describe('OperationRunner with an owner: the writes of a run taken over are fenced', () => {
  async function owned() {
    const store = createMemoryStore();
    const host = await store.hosts.create({ name: 'h' });
    const volume = await store.volumes.create({ name: 'v', projectId: 'p', sizeBytes: 1024, backend: 'file', multiattach: false, status: 'available' });
    const operation = await store.operations.create({ kind: 'attach', hostId: host.id, owner: 'r0', deadlineAt: new Date(Date.now() + 60_000).toISOString() });
    const options = { operationId: operation.id, signal: AbortSignal.timeout(5_000), undoTimeoutMs: 1_000, logger: silentLogger, owner: 'r0' };
    const takeOver = () => store.operations.setOwner(operation.id, 'r1', 'r0');
    const journal = async () => (await store.operations.require(operation.id)).steps.map((s) => `${s.name}:${s.phase}:${s.state}`);
    return { store, volume, options, takeOver, journal };
  }

  it("a step's commit is not applied when the operation was taken over before it: its store work, its end and the context stay as they were", async () => {
    const w = await owned();
    const log: string[] = [];
    const context = { applied: [] as string[] };
    const list = markThenLast(w.volume.id, log, async () => {
      await w.takeOver();
    });
    const outcome = await new OperationRunner(w.store).run(list, context, w.options);
    expect(outcome).toMatchObject({ ok: false, fenced: true, rolledBack: false, undoErrors: [] });
    expect((await w.store.volumes.require(w.volume.id)).status).toBe('available');
    expect(context.applied).toEqual([]);
    expect(log).toEqual(['do mark']);
    expect(await w.journal()).toEqual(['mark:do:running']);
  });

  it('an undo phase taken over stops at its next write: the undos left are the new owner\'s', async () => {
    const w = await owned();
    const log: string[] = [];
    const list = steps(log, { failAt: 'connect' }).slice(0, 2);
    list[1] = {
      ...list[1]!,
      async undo() {
        log.push('undo connect');
        // Frozen in this undo; r1 took the operation over meanwhile.
        await w.takeOver();
      },
    };
    const outcome = await new OperationRunner(w.store).run(list, {}, w.options);
    expect(outcome).toMatchObject({ ok: false, fenced: true, rolledBack: false });
    expect(log).toEqual(['do reserve', 'do connect', 'undo connect']);
    expect(await w.journal()).toEqual(['reserve:do:done', 'connect:do:failed', 'connect:undo:running']);
  });

  it('a host step refused because the operation was taken over (no work handed out) ends the run fenced: nothing undone, nothing written', async () => {
    for (const phase of ['do', 'undo'] as const) {
      const w = await owned();
      const log: string[] = [];
      const list = steps(log, phase === 'undo' ? { failAt: 'disconnect' } : {}).slice(0, 3);
      const refuse = async (what: string) => {
        log.push(what);
        await w.takeOver();
        throw takenOverError(w.options.operationId);
      };
      if (phase === 'do') list[1] = { ...list[1]!, run: () => refuse('do connect') };
      else list[1] = { ...list[1]!, undo: () => refuse('undo connect') };
      const outcome = await new OperationRunner(w.store).run(list, {}, w.options);
      expect(outcome).toMatchObject({ ok: false, fenced: true, rolledBack: false, undoErrors: [] });
      if (phase === 'do') {
        expect(log).toEqual(['do reserve', 'do connect']);
        expect(await w.journal()).toEqual(['reserve:do:done', 'connect:do:running']);
      } else {
        // The undo of reserve is r1's to run, not this process's.
        expect(log).toEqual(['do reserve', 'do connect', 'do disconnect', 'undo disconnect', 'undo connect']);
        expect(await w.journal()).toEqual(['reserve:do:done', 'connect:do:done', 'disconnect:do:failed', 'disconnect:undo:done', 'connect:undo:running']);
      }
    }
  });
});

describe('OperationRunner: which journal writes wait for the disk', () => {
  it('defers the rows that start a store-only step; the row before any other step and the last end are durable, commit steps included', async () => {
    const deferred = new AsyncLocalStorage<true>();
    const writes: string[] = [];
    const journal: Journal = { rows: [] };
    const inner = journalStore(journal);
    const record = <T>(what: string, result: T): T => {
      writes.push(`${what}:${deferred.getStore() ? 'deferred' : 'durable'}`);
      return result;
    };
    const store = {
      operations: {
        startStep: async (id: string, name: string, phase: 'do' | 'undo') => record(`start ${name}`, await inner.operations.startStep(id, name, phase)),
        endStep: async (id: string, seq: number, outcome: { state: 'done' }) => record(`end ${journal.rows[seq - 1]?.name}`, await inner.operations.endStep(id, seq, outcome)),
        advanceStep: async (id: string, seq: number, outcome: { state: 'done' }, next: { name: string; phase: 'do' | 'undo' }) =>
          record(`${journal.rows[seq - 1]?.name} -> ${next.name}`, await inner.operations.advanceStep(id, seq, outcome, next)),
      },
      deferDurability: <T>(fn: () => Promise<T>): Promise<T> => deferred.run(true, fn),
      transaction: <T>(fn: (tx: Store) => Promise<T>): Promise<T> => fn(store),
    } as unknown as Store;
    const step = (name: string, storeOnly: boolean, withCommit = false): Step<unknown> => ({
      name,
      ...(storeOnly ? { storeOnly: true } : {}),
      async run() {},
      // A commit step's store work lands in its boundary's transaction: the same durability.
      ...(withCommit ? { commit: async () => record(`commit ${name}`, {}) } : {}),
    });
    const outcome = await new OperationRunner(store).run(
      [step('reserve', true, true), step('dispatch', true), step('initialize', false, true), step('connect', false), step('publish', false, true), step('complete', true, true)],
      {},
      { operationId: 'op', signal: AbortSignal.timeout(5_000), undoTimeoutMs: 1_000, logger: silentLogger },
    );
    expect(outcome.ok).toBe(true);
    expect(writes).toEqual([
      'start reserve:deferred',
      'commit reserve:deferred',
      'reserve -> dispatch:deferred',
      // Before a step that changes something outside the store: durable.
      'dispatch -> initialize:durable',
      'commit initialize:durable',
      'initialize -> connect:durable',
      'connect -> publish:durable',
      'commit publish:deferred',
      'publish -> complete:deferred',
      // The last end is durable: the caller reports success from here on.
      'commit complete:durable',
      'end complete:durable',
    ]);
  });
});
