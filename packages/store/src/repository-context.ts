import type { Kysely } from 'kysely';
import type { Database, DbJson } from './database.js';
import type { ConstraintViolation, StoreDialect } from './store-dialect.js';

/** What every repository is built from. */
export interface RepositoryContext {
  /** The Kysely instance to use now: the open transaction's when there is one. */
  db(): Kysely<Database>;
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
