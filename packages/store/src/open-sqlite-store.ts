import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import { basename, dirname, join } from 'node:path';
import { BerthError } from '@berth/core';
import { processAliveSync } from '@berth/host';
import type { Store } from '@berth/core';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely } from 'kysely';
import type { Database } from './database.js';
import { createKyselyStore } from './kysely-store.js';
import { createSocketRelay } from './socket-relay.js';
import { migrateToLatest } from './migrate.js';
import { createMigrations } from './migrations.js';
import { sqliteAddon } from './sqlite-addon.js';
import { applySqlitePragmas, BerthSqliteDialect, sqliteStoreDialect } from './sqlite-dialect.js';
import { environmentError, isEnvironmentError, isSqliteBusy } from './sqlite-errors.js';

/** Default time a write waits for another process's lock before failing with TIMEOUT. */
export const DEFAULT_BUSY_TIMEOUT_MS = 5000;

/** Options of `openSqliteStore`. */
export interface SqliteStoreOptions {
  /** Path of the database file (`:memory:` for a private in-memory database). */
  filename: string;
  /** How long a write waits for another process's lock, in milliseconds (default 5000). */
  busyTimeoutMs?: number;
}

/** A store opened by `openSqliteStoreForUse`, and why it is read-only when it is. */
export interface OpenedSqliteStore {
  store: Store;
  /** Set when the database could not be opened for writing (full disk, read-only data dir): reads work, writes fail with this. */
  readOnly: BerthError | undefined;
}

function isMemory(filename: string): boolean {
  return filename === ':memory:';
}

function checkOptions(filename: string, busyTimeoutMs: number): void {
  if (filename.length === 0) {
    throw new BerthError('CONFIG', 'the store filename is empty', { hint: 'set a database path, or `:memory:`' });
  }
  if (!Number.isInteger(busyTimeoutMs) || busyTimeoutMs < 0) {
    throw new BerthError('CONFIG', `busyTimeoutMs must be a whole number of milliseconds ≥ 0, got ${busyTimeoutMs}`);
  }
}

/** Why the database cannot be opened, as the error a user can act on. */
function openFailure(error: unknown, filename: string, busyTimeoutMs: number, hint: string): BerthError {
  if (BerthError.is(error)) return error;
  return (
    environmentError(error, { filename, busyTimeoutMs }) ??
    new BerthError('CONFIG', `cannot open the berth database ${filename}: ${(error as Error).message}`, { hint, details: { filename }, cause: error })
  );
}

/** The migrations this berth knows, by name, sorted. */
function knownMigrations(): string[] {
  return Object.keys(createMigrations(sqliteStoreDialect)).sort();
}

/**
 * The names of the migrations the database has applied (kysely's `kysely_migration`), sorted;
 * undefined when it has no such table (a new file, or not a berth database). A plain read: no
 * write lock, so it works on a read-only open too.
 */
function appliedMigrations(database: BetterSqlite3.Database): string[] | undefined {
  const table = database.prepare("select 1 from sqlite_master where type = 'table' and name = 'kysely_migration'").get();
  if (table === undefined) return undefined;
  return (database.prepare('select name from kysely_migration order by name').all() as Array<{ name: string }>).map((row) => row.name);
}

/**
 * Whether the database has applied exactly the migrations this berth knows (read without a write
 * lock). Anything else — a new file, an older schema, a newer berth's, a half-migrated one — goes
 * through the migrator, which takes the lock and says what is wrong.
 */
function schemaIsLatest(database: BetterSqlite3.Database): boolean {
  const applied = appliedMigrations(database);
  const known = knownMigrations();
  return applied !== undefined && applied.length === known.length && applied.every((name, index) => name === known[index]);
}

/**
 * Open (creating if needed) berth's SQLite database: parent directory (mode 0700), WAL, foreign
 * keys, busy timeout, migrations. Several processes may open the same file at once.
 */
export async function openSqliteStore(options: SqliteStoreOptions): Promise<Store> {
  const { filename } = options;
  const busyTimeoutMs = options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
  checkOptions(filename, busyTimeoutMs);

  let database: BetterSqlite3.Database;
  try {
    if (!isMemory(filename)) mkdirSync(dirname(filename), { recursive: true, mode: 0o700 });
    database = new BetterSqlite3(filename, { timeout: busyTimeoutMs, ...sqliteAddon() });
  } catch (error) {
    throw openFailure(error, filename, busyTimeoutMs, 'check that the data directory exists or can be created, and that this user may write it');
  }

  let db: Kysely<Database> | undefined;
  try {
    await withBusyRetry(() => applySqlitePragmas(database, busyTimeoutMs, Math.min(PRAGMA_TRY_MS, busyTimeoutMs)), busyTimeoutMs);
    db = new Kysely<Database>({ dialect: new BerthSqliteDialect(database, { filename, busyTimeoutMs }) });
    // Every start of the CLI opens the store: when the schema is already the latest (one indexed
    // read), skip kysely's migrator (its lock table, introspection and queries: ~70 ms a start).
    if (!schemaIsLatest(database)) await migrateToLatest(db, sqliteStoreDialect, filename);
  } catch (error) {
    if (db !== undefined) await db.destroy();
    else database.close();
    throw openFailure(error, filename, busyTimeoutMs, 'check that the file is a berth database (SQLite) and that this user may write it');
  }
  // Processes sharing the file wake each other's waiters through sockets beside it (SQLite has no NOTIFY).
  return createKyselyStore(db, {
    dialect: sqliteStoreDialect,
    ...(isMemory(filename) ? {} : { relay: createSocketRelay(relayDir(filename)) }),
    // Kysely closes the connection only if it ran a query on it: a store opened on a current
    // schema and closed unused would keep the file (and its WAL) open until the process ends.
    onClose: () => {
      if (database.open) database.close();
    },
  });
}

/** How long one try of the pragmas waits on another process's lock before it lets go and tries again. */
const PRAGMA_TRY_MS = 250;

/**
 * Run `step` again while it fails with SQLITE_BUSY, up to `busyTimeoutMs` in all. When several
 * processes open one fresh file at once, their switches to WAL can wait on each other while each
 * holds a lock the other needs, until one gives up after the whole busy timeout (seen in CI: one
 * of four processes failed with "database is locked" after 20 s). Short tries that let go of their
 * locks between them cannot wait on each other. The pause between tries doubles from 5 ms (capped
 * at 200 ms), with jitter so that the processes do not try in step: there is no event to wait for,
 * only another process's lock.
 */
async function withBusyRetry(step: () => void, busyTimeoutMs: number): Promise<void> {
  const deadline = Date.now() + busyTimeoutMs;
  for (let pauseMs = 5; ; pauseMs = Math.min(pauseMs * 2, 200)) {
    try {
      step();
      return;
    } catch (error) {
      const pause = Math.round(pauseMs * (0.5 + Math.random()));
      if (!isSqliteBusy(error) || Date.now() + pause > deadline) throw error;
      await delay(pause);
    }
  }
}

/** Where the processes sharing `filename` keep their notification sockets: `<file>.notify/` beside it. */
export function relayDir(filename: string): string {
  return `${filename}.notify`;
}

/**
 * Open the database for writing; when that fails because the disk is full or the data dir is
 * read-only, open it for reading instead, so that `volume list`, `show` and `attachment list`
 * still work and every write fails with that reason.
 */
export async function openSqliteStoreForUse(options: SqliteStoreOptions): Promise<OpenedSqliteStore> {
  try {
    return { store: await openSqliteStore(options), readOnly: undefined };
  } catch (error) {
    if (!isEnvironmentError(error) || isMemory(options.filename) || !existsSync(options.filename)) throw error;
    return { store: await openSqliteStoreReadOnly({ ...options, readOnlyReason: error }), readOnly: error };
  }
}

/** The private copies of read-only opens: `<tmpdir>/berth-db-read-<pid>-XXXXXX/`. */
const COPY_PREFIX = 'berth-db-read-';

/**
 * Remove the private copies left by processes that are gone: a read-only open's copy goes with its
 * store's close, which a killed process never reaches. A copy whose pid runs (its owner, or a
 * process that got its number since) is left alone.
 */
function sweepDeadCopies(): void {
  let names: string[];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  const uid = process.getuid?.();
  for (const name of names) {
    const pid = Number(/^berth-db-read-(\d+)-/.exec(name)?.[1] ?? Number.NaN);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || processAliveSync(pid)) continue;
    const path = join(tmpdir(), name);
    try {
      // Only this user's (another user's copy is theirs to remove, and /tmp would refuse).
      if (uid !== undefined && lstatSync(path).uid !== uid) continue;
      rmSync(path, { recursive: true, force: true });
    } catch {
      // Gone meanwhile, or not ours to remove: the open goes on.
    }
  }
}

/**
 * Open an existing database for reading only (no migration, no WAL switch). A WAL database in a
 * directory that cannot be written can only be opened when its `-wal` and `-shm` files exist; when
 * they do not (the last writer closed cleanly, so the main file holds everything), a private copy
 * of the file is opened instead (removed at close; the copies of killed processes are removed by
 * the next such open).
 */
export async function openSqliteStoreReadOnly(options: SqliteStoreOptions & { readOnlyReason?: BerthError }): Promise<Store> {
  const { filename } = options;
  const busyTimeoutMs = options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
  checkOptions(filename, busyTimeoutMs);
  let database: BetterSqlite3.Database | undefined;
  let copyDir: string | undefined;
  try {
    database = new BetterSqlite3(filename, { readonly: true, fileMustExist: true, timeout: busyTimeoutMs, ...sqliteAddon() });
    database.prepare('select count(*) from sqlite_master').get();
  } catch {
    database?.close();
    database = undefined;
    try {
      sweepDeadCopies();
      copyDir = mkdtempSync(join(tmpdir(), `${COPY_PREFIX}${process.pid}-`));
      const copy = join(copyDir, basename(filename));
      copyFileSync(filename, copy);
      if (existsSync(`${filename}-wal`)) copyFileSync(`${filename}-wal`, `${copy}-wal`);
      database = new BetterSqlite3(copy, { readonly: true, fileMustExist: true, ...sqliteAddon() });
      database.prepare('select count(*) from sqlite_master').get();
    } catch (error) {
      database?.close();
      if (copyDir !== undefined) rmSync(copyDir, { recursive: true, force: true });
      throw openFailure(error, filename, busyTimeoutMs, 'check that the file is a berth database (SQLite) and that this user may read it');
    }
  }
  if (database === undefined) throw new BerthError('INTERNAL', `opening ${filename} for reading gave no database`);
  const known = knownMigrations();
  let applied: string[];
  try {
    const names = appliedMigrations(database);
    if (names === undefined) throw new Error('it has no kysely_migration table');
    applied = names;
  } catch (error) {
    database.close();
    if (copyDir !== undefined) rmSync(copyDir, { recursive: true, force: true });
    throw openFailure(error, filename, busyTimeoutMs, 'check that the file is a berth database (SQLite)');
  }
  if (known.some((name) => !applied.includes(name))) {
    database.close();
    if (copyDir !== undefined) rmSync(copyDir, { recursive: true, force: true });
    throw new BerthError('CONFIG', `the berth database ${filename} was written by an older berth and cannot be upgraded while it is read-only`, {
      hint: 'make the data directory writable and run any berth command once',
      details: { filename },
    });
  }
  const db = new Kysely<Database>({
    dialect: new BerthSqliteDialect(database, { filename, busyTimeoutMs, ...(options.readOnlyReason ? { readOnlyReason: options.readOnlyReason } : {}) }),
  });
  return createKyselyStore(db, {
    dialect: sqliteStoreDialect,
    // As for a writable store: a store closed unused would keep the file open (Kysely closes the
    // connection only if it ran a query on it).
    onClose: () => {
      if (database.open) database.close();
      if (copyDir !== undefined) rmSync(copyDir, { recursive: true, force: true });
    },
  });
}
