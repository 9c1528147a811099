import { resolve } from 'node:path';
import type BetterSqlite3 from 'better-sqlite3';
import { KeyedLock, type BerthError } from '@berth/core';
import { CompiledQuery, SqliteDriver } from 'kysely';
import type { DatabaseConnection, QueryResult, SqliteDialectConfig } from 'kysely';
import { durabilityDeferred } from './durability.js';
import { environmentError, READ_ONLY } from './sqlite-errors.js';

export { isSqliteBusy } from './sqlite-errors.js';

/** Options of the berth SQLite driver. */
export interface BerthSqliteDriverOptions {
  /** The database file (`:memory:` for a private in-memory database). */
  filename: string;
  /** How long SQLite waits for another process's write lock, in milliseconds. */
  busyTimeoutMs: number;
  /** Set on a store opened read-only because writing failed: every write fails with this reason. */
  readOnlyReason?: BerthError;
}

/**
 * One lock per database file per process, shared by every store opened on that file (keyed by
 * its resolved path); each `:memory:` connection is its own database, with a key of its own.
 */
const fileLocks = new KeyedLock();
let memoryDatabases = 0;

function lockKey(filename: string): string {
  return filename === ':memory:' || filename === '' ? `:memory:#${++memoryDatabases}` : resolve(filename);
}

/** `PRAGMA synchronous` levels: NORMAL (1) for deferred-durable commits, FULL (2) for the rest. */
const NORMAL = 1;
const FULL = 2;
/** The level each connection is at (set FULL by `applySqlitePragmas` when it opened). */
const synchronousLevels = new WeakMap<BetterSqlite3.Database, number>();

/**
 * Put the connection at the level the next commit needs, before a statement outside a
 * transaction (a `BEGIN`, or a write that commits by itself): SQLite refuses to change it inside
 * one. In WAL mode, FULL syncs the log at each commit; NORMAL leaves it to the next FULL commit or
 * checkpoint, which syncs everything before it, so a power cut loses a suffix of the commits,
 * never one in the middle. A switch is one pragma, made only when the level changes.
 */
function prepareCommitLevel(database: BetterSqlite3.Database): void {
  if (database.inTransaction) return;
  const wanted = durabilityDeferred() ? NORMAL : FULL;
  if ((synchronousLevels.get(database) ?? FULL) === wanted) return;
  database.pragma(`synchronous = ${wanted}`);
  synchronousLevels.set(database, wanted);
}

/**
 * Turns SQLite's environment failures (busy, full, read-only) into BerthErrors a user can act on
 * (every other error passes unchanged), and sets the durability of the commit a statement outside
 * a transaction starts.
 */
class ErrorMappingConnection implements DatabaseConnection {
  readonly #inner: DatabaseConnection;
  readonly #options: BerthSqliteDriverOptions;
  readonly #database: BetterSqlite3.Database;

  constructor(inner: DatabaseConnection, options: BerthSqliteDriverOptions, database: BetterSqlite3.Database) {
    this.#inner = inner;
    this.#options = options;
    this.#database = database;
  }

  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    try {
      prepareCommitLevel(this.#database);
      return await this.#inner.executeQuery<R>(compiledQuery);
    } catch (error) {
      throw this.#map(error);
    }
  }

  async *streamQuery<R>(compiledQuery: CompiledQuery, chunkSize?: number): AsyncIterableIterator<QueryResult<R>> {
    try {
      yield* this.#inner.streamQuery<R>(compiledQuery, chunkSize);
    } catch (error) {
      throw this.#map(error);
    }
  }

  #map(error: unknown): unknown {
    const mapped = environmentError(error, this.#options);
    // A store opened read-only after a write failed says why it could not write (a full disk, say).
    if (mapped?.details.reason === READ_ONLY && this.#options.readOnlyReason !== undefined) return this.#options.readOnlyReason;
    return mapped ?? error;
  }
}

/**
 * Kysely's SQLite driver with two changes: transactions start with `BEGIN IMMEDIATE`, so a
 * transaction takes the write lock (waiting up to busy_timeout) before it reads, and cannot fail
 * later with SQLITE_BUSY when it upgrades; and every store of this process opened on the same file
 * queues on one mutex, because better-sqlite3 would otherwise block the event loop waiting for a
 * lock that another connection of the same process can only release once the loop runs.
 */
export class BerthSqliteDriver extends SqliteDriver {
  readonly #options: BerthSqliteDriverOptions;
  readonly #lockKey: string;
  readonly #database: BetterSqlite3.Database;
  #release: (() => void) | undefined;

  /**
   * `connection`: the better-sqlite3 connection under `config.database` when that is a wrapper
   * (the statement cache): the commit level is kept per connection, not per wrapper.
   */
  constructor(config: SqliteDialectConfig & { database: BetterSqlite3.Database }, options: BerthSqliteDriverOptions, connection: BetterSqlite3.Database = config.database) {
    super(config);
    this.#database = connection;
    this.#options = options;
    this.#lockKey = lockKey(options.filename);
  }

  override async acquireConnection(): Promise<DatabaseConnection> {
    const release = await fileLocks.acquire(this.#lockKey);
    try {
      const connection = await super.acquireConnection();
      this.#release = release;
      return new ErrorMappingConnection(connection, this.#options, this.#database);
    } catch (error) {
      release();
      throw error;
    }
  }

  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }

  override async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    // SQLite rolls a transaction back by itself on some errors (SQLITE_FULL, SQLITE_IOERR): a
    // ROLLBACK then fails with "no transaction is active" and would hide the error that matters.
    if (!this.#database.inTransaction) return;
    await connection.executeQuery(CompiledQuery.raw('rollback'));
  }

  override async releaseConnection(): Promise<void> {
    const release = this.#release;
    this.#release = undefined;
    try {
      await super.releaseConnection();
    } finally {
      release?.();
    }
  }
}
