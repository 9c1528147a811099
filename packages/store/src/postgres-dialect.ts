import { PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler, sql } from 'kysely';
import type { DatabaseIntrospector, Dialect, DialectAdapter, Driver, Kysely, QueryCompiler, RawBuilder } from 'kysely';
import type { DbBoolean, DbJson } from './database.js';
import { BerthPostgresDriver, guardPostgresStatement, withBeginPreamble } from './postgres-driver.js';
import type { BerthPostgresDriverOptions } from './postgres-driver.js';
import { isRetryableTransactionError, lostBeforeCommit } from './postgres-errors.js';
import type { ConstraintViolation, StoreDialect } from './store-dialect.js';

/** From this attempt on, a transaction locks `transaction_gate` exclusively and so runs alone. */
export const EXCLUSIVE_FROM_ATTEMPT = 3;

/**
 * How many store transactions of this process ran a first, second, … attempt (the last slot
 * counts every attempt from its index on): the serialization failures retried, for benchmarks.
 */
export const postgresTransactionAttempts: number[] = [0, 0, 0, 0, 0, 0];

/**
 * PostgreSQL as the repositories see it: jsonb and boolean columns, constraint errors by SQLSTATE,
 * SERIALIZABLE transactions retried on serialization failures, row locks with SKIP LOCKED.
 */
export const postgresStoreDialect: StoreDialect = {
  name: 'postgres',
  jsonType: 'jsonb',
  booleanType: 'boolean',
  // SERIALIZABLE, not row locks: the port's transactions are "read, decide, CAS" code written
  // against SQLite's one-writer semantics, and the repositories have no "lock this row" verb.
  // Serializable snapshot isolation keeps exactly those semantics without touching the callers;
  // the price is that a transaction losing a race is aborted (40001) and run again.
  isolationLevel: 'serializable',
  supportsRowLocks: true,
  writesInCte: true,
  elapsedMs(column: string, end: string): RawBuilder<number> {
    // Cut to the millisecond as SQLite's form and Date.parse do (the clock writes microseconds).
    return sql<number>`greatest(0, round(extract(epoch from ((substr(${end}::text, 1, 23) || 'Z')::timestamptz - (substr(${sql.ref(column)}, 1, 23) || 'Z')::timestamptz)) * 1000))::integer`;
  },
  encodeJson(value: unknown): DbJson {
    // A string parameter is cast to jsonb by the server; an array given as is would become a
    // PostgreSQL array.
    return JSON.stringify(value) as unknown as DbJson;
  },
  decodeJson(raw: unknown): unknown {
    // pg parses jsonb itself.
    return raw === undefined ? null : raw;
  },
  encodeBoolean(value: boolean): DbBoolean {
    return value as unknown as DbBoolean;
  },
  decodeBoolean(raw: unknown): boolean {
    return raw === true;
  },
  constraintViolation(error: unknown): ConstraintViolation | undefined {
    const code = (error as { code?: unknown } | null)?.code;
    if (code === '23505') return 'unique';
    if (code === '23503') return 'foreign_key';
    return undefined;
  },
  retryableTransaction: isRetryableTransactionError,
  lostBeforeCommit,
  transactionAttempt<T>(attempt: number, run: () => Promise<T>): Promise<T> {
    // Serializable transactions on one hot row abort each other; retrying at once makes progress
    // overall, but one transaction can lose again and again. So every store transaction first
    // locks the empty table `transaction_gate` in ROW SHARE mode (compatible with itself), and
    // one that lost twice locks it EXCLUSIVE: it waits for the running ones to finish, new ones
    // queue behind it (PostgreSQL grants conflicting locks in order), and it runs alone —
    // waiting on a lock, never sleeping. LOCK TABLE takes no snapshot, so the transaction's
    // snapshot is taken after the wait and sees everything committed before it. Statements
    // outside transactions (the single-statement CAS) take no such lock and are unaffected.
    // The lock goes with BEGIN in one round trip.
    postgresTransactionAttempts[Math.min(attempt, postgresTransactionAttempts.length) - 1]! += 1;
    const mode = attempt >= EXCLUSIVE_FROM_ATTEMPT ? 'exclusive' : 'row share';
    return withBeginPreamble(`lock table transaction_gate in ${mode} mode`, run);
  },
  guarded: guardPostgresStatement,
};

/** Kysely's PostgreSQL dialect with berth's driver (savepoint-guarded statements, error mapping). */
export class BerthPostgresDialect implements Dialect {
  readonly #options: BerthPostgresDriverOptions;

  constructor(options: BerthPostgresDriverOptions) {
    this.#options = options;
  }

  createDriver(): Driver {
    return new BerthPostgresDriver(this.#options);
  }

  createQueryCompiler(): QueryCompiler {
    return new PostgresQueryCompiler();
  }

  createAdapter(): DialectAdapter {
    return new PostgresAdapter();
  }

  createIntrospector(db: Kysely<unknown>): DatabaseIntrospector {
    return new PostgresIntrospector(db);
  }
}
