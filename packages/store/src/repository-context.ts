import type { Kysely, QueryCreator, SelectQueryBuilder } from 'kysely';
import type { Database, DbJson } from './database.js';
import type { ConstraintViolation, StoreDialect } from './store-dialect.js';

/** What every repository is built from. */
export interface RepositoryContext {
  /** The Kysely instance to use now: the open transaction's when there is one. */
  db(): Kysely<Database>;
  /**
   * For one statement that keeps a lease alive (a renewal): the open transaction's when there is
   * one, else a connection reserved for renewals where the engine has a pool, so that a pool
   * busy with ordinary work does not make a live holder's lease pass.
   */
  urgentDb(): Kysely<Database>;
  /**
   * Run `fn` as one transaction: the open one when there is one, else a new one (its statements
   * go through `db()` as usual). For a few writes that must land together.
   */
  atomically<T>(fn: () => Promise<T>): Promise<T>;
  /** The engine-specific encodings. */
  readonly dialect: StoreDialect;
  /** The store's clock (ISO-8601, strictly increasing). */
  now(): string;
  /** A new row id. */
  newId(): string;
}

/** Encode a nullable JSON value (`null` and `undefined` become SQL NULL). */
export function encodeNullableJson(ctx: RepositoryContext, value: unknown): DbJson | null {
  return value === null || value === undefined ? null : ctx.dialect.encodeJson(value);
}

/** The constraint `error` violated, if any. */
export function violation(ctx: RepositoryContext, error: unknown): ConstraintViolation | undefined {
  return ctx.dialect.constraintViolation(error);
}

/**
 * `WITH picked AS MATERIALIZED (<pick> FOR UPDATE SKIP LOCKED)`, for an UPDATE that claims rows:
 * `.where('id', 'in', (eb) => eb.selectFrom('picked').select('picked.id'))`. MATERIALIZED runs
 * the pick once — as a plain `IN (SELECT … LIMIT n SKIP LOCKED)` PostgreSQL may re-run it and
 * update more than n rows; rows a concurrent claimer holds are skipped where the engine has
 * row locks (without them, SQLite's single writer makes the statement atomic anyway).
 */
export function withPicked<TB extends keyof Database, O extends { id: string } = { id: string }>(
  ctx: RepositoryContext,
  pick: (db: QueryCreator<Database>) => SelectQueryBuilder<Database, TB, O>,
): QueryCreator<Database & { picked: O }> {
  return ctx
    .db()
    .with(
      (cte) => cte('picked').materialized(),
      (db) => pick(db).$if(ctx.dialect.supportsRowLocks, (qb) => qb.forUpdate().skipLocked()),
    );
}
