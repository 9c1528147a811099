import { BerthError, isoTimestamp, newWorkItemRow, parseWith, workItemOutcomeRow, zErrorSummary, zLeaseMs, zWorkItemState } from '@berth/core';
import type {
  ErrorSummary,
  NewWorkItem,
  WorkItem,
  WorkItemFilter,
  WorkItemOutcome,
  WorkItemRepository,
  WorkItemState,
} from '@berth/core';
import type { Updateable } from 'kysely';
import { z } from '@berth/core/zod';
import type { WorkItemsTable } from '../database.js';
import { encodeNullableJson, violation, withPicked } from '../repository-context.js';
import type { RepositoryContext } from '../repository-context.js';
import { toWorkItem } from '../row-mappers.js';
import { agentReplaced, alreadyExists, notFound, stateConflict } from '../store-errors.js';

const zLimit = z.number().int().positive().max(10_000);
// Built once, not at every call (a zod schema costs more to build than to run).
const zWorker = z.string().min(1);
const zStates = z.array(zWorkItemState);

/** How many items `expire` resets at most when the caller names no limit. */
const DEFAULT_EXPIRE_LIMIT = 100;

/** Oldest first, ties by id: `UPDATE … RETURNING` gives rows in no particular order. */
function byAge(a: WorkItem, b: WorkItem): number {
  if (a.createdAt !== b.createdAt) return a.createdAt < b.createdAt ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** Work items (host steps with leases) over Kysely. */
export function createWorkItemRepository(ctx: RepositoryContext): WorkItemRepository {
  const leaseUntil = (ms: number): string => isoTimestamp(Date.parse(ctx.now()) + ms);

  const get = async (id: string): Promise<WorkItem | undefined> => {
    const row = await ctx.db().selectFrom('work_items').selectAll().where('id', '=', id).executeTakeFirst();
    return row === undefined ? undefined : toWorkItem(row, ctx.dialect);
  };

  /** The registered agent of host `hostId` (null when none registered or the host is missing). */
  const agentOf = async (hostId: string, db = ctx.db(), lock = false): Promise<string | null> => {
    const row = await db
      .selectFrom('hosts')
      .select('agent_instance')
      .where('id', '=', hostId)
      .$if(lock && ctx.dialect.supportsRowLocks, (qb) => qb.forShare())
      .executeTakeFirst();
    return row?.agent_instance ?? null;
  };

  /** Why a CAS on item `id` held by `worker` matched no row. */
  const notHeld = async (id: string, worker: string): Promise<Error> => {
    const current = await get(id);
    if (current === undefined) return notFound('work item', id);
    if (current.state !== 'claimed') return stateConflict('work item', id, id, current.state, ['claimed']);
    const agent = await agentOf(current.hostId);
    if (agent !== null && agent !== worker) return agentReplaced(current.hostId, worker, agent);
    return new BerthError('CONFLICT', `work item ${id} is held by another agent, not ${worker}`, {
      hint: 'its lease passed and it was handed out again; drop this attempt and claim new work',
      details: { id, actual: 'claimed', expected: ['claimed'], worker },
    });
  };

  /** CAS on an item `worker` holds (claimed, its lease owner): apply `set` or say why not. */
  const updateHeld = async (id: string, worker: string, set: Updateable<WorkItemsTable>, db = ctx.db()): Promise<WorkItem> => {
    const row = await db
      .updateTable('work_items')
      .set(set)
      .where('id', '=', id)
      .where('state', '=', 'claimed')
      .where('lease_owner', '=', worker)
      // Fenced by the host's agent record: a replaced agent renews and completes nothing.
      .where((eb) =>
        eb.not(
          eb.exists(
            eb
              .selectFrom('hosts')
              .select('hosts.id')
              .whereRef('hosts.id', '=', 'work_items.host_id')
              .where('hosts.agent_instance', 'is not', null)
              .where('hosts.agent_instance', '<>', worker),
          ),
        ),
      )
      .returningAll()
      .executeTakeFirst();
    if (row === undefined) throw await notHeld(id, worker);
    return toWorkItem(row, ctx.dialect);
  };

  return {
    async create(input: NewWorkItem): Promise<WorkItem> {
      const item = newWorkItemRow(input, input.id ?? ctx.newId(), ctx.now());
      try {
        await ctx.dialect.guarded(() =>
          ctx
            .db()
            .insertInto('work_items')
            .values({
              id: item.id,
              operation_id: item.operationId,
              host_id: item.hostId,
              step: item.step,
              state: item.state,
              payload: ctx.dialect.encodeJson(item.payload),
              result: null,
              error: null,
              attempts: 0,
              lease_owner: null,
              lease_expires_at: null,
              created_at: item.createdAt,
              updated_at: item.updatedAt,
            })
            .execute(),
        );
      } catch (error) {
        const kind = violation(ctx, error);
        if (kind === 'unique') throw alreadyExists(`a work item with id ${item.id} already exists`, { id: item.id }, error);
        if (kind !== 'foreign_key') throw error;
        const db = ctx.db();
        if ((await db.selectFrom('operations').select('id').where('id', '=', item.operationId).executeTakeFirst()) === undefined) {
          throw notFound('operation', item.operationId);
        }
        throw notFound('host', item.hostId);
      }
      return item;
    },

    get,

    async require(id: string): Promise<WorkItem> {
      const item = await get(id);
      if (item === undefined) throw notFound('work item', id);
      return item;
    },

    async list(filter: WorkItemFilter = {}): Promise<WorkItem[]> {
      let query = ctx.db().selectFrom('work_items').selectAll();
      if (filter.hostId !== undefined) query = query.where('host_id', '=', filter.hostId);
      if (filter.operationId !== undefined) query = query.where('operation_id', '=', filter.operationId);
      if (filter.state !== undefined) {
        const states: readonly WorkItemState[] = typeof filter.state === 'string' ? [filter.state] : filter.state;
        if (states.length === 0) return [];
        query = query.where('state', 'in', parseWith(zStates, [...states], 'work item state'));
      }
      const rows = await query.orderBy('created_at').orderBy('id').execute();
      return rows.map((row) => toWorkItem(row, ctx.dialect));
    },

    async claim(hostId: string, worker: string, leaseMs: number, limit = 1): Promise<WorkItem[]> {
      const ms = parseWith(zLeaseMs, leaseMs, 'work item lease');
      const max = parseWith(zLimit, limit, 'claim limit');
      const owner = parseWith(zWorker, worker, 'worker');
      // One transaction with the host's row share-locked: a registration (`recordAgent` and
      // `requeue`, one transaction) comes wholly before this claim, which is then refused, or
      // after it, and hands what it took back to pending.
      return ctx.atomically(async () => {
        const agent = await agentOf(hostId, ctx.db(), true);
        if (agent !== null && agent !== owner) throw agentReplaced(hostId, owner, agent);
        // The oldest pending rows of the host, picked and locked once; the outer WHERE re-checks
        // the state after any wait.
        const rows = await withPicked(ctx, (db) =>
          db
            .selectFrom('work_items')
            .select('id')
            .where('host_id', '=', hostId)
            .where('state', '=', 'pending')
            .orderBy('created_at')
            .orderBy('id')
            .limit(max),
        )
          .updateTable('work_items')
          .set((eb) => ({
            state: 'claimed' as const,
            lease_owner: owner,
            lease_expires_at: leaseUntil(ms),
            attempts: eb('attempts', '+', 1),
            updated_at: ctx.now(),
          }))
          .where('state', '=', 'pending')
          .where('id', 'in', (eb) => eb.selectFrom('picked').select('picked.id'))
          .returningAll()
          .execute();
        return rows.map((row) => toWorkItem(row, ctx.dialect)).sort(byAge);
      });
    },

    async renew(id: string, worker: string, leaseMs: number): Promise<WorkItem> {
      const ms = parseWith(zLeaseMs, leaseMs, 'work item lease');
      // A renewal keeps a lease alive: it takes the connection reserved for that.
      return updateHeld(id, worker, { lease_expires_at: leaseUntil(ms), updated_at: ctx.now() }, ctx.urgentDb());
    },

    async complete(id: string, worker: string, outcome: WorkItemOutcome): Promise<WorkItem> {
      const valid = workItemOutcomeRow(outcome);
      return updateHeld(id, worker, {
        state: valid.state,
        result: encodeNullableJson(ctx, valid.result),
        error: encodeNullableJson(ctx, valid.error),
        lease_expires_at: null,
        updated_at: ctx.now(),
      });
    },

    async expire(limit = DEFAULT_EXPIRE_LIMIT): Promise<WorkItem[]> {
      const max = parseWith(zLimit, limit, 'expire limit');
      const now = ctx.now();
      const rows = await withPicked(ctx, (db) =>
        db.selectFrom('work_items').select('id').where('state', '=', 'claimed').where('lease_expires_at', '<', now).orderBy('lease_expires_at').limit(max),
      )
        .updateTable('work_items')
        .set({ state: 'pending', lease_owner: null, lease_expires_at: null, updated_at: ctx.now() })
        .where('state', '=', 'claimed')
        .where('lease_expires_at', '<', now)
        .where('id', 'in', (eb) => eb.selectFrom('picked').select('picked.id'))
        .returningAll()
        .execute();
      return rows.map((row) => toWorkItem(row, ctx.dialect)).sort(byAge);
    },

    async cancel(id: string, error: ErrorSummary): Promise<WorkItem> {
      const valid = parseWith(zErrorSummary, error, 'work item error');
      // attempts stay: > 0 tells the caller an agent claimed it (the step may have run).
      const row = await ctx
        .db()
        .updateTable('work_items')
        .set({ state: 'failed', error: ctx.dialect.encodeJson(valid), lease_owner: null, lease_expires_at: null, updated_at: ctx.now() })
        .where('id', '=', id)
        .where('state', 'in', ['pending', 'claimed'])
        .returningAll()
        .executeTakeFirst();
      if (row !== undefined) return toWorkItem(row, ctx.dialect);
      const current = await get(id);
      if (current === undefined) throw notFound('work item', id);
      throw stateConflict('work item', id, id, current.state, ['pending', 'claimed']);
    },

    async requeue(hostId: string, exceptWorker: string): Promise<WorkItem[]> {
      const keep = parseWith(zWorker, exceptWorker, 'worker');
      const rows = await withPicked(ctx, (db) =>
        db
          .selectFrom('work_items')
          .select('id')
          .where('host_id', '=', hostId)
          .where('state', '=', 'claimed')
          .where('lease_owner', '<>', keep),
      )
        .updateTable('work_items')
        .set({ state: 'pending', lease_owner: null, lease_expires_at: null, updated_at: ctx.now() })
        .where('state', '=', 'claimed')
        .where('lease_owner', '<>', keep)
        .where('id', 'in', (eb) => eb.selectFrom('picked').select('picked.id'))
        .returningAll()
        .execute();
      return rows.map((row) => toWorkItem(row, ctx.dialect)).sort(byAge);
    },
  };
}
