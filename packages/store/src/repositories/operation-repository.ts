import { BerthError, isoTimestamp, lazySchema, newOperationRow, operationLeaseMs, operationPruneFilter, parseWith, zLeaseMs, zId, zOperation, zOperationState, zOperationStep } from '@berth/core';
import { z } from '@berth/core/zod';
import type {
  ClaimedOperation,
  ErrorSummary,
  NewOperation,
  Operation,
  OperationFilter,
  OperationPruneFilter,
  OperationRepository,
  OperationState,
  OperationStep,
  StepOutcome,
} from '@berth/core';
import { sql } from 'kysely';
import type { QueryCreator, RawBuilder, Selectable } from 'kysely';
import { cachedQuery, type CachedQuery } from '../cached-query.js';
import type { Database, DbJson, OperationsTable } from '../database.js';
import { encodeNullableJson, violation, withPicked } from '../repository-context.js';
import type { RepositoryContext } from '../repository-context.js';
import { toOperation, toOperationStep } from '../row-mappers.js';
import type { StoreDialect } from '../store-dialect.js';
import { alreadyExists, notFound, notOwner, stateConflict } from '../store-errors.js';

const zStepOutcome = lazySchema(() => zOperationStep.unwrap().pick({ error: true, data: true }).partial());
const zStepStart = lazySchema(() => zOperationStep.unwrap().pick({ name: true, phase: true }));

/** A journal row to start. */
type StepStart = z.infer<typeof zStepStart>;

/** A step outcome, validated, with the instant it ends. */
interface ValidOutcome {
  state: 'done' | 'failed';
  data: Record<string, unknown> | null | undefined;
  error: ErrorSummary | null | undefined;
  endedAt: string;
}
const zFinishOutcome = lazySchema(() => zOperation.unwrap().pick({ error: true, result: true }).partial());
// Built once, not at every call (a zod schema costs more to build than to run).
const zEndState = lazySchema(() => zOperationState.exclude(['running']));
const zClaimLimit = lazySchema(() => z.number().int().positive());

/**
 * How often `startStep` / `advanceStep` retry when a concurrent writer took the same seq (PostgreSQL only;
 * SQLite serialises writers). Each round one of the racing writers wins, so N concurrent
 * callers need at most N rounds; this bounds the loop, it is not expected to be reached.
 */
const START_STEP_ATTEMPTS = 64;

/** How many operations `claimExpired` takes at most when the caller names no limit. */
const DEFAULT_CLAIM_LIMIT = 10;

/** How many ids go into one `IN (...)` when loading journals. */
const STEP_BATCH = 500;

/** The parameters of a journal row to start. */
interface StepRow extends StepStart {
  id: string;
  startedAt: string;
}

/** The parameters of closing running row `seq` of operation `id`. */
interface ClosedStep {
  id: string;
  seq: number;
  state: 'done' | 'failed';
  endedAt: string;
  data: DbJson | null;
  error: DbJson | null;
}

/** The seq a journal INSERT … RETURNING gave (PostgreSQL returns bigint as a string). */
function firstSeq(rows: ReadonlyArray<{ seq: number | string | bigint }>): number {
  const [row] = rows;
  if (row === undefined) throw new Error('the journal row was not inserted');
  return Number(row.seq);
}

/** The owner a fenced journal write is made for (`owner`'s, while the operation runs). */
interface Owned {
  owner: string;
}

/** The journal's statements of one engine: plain, and fenced by the operation's owner. */
interface JournalQueries {
  startQuery: CachedQuery<StepRow, { seq: number }>;
  closeQuery: CachedQuery<ClosedStep, never>;
  advanceQuery: CachedQuery<ClosedStep & StepRow, { seq: number }>;
  ownedStartQuery: CachedQuery<StepRow & Owned, { seq: number }>;
  ownedCloseQuery: CachedQuery<ClosedStep & Owned, never>;
  ownedAdvanceQuery: CachedQuery<ClosedStep & StepRow & Owned, { seq: number }>;
}

const journalQueriesByDialect = new WeakMap<StoreDialect, JournalQueries>();

/**
 * The journal's statements, compiled once per engine (a boundary is written for every step of
 * every operation; repositories are made again for every transaction).
 */
function journalQueries(dialect: StoreDialect): JournalQueries {
  const known = journalQueriesByDialect.get(dialect);
  if (known !== undefined) return known;
  /**
   * `INSERT … SELECT` of running row `valid` with seq one past the operation's last — computed in
   * the statement, so two writers cannot both read the same max (one gets a unique violation).
   * With `onlyIf`, the row is inserted only when that holds (a HAVING on the one aggregate row).
   */
  const insertStep = (db: QueryCreator<Database>, p: StepRow, onlyIf?: RawBuilder<boolean>) =>
    db
      .insertInto('operation_steps')
      .columns(['operation_id', 'seq', 'name', 'phase', 'state', 'started_at'])
      .expression((eb) =>
        eb
          .selectFrom('operation_steps')
          .where('operation_steps.operation_id', '=', p.id)
          .select((sb) => [
            sb.val(p.id).as('operation_id'),
            sb(sb.fn.coalesce(sb.fn.max('operation_steps.seq'), sb.lit(0)), '+', sb.lit(1)).as('seq'),
            sb.val(p.name).as('name'),
            sb.val(p.phase).as('phase'),
            sb.val('running').as('state'),
            sb.val(p.startedAt).as('started_at'),
          ])
          .$if(onlyIf !== undefined, (qb) => qb.having(onlyIf ?? sql<boolean>`true`)),
      )
      .returning('seq');

  /**
   * `EXISTS` operation `id` running and `owner`'s, its row held `FOR SHARE` until the statement's
   * end on PostgreSQL. `FOR SHARE` conflicts with every update of the row — a takeover's
   * `claimExpired` (a `FOR UPDATE SKIP LOCKED` pick), recovery's `setOwner`, `finish`, each a plain
   * `UPDATE` (`FOR NO KEY UPDATE`) — so the write and any change of owner or state are ordered:
   * an update in progress makes the write wait, then re-check the row's newest version
   * (EvalPlanQual at READ COMMITTED) and write nothing; a write holding the lock makes the update
   * wait for the end of this one statement (a takeover's pick skips the row until a later beat).
   * `FOR KEY SHARE` is not enough: it conflicts with no non-key update and re-checks after none,
   * so a write whose snapshot came before a committed `setOwner` or `finish` still went through
   * (found in review with the statements interleaved on a real server). The heartbeat's `UPDATE`
   * of the lease waits at most for one such statement. SQLite has one writer at a time.
   */
  const lockOwner = sql.raw(dialect.supportsRowLocks ? ' for share' : '');
  const ownedBy = (p: { id: string; owner: string }) =>
    sql<boolean>`exists (select 1 from operations as fence where fence.id = ${p.id} and fence.owner = ${p.owner} and fence.state = 'running'${lockOwner})`;

  /** `UPDATE` closing running row `seq` of `id`, its duration computed by the engine from its start. */
  const closeStep = (db: QueryCreator<Database>, p: ClosedStep, onlyIf?: RawBuilder<boolean>) =>
    db
      .updateTable('operation_steps')
      .set({
        state: p.state,
        ended_at: p.endedAt,
        duration_ms: dialect.elapsedMs('started_at', p.endedAt),
        data: p.data,
        error: p.error,
      })
      .where('operation_id', '=', p.id)
      .where('seq', '=', p.seq)
      .where('state', '=', 'running')
      .$if(onlyIf !== undefined, (qb) => qb.where(onlyIf ?? sql<boolean>`true`));

  const startQuery = cachedQuery<StepRow, { seq: number }>(['id', 'name', 'phase', 'startedAt'], (db, p) => insertStep(db, p));
  const closeQuery = cachedQuery<ClosedStep, never>(['id', 'seq', 'state', 'endedAt', 'data', 'error'], closeStep);
  // One statement: the row is inserted only if the UPDATE closed one (the CTE's rows feed the
  // HAVING), so a refused close writes nothing; a seq race aborts both. The INSERT names `ended`
  // only in raw SQL, so it is built on the plain schema's type.
  const advance = (db: QueryCreator<Database>, p: ClosedStep & StepRow, onlyIf?: RawBuilder<boolean>) =>
    insertStep(
      db.with('ended', (qc) => closeStep(qc, p, onlyIf).returning('operation_id')) as unknown as QueryCreator<Database>,
      p,
      sql<boolean>`exists (select 1 from ended)`,
    );
  const advanceQuery = cachedQuery<ClosedStep & StepRow, { seq: number }>(
    ['id', 'seq', 'state', 'endedAt', 'data', 'error', 'name', 'phase', 'startedAt'],
    (db, p) => advance(db, p),
  );
  // The same statements fenced: written only while the operation runs and is `owner`'s, checked
  // in the statement itself (one autocommit, no transaction around it).
  const ownedStartQuery = cachedQuery<StepRow & Owned, { seq: number }>(['id', 'name', 'phase', 'startedAt', 'owner'], (db, p) => insertStep(db, p, ownedBy(p)));
  const ownedCloseQuery = cachedQuery<ClosedStep & Owned, never>(['id', 'seq', 'state', 'endedAt', 'data', 'error', 'owner'], (db, p) => closeStep(db, p, ownedBy(p)));
  const ownedAdvanceQuery = cachedQuery<ClosedStep & StepRow & Owned, { seq: number }>(
    ['id', 'seq', 'state', 'endedAt', 'data', 'error', 'name', 'phase', 'startedAt', 'owner'],
    (db, p) => advance(db, p, ownedBy(p)),
  );
  const queries = { startQuery, closeQuery, advanceQuery, ownedStartQuery, ownedCloseQuery, ownedAdvanceQuery };
  journalQueriesByDialect.set(dialect, queries);
  return queries;
}

/** Operations and their journal over Kysely. */
export function createOperationRepository(ctx: RepositoryContext): OperationRepository {
  /** The instant `ms` after the store's clock now. */
  const leaseUntil = (ms: number): string => isoTimestamp(Date.parse(ctx.now()) + ms);

  const stepsOf = async (ids: readonly string[]): Promise<Map<string, OperationStep[]>> => {
    const byOperation = new Map<string, OperationStep[]>(ids.map((id) => [id, []]));
    for (let i = 0; i < ids.length; i += STEP_BATCH) {
      const rows = await ctx
        .db()
        .selectFrom('operation_steps')
        .selectAll()
        .where('operation_id', 'in', ids.slice(i, i + STEP_BATCH))
        .orderBy('operation_id')
        .orderBy('seq')
        .execute();
      for (const row of rows) byOperation.get(row.operation_id)?.push(toOperationStep(row, ctx.dialect));
    }
    return byOperation;
  };

  const withSteps = async (rows: ReadonlyArray<Selectable<OperationsTable>>): Promise<Operation[]> => {
    if (rows.length === 0) return [];
    const steps = await stepsOf(rows.map((row) => row.id));
    return rows.map((row) => toOperation(row, steps.get(row.id) ?? [], ctx.dialect));
  };

  const get = async (id: string): Promise<Operation | undefined> => {
    const row = await ctx.db().selectFrom('operations').selectAll().where('id', '=', id).executeTakeFirst();
    if (row === undefined) return undefined;
    const [operation] = await withSteps([row]);
    return operation;
  };

  const require = async (id: string): Promise<Operation> => {
    const operation = await get(id);
    if (operation === undefined) throw notFound('operation', id);
    return operation;
  };

  const findByIdempotencyKey = async (key: string): Promise<Operation | undefined> => {
    const row = await ctx.db().selectFrom('operations').selectAll().where('idempotency_key', '=', key).executeTakeFirst();
    if (row === undefined) return undefined;
    const [operation] = await withSteps([row]);
    return operation;
  };

  const { startQuery, closeQuery, advanceQuery, ownedStartQuery, ownedCloseQuery, ownedAdvanceQuery } = journalQueries(ctx.dialect);

  /** The bound parameters of closing row `seq` of `id` with `valid`. */
  const closed = (id: string, seq: number, valid: ValidOutcome): ClosedStep => ({
    id,
    seq,
    state: valid.state,
    endedAt: valid.endedAt,
    data: encodeNullableJson(ctx, valid.data),
    error: encodeNullableJson(ctx, valid.error),
  });

  /** A validated step outcome with the instant it ends. */
  const validOutcome = (outcome: StepOutcome): ValidOutcome => {
    if (outcome.state !== 'done' && outcome.state !== 'failed') {
      throw new BerthError('VALIDATION', `invalid step outcome: state must be done or failed, got ${String(outcome.state)}`);
    }
    const valid = parseWith(zStepOutcome, { data: outcome.data, error: outcome.error }, 'step outcome');
    return { state: outcome.state, data: valid.data, error: valid.error, endedAt: ctx.now() };
  };

  /** Why closing row `seq` of `id` matched nothing: it is missing, or already closed (read only then). */
  const notClosable = async (id: string, seq: number): Promise<Error> => {
    const step = await ctx.db().selectFrom('operation_steps').select(['name', 'state']).where('operation_id', '=', id).where('seq', '=', seq).executeTakeFirst();
    if (step === undefined) return notFound('operation', `${id} step ${seq}`);
    return new BerthError('CONFLICT', `step ${seq} (${step.name}) of operation ${id} is already ${step.state}`, {
      hint: 'a journal row is closed once; start a new step to record another attempt',
      details: { id, seq, actual: step.state, expected: ['running'] },
    });
  };

  /** Close a journal row: the plain statement, or with `owner` the fenced one. */
  const closeRow = (closing: ClosedStep, owner: string | undefined) =>
    owner === undefined ? closeQuery(ctx.db(), closing) : ownedCloseQuery(ctx.db(), { ...closing, owner });

  /**
   * Why a journal write fenced by `owner` matched nothing: the operation no longer runs as
   * `owner`'s (`notOwner`), or `otherwise` (read only then).
   */
  const fencedOut = async (id: string, owner: string | undefined, otherwise: () => Promise<Error>): Promise<Error> => {
    if (owner !== undefined) {
      const row = await ctx.db().selectFrom('operations').select(['state', 'owner']).where('id', '=', id).executeTakeFirst();
      if (row === undefined) return notFound('operation', id);
      if (row.owner !== owner) return notOwner(id, owner, row);
      // Still ours but ended (this owner's own end, landed before): a state conflict, not a takeover.
      if (row.state !== 'running') return stateConflict('operation', id, id, row.state, ['running']);
    }
    return otherwise();
  };

  /**
   * Run `write`, which appends a journal row to `id`, again while a concurrent writer took the
   * same seq (PostgreSQL; each write is one statement or transaction, so a lost race wrote nothing).
   */
  const withSeqRetry = async <T>(id: string, write: () => Promise<T>): Promise<T> => {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await ctx.dialect.guarded(write);
      } catch (error) {
        const kind = violation(ctx, error);
        if (kind === 'foreign_key') throw notFound('operation', id);
        if (kind !== 'unique' || attempt >= START_STEP_ATTEMPTS) throw error;
      }
    }
  };

  /** Why a CAS from `running` on operation `id` matched no row. */
  const notRunning = async (id: string): Promise<Error> => {
    const row = await ctx.db().selectFrom('operations').select('state').where('id', '=', id).executeTakeFirst();
    if (row === undefined) return notFound('operation', id);
    return stateConflict('operation', id, id, row.state, ['running']);
  };

  return {
    async create(input: NewOperation): Promise<Operation> {
      const leaseMs = operationLeaseMs(input);
      const operation = newOperationRow(input, input.id ?? ctx.newId(), ctx.now());
      try {
        await ctx.dialect.guarded(() =>
          ctx
            .db()
            .insertInto('operations')
            .values({
              id: operation.id,
              kind: operation.kind,
              state: operation.state,
              volume_id: operation.volumeId,
              server_id: operation.serverId,
              attachment_id: operation.attachmentId,
              host_id: operation.hostId,
              idempotency_key: operation.idempotencyKey,
              owner: operation.owner,
              lease_expires_at: leaseMs === undefined ? null : leaseUntil(leaseMs),
              deadline_at: operation.deadlineAt,
              started_at: operation.startedAt,
              ended_at: null,
              error: null,
              result: null,
            })
            .execute(),
        );
      } catch (error) {
        if (violation(ctx, error) !== 'unique') throw error;
        const key = operation.idempotencyKey;
        const existing = key === null ? undefined : await findByIdempotencyKey(key);
        if (existing !== undefined) {
          throw new BerthError('CONFLICT', `idempotency key ${key} was already used by operation ${existing.id}`, {
            hint: 'look at that operation instead of starting a new one, or send another key',
            details: { operationId: existing.id, idempotencyKey: key },
            cause: error,
          });
        }
        throw alreadyExists(`an operation with id ${operation.id} already exists`, { id: operation.id }, error);
      }
      return operation;
    },

    get,
    require,
    findByIdempotencyKey,

    async list(filter: OperationFilter = {}): Promise<Operation[]> {
      let query = ctx.db().selectFrom('operations').selectAll();
      if (filter.state !== undefined) {
        const states: readonly OperationState[] = typeof filter.state === 'string' ? [filter.state] : filter.state;
        if (states.length === 0) return [];
        query = query.where('state', 'in', states);
      }
      if (filter.kind !== undefined) query = query.where('kind', '=', filter.kind);
      if (filter.volumeId !== undefined) query = query.where('volume_id', '=', filter.volumeId);
      query = query.orderBy('started_at', 'desc').orderBy('id', 'desc');
      if (filter.limit !== undefined) {
        if (!Number.isInteger(filter.limit) || filter.limit < 0) {
          throw new BerthError('VALIDATION', `invalid operation listing: limit must be a whole number ≥ 0, got ${filter.limit}`);
        }
        query = query.limit(filter.limit);
      }
      return withSteps(await query.execute());
    },

    async setAttachment(id: string, attachmentId: string): Promise<void> {
      const valid = parseWith(zId, attachmentId, 'attachment id');
      const result = await ctx
        .db()
        .updateTable('operations')
        .set({ attachment_id: valid })
        .where('id', '=', id)
        .executeTakeFirst();
      if (result.numUpdatedRows === 0n) throw notFound('operation', id);
    },

    async startStep(id: string, name: string, phase: 'do' | 'undo', owner?: string): Promise<number> {
      const valid = parseWith(zStepStart, { name, phase }, 'operation step');
      const started = await withSeqRetry(id, async () => {
        const row = { id, ...valid, startedAt: ctx.now() };
        const { rows } = owner === undefined ? await startQuery(ctx.db(), row) : await ownedStartQuery(ctx.db(), { ...row, owner });
        return rows.length === 0 ? undefined : firstSeq(rows);
      });
      // Without an owner the INSERT … SELECT always gives a row (or a foreign-key violation).
      if (started === undefined) {
        throw await fencedOut(id, owner, () =>
          // Refused, yet the operation reads as running and ours: its owner changed and changed back meanwhile.
          Promise.resolve(new BerthError('CONFLICT', `operation ${id} changed owner while a journal row was written; nothing was written`, { details: { id, owner } })),
        );
      }
      return started;
    },

    async endStep(id: string, seq: number, outcome: StepOutcome, owner?: string): Promise<void> {
      const result = await closeRow(closed(id, seq, validOutcome(outcome)), owner);
      if (!result.numAffectedRows) throw await fencedOut(id, owner, () => notClosable(id, seq));
    },

    async advanceStep(id: string, seq: number, outcome: StepOutcome, next: { name: string; phase: 'do' | 'undo' }, owner?: string): Promise<number> {
      const closing = closed(id, seq, validOutcome(outcome));
      const valid = parseWith(zStepStart, next, 'operation step');
      const started = await withSeqRetry(id, async () => {
        if (!ctx.dialect.writesInCte) {
          return ctx.atomically(async () => {
            // The close is fenced; the start, in the same transaction, follows only a close that happened.
            const result = await closeRow(closing, owner);
            if (!result.numAffectedRows) return undefined;
            return firstSeq((await startQuery(ctx.db(), { id, ...valid, startedAt: ctx.now() })).rows);
          });
        }
        const row = { ...closing, ...valid, startedAt: ctx.now() };
        const { rows } = owner === undefined ? await advanceQuery(ctx.db(), row) : await ownedAdvanceQuery(ctx.db(), { ...row, owner });
        return rows.length === 0 ? undefined : firstSeq(rows);
      });
      if (started === undefined) throw await fencedOut(id, owner, () => notClosable(id, seq));
      return started;
    },

    async finish(
      id: string,
      outcome: { state: Exclude<OperationState, 'running'>; error?: ErrorSummary | null; result?: Record<string, unknown> | null },
    ): Promise<Operation> {
      const state = parseWith(zEndState, outcome.state, 'operation outcome');
      const valid = parseWith(zFinishOutcome, { error: outcome.error, result: outcome.result }, 'operation outcome');
      // The row comes back from the UPDATE itself (RETURNING): only its journal is read after it.
      const row = await ctx
        .db()
        .updateTable('operations')
        .set({
          state,
          ended_at: ctx.now(),
          error: encodeNullableJson(ctx, valid.error),
          result: encodeNullableJson(ctx, valid.result),
        })
        .where('id', '=', id)
        .where('state', '=', 'running')
        .returningAll()
        .executeTakeFirst();
      if (row === undefined) throw await notRunning(id);
      const [operation] = await withSteps([row]);
      if (operation === undefined) throw notFound('operation', id);
      return operation;
    },

    async setOwner(id: string, owner: string, expectedOwner: string | null): Promise<void> {
      const result = await ctx
        .db()
        .updateTable('operations')
        .set({ owner })
        .where('id', '=', id)
        .where('state', '=', 'running')
        .where((eb) => (expectedOwner === null ? eb('owner', 'is', null) : eb('owner', '=', expectedOwner)))
        .executeTakeFirst();
      if (result.numUpdatedRows === 0n) throw await notRunning(id);
    },

    async heartbeat(owner: string, leaseMs: number): Promise<string[]> {
      const ms = parseWith(zLeaseMs, leaseMs, 'operation lease');
      // The connection reserved for leases: a pool busy with operations must not starve their renewal.
      const rows = await ctx
        .urgentDb()
        .updateTable('operations')
        .set({ lease_expires_at: leaseUntil(ms) })
        .where('owner', '=', owner)
        .where('state', '=', 'running')
        .returning('id')
        .execute();
      return rows.map((row) => row.id).sort();
    },

    async leaseExpiry(id: string): Promise<string | null | undefined> {
      const row = await ctx.db().selectFrom('operations').select('lease_expires_at').where('id', '=', id).executeTakeFirst();
      return row === undefined ? undefined : row.lease_expires_at;
    },

    async claimExpired(owner: string, leaseMs: number, limit = DEFAULT_CLAIM_LIMIT): Promise<ClaimedOperation[]> {
      const ms = parseWith(zLeaseMs, leaseMs, 'operation lease');
      const max = parseWith(zClaimLimit, limit, 'claim limit');
      const now = ctx.now();
      // One statement: the candidates are picked and locked once, and the outer WHERE re-checks
      // them after any wait.
      // The pick keeps each row's owner before the claim: the takeover names the process that stopped.
      const rows = await withPicked(ctx, (db) =>
        db.selectFrom('operations').select(['id', 'owner']).where('state', '=', 'running').where('lease_expires_at', '<', now).orderBy('lease_expires_at').limit(max),
      )
        .updateTable('operations')
        .set({ owner, lease_expires_at: leaseUntil(ms) })
        .where('state', '=', 'running')
        .where('lease_expires_at', '<', now)
        .where('id', 'in', (eb) => eb.selectFrom('picked').select('picked.id'))
        .returningAll()
        .returning((eb) => eb.selectFrom('picked').select('picked.owner').whereRef('picked.id', '=', 'operations.id').as('previous_owner'))
        .execute();
      const previous = new Map(rows.map((row) => [row.id, row.previous_owner ?? null]));
      const operations = await withSteps(rows.map(({ previous_owner: _previous, ...row }) => row));
      return operations
        .map((operation) => ({ ...operation, previousOwner: previous.get(operation.id) ?? null }))
        .sort((a, b) => (a.startedAt < b.startedAt ? -1 : a.startedAt > b.startedAt ? 1 : 0));
    },

    async prune(filter: OperationPruneFilter): Promise<number> {
      const { endedBefore, limit, dryRun } = operationPruneFilter(filter);
      // Started before the cut too: an operation ends after it starts, and `started_at` is indexed.
      let picked = ctx
        .db()
        .selectFrom('operations')
        .select('operations.id')
        .where('operations.state', '<>', 'running')
        .where('operations.started_at', '<', endedBefore)
        .where('operations.ended_at', '<', endedBefore)
        .where(({ not, exists, selectFrom }) =>
          not(
            exists(
              selectFrom('work_items')
                .select('work_items.id')
                .whereRef('work_items.operation_id', '=', 'operations.id')
                .where('work_items.state', 'in', ['pending', 'claimed']),
            ),
          ),
        )
        // Its attachment's journal may be the only record of whom the volume was exported to; an
        // older berth's attach that named none is how reconcile knows berth made an attachment of
        // the same volume and server (`madeByPipeline`).
        .where(({ not, exists, selectFrom }) =>
          not(
            exists(
              selectFrom('attachments')
                .select('attachments.id')
                .where((eb) =>
                  eb.or([
                    eb('attachments.id', '=', eb.ref('operations.attachment_id')),
                    eb.and([
                      eb('operations.attachment_id', 'is', null),
                      eb('operations.kind', '=', 'attach'),
                      eb('attachments.volume_id', '=', eb.ref('operations.volume_id')),
                      eb('attachments.server_id', '=', eb.ref('operations.server_id')),
                    ]),
                  ]),
                ),
            ),
          ),
        )
        .orderBy('operations.started_at')
        .orderBy('operations.id');
      if (limit !== undefined) picked = picked.limit(limit);
      if (dryRun) {
        const row = await ctx.db().selectFrom(picked.as('picked')).select((eb) => eb.fn.countAll<string | number>().as('n')).executeTakeFirstOrThrow();
        return Number(row.n);
      }
      // One statement: the journal rows and work items go by the foreign keys' ON DELETE CASCADE.
      const deleted = await ctx.db().deleteFrom('operations').where('id', 'in', picked).where('state', '<>', 'running').executeTakeFirst();
      return Number(deleted.numDeletedRows);
    },
  };
}
