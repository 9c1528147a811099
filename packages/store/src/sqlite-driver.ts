import { resolve } from 'node:path';
import { BerthError } from '@berth/core';
import { CompiledQuery, SqliteDriver } from 'kysely';
import type { DatabaseConnection, QueryResult, SqliteDialectConfig } from 'kysely';
import { AsyncMutex } from './async-mutex.js';

/** Options of the berth SQLite driver. */
export interface BerthSqliteDriverOptions {
  /** The database file (`:memory:` for a private in-memory database). */
  filename: string;
  /** How long SQLite waits for another process's write lock, in milliseconds. */
  busyTimeoutMs: number;
}

interface FileLock {
  mutex: AsyncMutex;
  users: number;
}

/** One mutex per database file per process, shared by every store opened on that file. */
const fileLocks = new Map<string, FileLock>();

function lockKey(filename: string): string | undefined {
  // Each `:memory:` connection is its own database: nothing to share.
  return filename === ':memory:' || filename === '' ? undefined : resolve(filename);
}

function takeFileLock(filename: string): { mutex: AsyncMutex; dispose: () => void } {
  const key = lockKey(filename);
  if (key === undefined) return { mutex: new AsyncMutex(), dispose: () => undefined };
  let lock = fileLocks.get(key);
  if (lock === undefined) {
    lock = { mutex: new AsyncMutex(), users: 0 };
    fileLocks.set(key, lock);
  }
  lock.users += 1;
  const taken = lock;
  let disposed = false;
  return {
    mutex: taken.mutex,
    dispose: () => {
      if (disposed) return;
      disposed = true;
      taken.users -= 1;
      if (taken.users === 0 && fileLocks.get(key) === taken) fileLocks.delete(key);
    },
  };
}

/** Whether `error` is SQLite saying the database stayed locked past the busy timeout. */
export function isSqliteBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'));
}

/** Turns SQLITE_BUSY into a BerthError a user can act on; every other error passes unchanged. */
class BusyMappingConnection implements DatabaseConnection {
  readonly #inner: DatabaseConnection;
  readonly #options: BerthSqliteDriverOptions;

  constructor(inner: DatabaseConnection, options: BerthSqliteDriverOptions) {
    this.#inner = inner;
    this.#options = options;
  }

  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    try {
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
    if (!isSqliteBusy(error)) return error;
    return new BerthError(
      'TIMEOUT',
      `the berth database ${this.#options.filename} stayed locked by another process for more than ${this.#options.busyTimeoutMs} ms`,
      {
        hint: 'another berth command is writing to the same database; retry, or raise the store busy timeout',
        details: { filename: this.#options.filename, busyTimeoutMs: this.#options.busyTimeoutMs },
        cause: error,
      },
    );
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
  readonly #fileLock: { mutex: AsyncMutex; dispose: () => void };
  #release: (() => void) | undefined;

  constructor(config: SqliteDialectConfig, options: BerthSqliteDriverOptions) {
    super(config);
    this.#options = options;
    this.#fileLock = takeFileLock(options.filename);
  }

  override async acquireConnection(): Promise<DatabaseConnection> {
    const release = await this.#fileLock.mutex.acquire();
    try {
      const connection = await super.acquireConnection();
      this.#release = release;
      return new BusyMappingConnection(connection, this.#options);
    } catch (error) {
      release();
      throw error;
    }
  }

  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
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

  override async destroy(): Promise<void> {
    try {
      await super.destroy();
    } finally {
      this.#fileLock.dispose();
    }
  }
}
