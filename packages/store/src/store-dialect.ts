import type { ColumnDataType, IsolationLevel, RawBuilder } from 'kysely';
import type { DbBoolean, DbJson } from './database.js';

/** What a constraint violation was, as far as the repositories care. */
export type ConstraintViolation = 'unique' | 'foreign_key';

/**
 * The seam between the dialect-neutral repositories and one database engine. Everything the
 * repositories cannot express through Kysely's query builder lives behind this interface; a new
 * engine is one file that implements it plus one `open*Store` function.
 */
export interface StoreDialect {
  /** The engine's name, for messages. */
  readonly name: string;
  /** Column type of JSON documents (`text` on SQLite, `jsonb` on PostgreSQL). */
  readonly jsonType: ColumnDataType;
  /** Column type of booleans (`integer` 0/1 on SQLite, `boolean` on PostgreSQL). */
  readonly booleanType: ColumnDataType;
  /** Isolation level of `Store.transaction`, when the engine needs one set explicitly. */
  readonly isolationLevel?: IsolationLevel;
  /**
   * Whether `SELECT … FOR UPDATE SKIP LOCKED` exists (PostgreSQL). Without it (SQLite) a claim's
   * `UPDATE … WHERE id IN (SELECT …)` is atomic anyway, because the engine has one writer.
   */
  readonly supportsRowLocks: boolean;
  /**
   * Whether a `WITH` may hold an `UPDATE … RETURNING` whose rows feed the outer statement
   * (PostgreSQL's data-modifying CTEs): two writes in one statement. Without it (SQLite) such
   * pairs run as two statements in one transaction.
   */
  readonly writesInCte: boolean;
  /**
   * Whole milliseconds from the ISO-8601 instant in text column `column` to the instant `end`
   * (never negative), computed by the engine: a row's duration without reading it first.
   */
  elapsedMs(column: string, end: string): RawBuilder<number>;
  /** Encode a JSON-serialisable value for a JSON column. */
  encodeJson(value: unknown): DbJson;
  /** Decode what the driver returned for a JSON column (`null` stays `null`). */
  decodeJson(raw: unknown): unknown;
  /** Encode a boolean for a boolean column. */
  encodeBoolean(value: boolean): DbBoolean;
  /** Decode what the driver returned for a boolean column. */
  decodeBoolean(raw: unknown): boolean;
  /** Which constraint `error` (thrown by the driver) violated, if it is a constraint violation. */
  constraintViolation(error: unknown): ConstraintViolation | undefined;
  /**
   * Whether `error` means the engine aborted a transaction that lost a race and the whole
   * transaction may simply be run again (PostgreSQL: serialization failure, deadlock).
   */
  retryableTransaction(error: unknown): boolean;
  /**
   * Whether a failed transaction is known not to have committed because its connection was lost
   * before COMMIT went out (PostgreSQL): the store's outermost `transaction` then marks the error
   * `retryable`, so the pipelines' store retry runs the whole transaction again on a new connection.
   */
  lostBeforeCommit?(error: unknown): boolean;
  /**
   * Wraps every `Store.transaction` attempt (1 for the first run, 2 for the first retry, ...); the
   * transaction begins inside `run`. Where the engine aborts losers of races, this is where a
   * transaction that keeps losing gets its turn.
   */
  transactionAttempt?<T>(attempt: number, run: () => Promise<T>): Promise<T>;
  /**
   * Run one statement whose constraint violation the caller catches and goes on from (reads rows
   * to word the error, retries): the engine keeps the open transaction usable after it fails.
   * Other statements need no such care: their errors end the transaction.
   */
  guarded<T>(statement: () => Promise<T>): Promise<T>;
}
