import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely, sql } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { durabilityDeferred, runDeferred } from './durability.js';
import { openSqliteStore } from './open-sqlite-store.js';
import { applySqlitePragmas, BerthSqliteDialect } from './sqlite-dialect.js';

// What each commit asks of the disk, read from the connection: `PRAGMA synchronous` is 2 (FULL:
// the WAL is synced at commit) or 1 (NORMAL: left to the next FULL commit or checkpoint).

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

function open(): { database: BetterSqlite3.Database; db: Kysely<{ t: { a: number } }> } {
  const dir = mkdtempSync(join(tmpdir(), 'berth-durability-'));
  const filename = join(dir, 'berth.db');
  const database = new BetterSqlite3(filename);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  applySqlitePragmas(database, 1_000);
  database.exec('create table t (a integer)');
  const db = new Kysely<{ t: { a: number } }>({ dialect: new BerthSqliteDialect(database, { filename, busyTimeoutMs: 1_000 }) });
  cleanups.push(() => void db.destroy());
  return { database, db };
}

const level = async (db: Kysely<{ t: { a: number } }>): Promise<number> => {
  const { rows } = await sql<{ synchronous: number }>`pragma synchronous`.execute(db);
  return Number(rows[0]?.synchronous);
};

describe('SQLite commit durability', () => {
  it('syncs every commit by default, though better-sqlite3 builds SQLite with WAL commits unsynced', async () => {
    // The regression: SQLITE_DEFAULT_WAL_SYNCHRONOUS=1 puts a WAL database left at the default at NORMAL.
    const dir = mkdtempSync(join(tmpdir(), 'berth-durability-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const bare = new BetterSqlite3(join(dir, 'bare.db'));
    cleanups.push(() => bare.close());
    bare.pragma('journal_mode = WAL');
    bare.exec('create table t (a integer)');
    expect(bare.pragma('synchronous', { simple: true })).toBe(1);
    const { database, db } = open();
    await db.insertInto('t').values({ a: 1 }).execute();
    expect(database.pragma('synchronous', { simple: true })).toBe(2);
    expect(await level(db)).toBe(2);
  });

  it('commits deferred-durable inside runDeferred — transactions and lone writes — and durable again after', async () => {
    const { database, db } = open();
    const seen: number[] = [];
    await runDeferred(async () => {
      await db.transaction().execute(async (trx) => {
        await trx.insertInto('t').values({ a: 1 }).execute();
        seen.push(await level(trx));
      });
      await db.insertInto('t').values({ a: 2 }).execute();
      seen.push(Number(database.pragma('synchronous', { simple: true })));
    });
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('t').values({ a: 3 }).execute();
      seen.push(await level(trx));
    });
    expect(seen).toEqual([1, 1, 2]);
    expect((await db.selectFrom('t').select('a').execute()).map((r) => r.a)).toEqual([1, 2, 3]);
  });

  it('two drivers over one connection share its level: a durable commit after another driver\'s deferred one is durable', async () => {
    const { database, db } = open();
    // A second Kysely (its own driver and statement-cache wrapper) over the same connection; not
    // destroyed here: that would close the connection the first one's cleanup closes.
    const other = new Kysely<{ t: { a: number } }>({ dialect: new BerthSqliteDialect(database, { filename: database.name, busyTimeoutMs: 1_000 }) });
    await runDeferred(() => db.insertInto('t').values({ a: 1 }).execute());
    const durable = await other.transaction().execute(async (trx) => {
      await trx.insertInto('t').values({ a: 2 }).execute();
      return level(trx);
    });
    expect(durable).toBe(2);
  });

  it('a transaction begun durable stays durable when a deferred write joins it', async () => {
    const { db } = open();
    const levels = await db.transaction().execute(async (trx) => {
      const inside = await runDeferred(async () => {
        await trx.insertInto('t').values({ a: 1 }).execute();
        return level(trx);
      });
      return [inside, await level(trx)];
    });
    expect(levels).toEqual([2, 2]);
  });
});

describe('deferred scope and listeners', () => {
  it('a listener woken by a deferred commit runs outside the deferred scope (its own writes are durable)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-durability-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const store = await openSqliteStore({ filename: join(dir, 'berth.db') });
    const heard: boolean[] = [];
    let wake: () => void = () => undefined;
    let woken = new Promise<void>((resolve) => (wake = resolve));
    const notifications = store.notifications;
    if (notifications === undefined) throw new Error('the SQLite store has notifications');
    const stop = await notifications.listen('durability_probe', () => {
      heard.push(durabilityDeferred());
      wake();
    });
    try {
      // Sent inside a transaction (delivered after its commit), and outside one.
      await store.deferDurability?.(() => store.transaction((tx) => tx.notifications?.notify('durability_probe', 'in') ?? Promise.resolve()));
      await woken;
      woken = new Promise<void>((resolve) => (wake = resolve));
      await store.deferDurability?.(async () => {
        expect(durabilityDeferred()).toBe(true);
        await notifications.notify('durability_probe', 'out');
      });
      await woken;
      expect(heard).toEqual([false, false]);
    } finally {
      await stop();
      await store.close();
    }
  });
});
