import { realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import type BetterSqlite3 from 'better-sqlite3';
import { BerthError, KeyedLock } from '@berth/core';
import { CompiledQuery, SqliteDriver } from 'kysely';
import type { DatabaseConnection, QueryResult, SqliteDialectConfig } from 'kysely';
import { durabilityDeferred } from './durability.js';
import { environmentError, READ_ONLY } from './sqlite-errors.js';
import { acquireWalSync, isStickySyncFailure, releaseWalSync, type WalSync } from './sqlite-wal-sync.js';

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
  if (filename === ':memory:' || filename === '') return `:memory:#${++memoryDatabases}`;
  // The file's real path: opened through a symbolic link and through its own path, one file, one lock.
  try {
    return realpathSync(filename);
  } catch {
    return resolve(filename);
  }
}

/**
 * Whether a statement may write: anything but a SELECT built by Kysely, or a raw statement that
 * starts as a read. Wrong only the safe way (a raw read taken for a write costs a sync).
 */
function writes(query: CompiledQuery): boolean {
  if (query.query.kind === 'SelectQueryNode') return false;
  return query.query.kind !== 'RawNode' || !/^\s*(select|pragma|explain|values)\b/i.test(query.sql);
}

/** Whether the database lives in a file (`:memory:` and `''` are private in-memory databases). */
function isFileDatabase(filename: string): boolean {
  return filename !== ':memory:' && filename !== '';
}

/**
 * Turns SQLite's environment failures (busy, full, read-only) into BerthErrors a user can act on
 * (every other error passes unchanged), and tells the driver when a write outside a transaction
 * committed durably (it then waits for the WAL's sync before the connection is handed back).
 */
class ErrorMappingConnection implements DatabaseConnection {
  readonly #inner: DatabaseConnection;
  readonly #options: BerthSqliteDriverOptions;
  readonly #database: BetterSqlite3.Database;
  readonly #committedDurably: () => void;

  constructor(inner: DatabaseConnection, options: BerthSqliteDriverOptions, database: BetterSqlite3.Database, committedDurably: () => void) {
    this.#inner = inner;
    this.#options = options;
    this.#database = database;
    this.#committedDurably = committedDurably;
  }

  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    try {
      const alone = !this.#database.inTransaction;
      const result = await this.#inner.executeQuery<R>(compiledQuery);
      // A write that committed by itself (not a BEGIN, which leaves a transaction open). Decided
      // from the statement, not the result: a write with RETURNING answers rows, like a read.
      if (alone && !this.#database.inTransaction && writes(compiledQuery) && !durabilityDeferred()) this.#committedDurably();
      return result;
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
 *
 * Durability: the connection commits at `synchronous = NORMAL` and a durable commit (one not made
 * inside `Store.deferDurability`) waits for a sync of the WAL before it returns — after the mutex
 * is released, so that the next transaction runs meanwhile and durable commits waiting at the same
 * time share one sync (`sqlite-wal-sync.ts`: group commit, off the event loop).
 */
export class BerthSqliteDriver extends SqliteDriver {
  readonly #options: BerthSqliteDriverOptions;
  readonly #lockKey: string;
  readonly #database: BetterSqlite3.Database;
  #walSync: WalSync | undefined;
  #release: (() => void) | undefined;
  /** Whether the transaction open on the connection began durable (not deferred). */
  #transactionDurable = false;
  /** Whether a durable commit was made since the connection was acquired: its release waits for the WAL's sync. */
  #syncDue = false;

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

  override async init(): Promise<void> {
    await super.init();
    // Taken here and let go in destroy(), which Kysely calls only for a driver it initialised.
    if (isFileDatabase(this.#options.filename)) this.#walSync = acquireWalSync(this.#options.filename);
  }

  override async acquireConnection(): Promise<DatabaseConnection> {
    const release = await fileLocks.acquire(this.#lockKey);
    try {
      const connection = await super.acquireConnection();
      this.#release = release;
      this.#syncDue = false;
      return new ErrorMappingConnection(connection, this.#options, this.#database, () => void (this.#syncDue = true));
    } catch (error) {
      release();
      throw error;
    }
  }

  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    // A transaction keeps the durability it began with (a deferred write joining it changes nothing).
    this.#transactionDurable = !durabilityDeferred();
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }

  override async commitTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('commit'));
    if (this.#transactionDurable) this.#syncDue = true;
  }

  override async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    // SQLite rolls a transaction back by itself on some errors (SQLITE_FULL, SQLITE_IOERR): a
    // ROLLBACK then fails with "no transaction is active" and would hide the error that matters.
    if (!this.#database.inTransaction) return;
    await connection.executeQuery(CompiledQuery.raw('rollback'));
  }

  override async releaseConnection(): Promise<void> {
    const release = this.#release;
    const syncDue = this.#syncDue;
    this.#release = undefined;
    this.#syncDue = false;
    try {
      await super.releaseConnection();
    } finally {
      release?.();
    }
    if (syncDue && this.#walSync !== undefined) await this.#walSync.sync().catch((error: unknown) => Promise.reject(this.#unsynced(error)));
  }

  override async destroy(): Promise<void> {
    try {
      await super.destroy();
    } finally {
      if (this.#walSync !== undefined) await releaseWalSync(this.#walSync);
    }
  }

  /**
   * A commit made (and seen by every reader) but not known to be on the disk: an outage whose
   * outcome is unknown (core's `isOutcomeUnknown`), so the caller reads the database instead of
   * taking the write as undone. The store stays unusable for durable commits (`WalSync`), unless
   * the sync could not open a file (`EMFILE`/`ENFILE`: no sync ran; the next one flushes it).
   */
  #unsynced(error: unknown): BerthError {
    const sticky = isStickySyncFailure(error);
    return new BerthError('UNAVAILABLE', `the berth database ${this.#options.filename} committed a change but could not flush it to the disk: ${(error as Error).message}`, {
      hint: sticky
        ? 'check the disk and the file system holding the data directory (dmesg), then restart berth: after a failed flush no later commit of this process counts as durable'
        : 'too many files are open (the process or the system): the next commit syncs this change too; raise the limit (ulimit -n, fs.file-max) if it goes on',
      details: { outage: true, outcomeUnknown: true, reason: 'sync-failed' },
      cause: error,
    });
  }
}
