import type BetterSqlite3 from 'better-sqlite3';
import { BerthError } from '@berth/core';
import { SqliteAdapter, SqliteIntrospector, SqliteQueryCompiler, sql } from 'kysely';
import type { DatabaseIntrospector, Dialect, DialectAdapter, Driver, Kysely, QueryCompiler, RawBuilder } from 'kysely';
import type { DbBoolean, DbJson } from './database.js';
import { BerthSqliteDriver } from './sqlite-driver.js';
import type { BerthSqliteDriverOptions } from './sqlite-driver.js';
import type { ConstraintViolation, StoreDialect } from './store-dialect.js';

/** SQLite as the repositories see it: JSON as TEXT, booleans as 0/1, constraint errors by code. */
export const sqliteStoreDialect: StoreDialect = {
  name: 'sqlite',
  jsonType: 'text',
  booleanType: 'integer',
  // One writer at a time (BEGIN IMMEDIATE): nothing to lock, nothing to retry.
  supportsRowLocks: false,
  // SQLite's CTEs hold SELECTs only.
  writesInCte: false,
  elapsedMs(column: string, end: string): RawBuilder<number> {
    // Both stamps cut to the millisecond first (the clock writes microseconds; Date.parse, the
    // memory store and PostgreSQL's form below cut them too), so every engine gives the same ms; a
    // julianday is a double of days, ~50 µs of resolution today, so rounding the difference of two
    // whole milliseconds gives it exactly.
    return sql<number>`max(0, cast(round((julianday(substr(${end}, 1, 23) || 'Z') - julianday(substr(${sql.ref(column)}, 1, 23) || 'Z')) * 86400000.0) as integer))`;
  },
  encodeJson(value: unknown): DbJson {
    return JSON.stringify(value) as unknown as DbJson;
  },
  decodeJson(raw: unknown): unknown {
    if (raw === null || raw === undefined) return null;
    if (typeof raw !== 'string') {
      throw new BerthError('INTERNAL', `a JSON column holds a ${typeof raw}, expected TEXT`);
    }
    return JSON.parse(raw) as unknown;
  },
  encodeBoolean(value: boolean): DbBoolean {
    return (value ? 1 : 0) as unknown as DbBoolean;
  },
  decodeBoolean(raw: unknown): boolean {
    return raw === 1 || raw === 1n || raw === true;
  },
  constraintViolation(error: unknown): ConstraintViolation | undefined {
    const code = (error as { code?: unknown } | null)?.code;
    if (code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') return 'unique';
    if (code === 'SQLITE_CONSTRAINT_FOREIGNKEY') return 'foreign_key';
    return undefined;
  },
  retryableTransaction(): boolean {
    return false;
  },
  // A failed statement leaves a SQLite transaction usable as it is.
  guarded: (statement) => statement(),
};

/** SQLite runs DDL inside transactions, so migrations run under one `BEGIN IMMEDIATE` and two processes cannot migrate at once. */
class TransactionalDdlSqliteAdapter extends SqliteAdapter {
  override get supportsTransactionalDdl(): boolean {
    return true;
  }
}

/** How many prepared statements one connection keeps (berth's queries are a few dozen shapes). */
const STATEMENT_CACHE_SIZE = 256;

/**
 * The connection with its prepared statements kept by SQL text: Kysely prepares every query
 * anew, and preparing costs more than running berth's small queries (32 concurrent detaches
 * spent a tenth of their CPU in `prepare`). Statements are used one at a time (the driver's
 * mutex), and SQLite re-prepares a kept one itself when the schema changes. Least recently used
 * ones go first once the cache is full.
 */
export function withStatementCache(database: BetterSqlite3.Database): BetterSqlite3.Database {
  const cache = new Map<string, BetterSqlite3.Statement>();
  const prepare = (source: string): BetterSqlite3.Statement => {
    const kept = cache.get(source);
    if (kept !== undefined && !kept.busy) {
      cache.delete(source);
      cache.set(source, kept);
      return kept;
    }
    const statement = database.prepare(source);
    if (kept === undefined) {
      cache.set(source, statement);
      if (cache.size > STATEMENT_CACHE_SIZE) cache.delete(cache.keys().next().value!);
    }
    return statement;
  };
  return new Proxy(database, {
    get(target, property) {
      if (property === 'prepare') return prepare;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/** Kysely's SQLite dialect over one better-sqlite3 connection, with berth's driver. */
export class BerthSqliteDialect implements Dialect {
  readonly #database: BetterSqlite3.Database;
  readonly #options: BerthSqliteDriverOptions;

  constructor(database: BetterSqlite3.Database, options: BerthSqliteDriverOptions) {
    this.#database = database;
    this.#options = options;
  }

  createDriver(): Driver {
    // The connection itself goes along: its `synchronous` level is kept per connection, and every
    // driver made over it must see the same one (the statement cache is a wrapper per driver).
    return new BerthSqliteDriver({ database: withStatementCache(this.#database) }, this.#options, this.#database);
  }

  createQueryCompiler(): QueryCompiler {
    return new SqliteQueryCompiler();
  }

  createAdapter(): DialectAdapter {
    return new TransactionalDdlSqliteAdapter();
  }

  createIntrospector(db: Kysely<unknown>): DatabaseIntrospector {
    return new SqliteIntrospector(db);
  }
}

/** How many WAL pages make SQLite copy them back into the database (its default: 1000). */
export const WAL_CHECKPOINT_PAGES = 256;
/** What the WAL file is cut back to after a checkpoint (its default: never). */
export const WAL_SIZE_LIMIT_BYTES = 1024 * 1024;

/**
 * Set the connection's pragmas. busy_timeout comes first so that switching to WAL, which needs a
 * moment of exclusive access, waits for other processes instead of failing. `tryTimeoutMs` bounds
 * that wait for one try (a caller that retries gives a short one, see `openSqliteStore`); the
 * connection keeps `busyTimeoutMs` afterwards.
 */
export function applySqlitePragmas(database: BetterSqlite3.Database, busyTimeoutMs: number, tryTimeoutMs = busyTimeoutMs): void {
  database.pragma(`busy_timeout = ${Math.trunc(tryTimeoutMs)}`);
  const mode = database.pragma('journal_mode = WAL', { simple: true });
  if (mode !== 'wal' && mode !== 'memory') {
    throw new BerthError('CONFIG', `the berth database ${database.name} cannot use WAL mode (it is in ${String(mode)} mode)`, {
      hint: 'put the data directory on a local filesystem; WAL does not work over network filesystems',
    });
  }
  // Said outright: SQLite itself syncs nothing at a WAL commit at NORMAL (better-sqlite3's
  // default). berth's driver syncs the WAL after every durable commit, off the event loop and
  // shared by the commits that wait together (sqlite-wal-sync.ts); the commits that may skip it
  // are marked (`Store.deferDurability`). FULL would make SQLite sync at every commit, on the
  // event loop, one commit at a time.
  database.pragma('synchronous = NORMAL');
  // The WAL kept small: copied back into the database every 256 pages (1 MiB, not SQLite's 4 MiB)
  // and cut back to 1 MiB after a checkpoint. berth's database is small and its commits are a few
  // pages each; on a small disk (a data dir on its own little partition) a WAL left to grow to
  // 4 MiB filled it before its first checkpoint and was never given back.
  database.pragma(`wal_autocheckpoint = ${WAL_CHECKPOINT_PAGES}`);
  database.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT_BYTES}`);
  database.pragma('foreign_keys = ON');
  database.pragma(`busy_timeout = ${Math.trunc(busyTimeoutMs)}`);
}
