import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { BerthError } from '@berth/core';
import type { Store } from '@berth/core';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely } from 'kysely';
import type { Database } from './database.js';
import { createKyselyStore } from './kysely-store.js';
import { migrateToLatest } from './migrate.js';
import { applySqlitePragmas, BerthSqliteDialect, sqliteStoreDialect } from './sqlite-dialect.js';

/** Default time a write waits for another process's lock before failing with TIMEOUT. */
export const DEFAULT_BUSY_TIMEOUT_MS = 5000;

/** Options of `openSqliteStore`. */
export interface SqliteStoreOptions {
  /** Path of the database file (`:memory:` for a private in-memory database). */
  filename: string;
  /** How long a write waits for another process's lock, in milliseconds (default 5000). */
  busyTimeoutMs?: number;
}

function isMemory(filename: string): boolean {
  return filename === ':memory:';
}

/**
 * Open (creating if needed) berth's SQLite database: parent directory (mode 0700), WAL, foreign
 * keys, busy timeout, migrations. Several processes may open the same file at once.
 */
export async function openSqliteStore(options: SqliteStoreOptions): Promise<Store> {
  const { filename } = options;
  const busyTimeoutMs = options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
  if (filename.length === 0) {
    throw new BerthError('CONFIG', 'the store filename is empty', { hint: 'set a database path, or `:memory:`' });
  }
  if (!Number.isInteger(busyTimeoutMs) || busyTimeoutMs < 0) {
    throw new BerthError('CONFIG', `busyTimeoutMs must be a whole number of milliseconds ≥ 0, got ${busyTimeoutMs}`);
  }

  let database: BetterSqlite3.Database;
  try {
    if (!isMemory(filename)) mkdirSync(dirname(filename), { recursive: true, mode: 0o700 });
    database = new BetterSqlite3(filename, { timeout: busyTimeoutMs });
  } catch (error) {
    throw new BerthError('CONFIG', `cannot open the berth database ${filename}: ${(error as Error).message}`, {
      hint: 'check that the data directory exists or can be created, and that this user may write it',
      details: { filename },
      cause: error,
    });
  }

  let db: Kysely<Database> | undefined;
  try {
    applySqlitePragmas(database, busyTimeoutMs);
    db = new Kysely<Database>({ dialect: new BerthSqliteDialect(database, { filename, busyTimeoutMs }) });
    await migrateToLatest(db, sqliteStoreDialect, filename);
  } catch (error) {
    if (db !== undefined) await db.destroy();
    else database.close();
    if (BerthError.is(error)) throw error;
    throw new BerthError('CONFIG', `cannot open the berth database ${filename}: ${(error as Error).message}`, {
      hint: 'check that the file is a berth database (SQLite) and that this user may write it',
      details: { filename },
      cause: error,
    });
  }
  return createKyselyStore(db, { dialect: sqliteStoreDialect });
}
