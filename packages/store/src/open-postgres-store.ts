import { BerthError, parseWith } from '@berth/core';
import type { Store } from '@berth/core';
import { Kysely } from 'kysely';
import type pg from 'pg';
import { z } from '@berth/core/zod';
import type { Database } from './database.js';
import { createKyselyStore } from './kysely-store.js';
import { migrateToLatest } from './migrate.js';
import { BerthPostgresDialect, postgresStoreDialect } from './postgres-dialect.js';
import { createPostgresNotifications } from './postgres-notifications.js';
import { parseStoreUrl, postgresUrlPassword, redactPostgresUrl } from './postgres-url.js';

/** Default number of pooled connections per store (per process). */
export const DEFAULT_POSTGRES_POOL_SIZE = 10;
/** Default time to wait for a connection (new or from the pool) before failing UNAVAILABLE. */
export const DEFAULT_POSTGRES_CONNECT_TIMEOUT_MS = 10_000;

/**
 * Default bound on one statement's wait for a lock. A session holding a lock on berth's tables (a
 * `LOCK TABLE`, a forgotten open transaction) made requests wait as long as it did — past their
 * clients' deadlines, which saw a failure while the server went on to carry the request out once
 * the lock went (found by an explorer) — and filled the pool with waiting statements. Now the
 * statement fails with an UNAVAILABLE outage naming the lock, as a full disk does.
 */
export const DEFAULT_POSTGRES_LOCK_TIMEOUT_MS = 10_000;
/** Default bound on one statement's run (berth's statements take milliseconds; a prune batch, less than a second). */
export const DEFAULT_POSTGRES_STATEMENT_TIMEOUT_MS = 60_000;

/** Options of `openPostgresStore`. */
export interface PostgresStoreOptions {
  /** `postgres://user[:password]@host[:port]/database` (libpq parameters such as `?sslmode=` work too). */
  url: string;
  /** Pooled connections of this process (default 10). */
  poolSize?: number;
  /** How long to wait for a connection before failing with UNAVAILABLE, in ms (default 10000). */
  connectTimeoutMs?: number;
  /** How long one statement may wait for a lock (`lock_timeout`), in ms (default 10000). Migrations are not bound by it. */
  lockTimeoutMs?: number;
  /** How long one statement may run (`statement_timeout`), in ms (default 60000). Migrations are not bound by it. */
  statementTimeoutMs?: number;
}

const zOptions = z.object({
  poolSize: z.number().int().min(1).max(1000),
  connectTimeoutMs: z.number().int().min(1).max(600_000),
  lockTimeoutMs: z.number().int().min(1).max(3_600_000),
  statementTimeoutMs: z.number().int().min(1).max(3_600_000),
});

/**
 * Open berth's PostgreSQL store: a `pg` pool, the migrations (once, under Kysely's advisory lock,
 * so replicas starting together are safe), and `LISTEN/NOTIFY` on a connection of its own opened
 * on the first `listen`. The database must exist; berth creates its tables. The URL's password
 * never appears in an error: messages name the server by `redactPostgresUrl(url)`.
 */
export async function openPostgresStore(options: PostgresStoreOptions): Promise<Store> {
  const url = parseStoreUrl(options.url);
  const { poolSize, connectTimeoutMs, lockTimeoutMs, statementTimeoutMs } = parseWith(
    zOptions,
    {
      poolSize: options.poolSize ?? DEFAULT_POSTGRES_POOL_SIZE,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_POSTGRES_CONNECT_TIMEOUT_MS,
      lockTimeoutMs: options.lockTimeoutMs ?? DEFAULT_POSTGRES_LOCK_TIMEOUT_MS,
      statementTimeoutMs: options.statementTimeoutMs ?? DEFAULT_POSTGRES_STATEMENT_TIMEOUT_MS,
    },
    'PostgreSQL store options',
  );
  // Loaded here, not at import: the embedded default (SQLite) never pays for the driver.
  const { default: driver } = await import('pg');
  const target = redactPostgresUrl(url);
  const password = postgresUrlPassword(url);
  const clientConfig: pg.ClientConfig = {
    connectionString: url,
    connectionTimeoutMillis: connectTimeoutMs,
    application_name: 'berth',
  };
  // Migrations on a pool of their own, without the statement bounds: a replica waits for another's
  // migration (Kysely's advisory lock) as long as it takes, and a long one is not cut short.
  const migrationPool = new driver.Pool({ ...clientConfig, max: 2 });
  migrationPool.on('error', () => undefined);
  const migrations = new Kysely<Database>({ dialect: new BerthPostgresDialect({ pool: migrationPool, target, password }) });
  try {
    await migrateToLatest(migrations, postgresStoreDialect, target);
  } catch (error) {
    if (BerthError.is(error)) throw error;
    throw new BerthError('CONFIG', `cannot open the berth database at ${target}`, {
      hint: 'check that the URL names a PostgreSQL database this user may create tables in',
      details: { store: target },
    });
  } finally {
    await migrations.destroy();
  }

  const bounded: pg.ClientConfig = { ...clientConfig, lock_timeout: lockTimeoutMs, statement_timeout: statementTimeoutMs };
  const bounds = { lockTimeoutMs, statementTimeoutMs, poolSize, connectTimeoutMs };
  const pool = new driver.Pool({ ...bounded, max: poolSize });
  // An idle pooled client whose server went away emits 'error' on the pool; without a listener
  // that would crash the process. The next query gets a fresh client (or UNAVAILABLE).
  pool.on('error', () => undefined);
  const db = new Kysely<Database>({ dialect: new BerthPostgresDialect({ pool, target, password, bounds }) });
  // One more connection, only for lease renewals (operation heartbeats, device and work-item
  // leases): with every pooled connection busy, a renewal queued behind them would let a live
  // holder's lease pass and another replica take its operations over. Unbounded: a renewal that
  // waits on a row lock keeps its place in PostgreSQL's lock queue and runs first once the lock
  // goes, so a takeover queued after it sees the lease renewed; one cut short at the lock timeout
  // (longer than a lease) would lose that place to the takeover of a live operation (a review).
  const urgentPool = new driver.Pool({ ...clientConfig, max: 1 });
  urgentPool.on('error', () => undefined);
  const urgent = new Kysely<Database>({ dialect: new BerthPostgresDialect({ pool: urgentPool, target, password }) });
  const notifications = createPostgresNotifications({ newClient: () => new driver.Client(clientConfig), target, password });
  return createKyselyStore(db, { dialect: postgresStoreDialect, notifications, urgent });
}
