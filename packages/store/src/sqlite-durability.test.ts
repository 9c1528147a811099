import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readlinkSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { durabilityDeferred, runDeferred } from './durability.js';
import { openSqliteStore, openSqliteStoreReadOnly } from './open-sqlite-store.js';
import { applySqlitePragmas, BerthSqliteDialect } from './sqlite-dialect.js';
import { walSyncFor, type WalSync } from './sqlite-wal-sync.js';

// What each commit asks of the disk: the connection runs at `synchronous = NORMAL` and a durable
// commit waits for a sync of the WAL (`sqlite-wal-sync.ts`), counted here by the database's
// WalSync; a deferred-durable one waits for none.

const cleanups: Array<() => unknown> = [];
// Awaited: a store still closing in the background would free descriptors during the next test
// (the EMFILE test counts on none being freed while it holds the table full).
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function open(): { database: BetterSqlite3.Database; db: Kysely<{ t: { a: number } }>; syncs: WalSync } {
  const dir = mkdtempSync(join(tmpdir(), 'berth-durability-'));
  const filename = join(dir, 'berth.db');
  const database = new BetterSqlite3(filename);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  applySqlitePragmas(database, 1_000);
  database.exec('create table t (a integer)');
  const db = new Kysely<{ t: { a: number } }>({ dialect: new BerthSqliteDialect(database, { filename, busyTimeoutMs: 1_000 }) });
  cleanups.push(() => db.destroy());
  return { database, db, syncs: walSyncFor(filename) };
}

/** A flush the test lets finish: `calls` says how many began, `release(i)` ends the i-th (or fails it). */
function heldFlush(syncs: WalSync): { calls: () => number; began: (n: number) => Promise<void>; release: (i: number, error?: Error) => void } {
  const pending: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  const waiters: Array<{ n: number; wake: () => void }> = [];
  syncs.flush = () =>
    new Promise<void>((resolve, reject) => {
      pending.push({ resolve, reject });
      for (const waiter of waiters.filter((w) => pending.length >= w.n)) waiter.wake();
    });
  return {
    calls: () => pending.length,
    began: (n) => (pending.length >= n ? Promise.resolve() : new Promise<void>((wake) => waiters.push({ n, wake }))),
    release: (i, error) => (error === undefined ? pending[i]?.resolve() : pending[i]?.reject(error)),
  };
}

describe('SQLite commit durability', () => {
  it('runs the connection at NORMAL and syncs the WAL for durable commits (SQLite would sync none at NORMAL)', async () => {
    const { database, db, syncs } = open();
    expect(database.pragma('synchronous', { simple: true })).toBe(1);
    const before = syncs.started;
    await db.insertInto('t').values({ a: 1 }).execute();
    expect(syncs.started).toBe(before + 1);
    await db.transaction().execute((trx) => trx.insertInto('t').values({ a: 2 }).execute());
    expect(syncs.started).toBe(before + 2);
    // A read commits nothing, and neither does a transaction rolled back.
    await db.selectFrom('t').selectAll().execute();
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto('t').values({ a: 3 }).execute();
        throw new Error('undo');
      }),
    ).rejects.toThrow('undo');
    expect(syncs.started).toBe(before + 2);
    // The real flush ran (the WAL and, the first time, its directory): the rows are there.
    expect((await db.selectFrom('t').select('a').execute()).map((r) => r.a)).toEqual([1, 2]);
  });

  it('commits deferred-durable inside runDeferred — transactions and lone writes — without a sync, and durable again after', async () => {
    const { db, syncs } = open();
    const before = syncs.started;
    await runDeferred(async () => {
      await db.transaction().execute((trx) => trx.insertInto('t').values({ a: 1 }).execute());
      await db.insertInto('t').values({ a: 2 }).execute();
    });
    expect(syncs.started).toBe(before);
    await db.transaction().execute((trx) => trx.insertInto('t').values({ a: 3 }).execute());
    expect(syncs.started).toBe(before + 1);
    expect((await db.selectFrom('t').select('a').execute()).map((r) => r.a)).toEqual([1, 2, 3]);
  });

  it('a durable commit returns only after a sync that began after its COMMIT, and commits waiting together share one', async () => {
    const { database, db, syncs } = open();
    const flush = heldFlush(syncs);
    const returned: number[] = [];
    const commits = Array.from({ length: 10 }, (_, i) => db.transaction().execute((trx) => trx.insertInto('t').values({ a: i }).execute()).then(() => void returned.push(i)));
    // The first commit's sync is held: the other nine commit meanwhile (the mutex is not held over a sync).
    await flush.began(1);
    const committed = (): number => (database.prepare("select count(*) as n from t").get() as { n: number }).n;
    await until(() => committed() === 10);
    expect(returned).toEqual([]);
    expect(flush.calls()).toBe(1);
    // The first sync may have begun before the nine wrote their frames: they wait for the next one, all of them.
    flush.release(0);
    await flush.began(2);
    await until(() => returned.length === 1);
    expect(returned).toEqual([0]);
    flush.release(1);
    await Promise.all(commits);
    expect(flush.calls()).toBe(2);
    expect(returned.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('a sync that fails fails the commit that waited for it (outcome unknown: the change is in the database) and every durable commit after it', async () => {
    const { db, syncs } = open();
    const flush = heldFlush(syncs);
    const commit = db.insertInto('t').values({ a: 1 }).execute();
    await flush.began(1);
    flush.release(0, Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    await expect(commit).rejects.toMatchObject({
      code: 'UNAVAILABLE',
      message: expect.stringContaining('could not flush it to the disk'),
      details: { outage: true, outcomeUnknown: true, reason: 'sync-failed' },
    });
    expect((await db.selectFrom('t').select('a').execute()).map((r) => r.a)).toEqual([1]);
    // The kernel may have dropped the pages it could not write: a later sync proves nothing.
    await expect(db.insertInto('t').values({ a: 2 }).execute()).rejects.toMatchObject({ code: 'UNAVAILABLE', details: { reason: 'sync-failed' } });
    expect(flush.calls()).toBe(1);
    // Deferred commits wait for no sync: they still go in.
    await runDeferred(() => db.insertInto('t').values({ a: 3 }).execute());
  });

  it('a sync that could not open the WAL (EMFILE: a real descriptor limit) fails its commit but not the ones after it', async () => {
    const { db, syncs } = open();
    // The process's own descriptor limit, lowered and then used up: the sync's open of the WAL
    // (the first sync of this database opens it) fails with EMFILE. No fdatasync ran, so nothing
    // was dropped: the next sync flushes this commit's frames too. Before, every later durable
    // commit of the process failed until a restart.
    const limits = execFileSync('prlimit', ['--pid', String(process.pid), '--nofile', '--output=SOFT,HARD', '--noheadings', '--raw'], { encoding: 'utf8' }).trim().split(/\s+/);
    const fds = readdirSync('/proc/self/fd').length;
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${fds + 64}:${limits[1]}`]);
    const filler: number[] = [];
    try {
      for (;;) {
        try {
          filler.push(openSync('/dev/null', 'r'));
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'EMFILE') break;
          throw error;
        }
      }
      await expect(db.insertInto('t').values({ a: 1 }).execute()).rejects.toMatchObject({
        code: 'UNAVAILABLE',
        details: { outage: true, outcomeUnknown: true, reason: 'sync-failed' },
        hint: expect.stringContaining('too many files are open'),
      });
    } finally {
      for (const fd of filler) closeSync(fd);
      execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${limits[0]}:${limits[1]}`]);
    }
    const before = syncs.started;
    await db.insertInto('t').values({ a: 2 }).execute();
    expect(syncs.started).toBe(before + 1);
    expect((await db.selectFrom('t').select('a').execute()).map((r) => r.a)).toEqual([1, 2]);
  });

  it('a lone write with RETURNING is a durable commit too (it answers rows, like a read)', async () => {
    const { db, syncs } = open();
    const before = syncs.started;
    await db.insertInto('t').values({ a: 1 }).returning('a').execute();
    await db.updateTable('t').set({ a: 2 }).returning('a').execute();
    await db.deleteFrom('t').returning('a').execute();
    expect(syncs.started).toBe(before + 3);
  });

  it('a database opened through a symbolic link syncs the WAL beside the real file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-durability-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    mkdirSync(join(dir, 'real'));
    symlinkSync(join(dir, 'real'), join(dir, 'link'));
    const store = await openSqliteStore({ filename: join(dir, 'link', 'berth.db') });
    const synced: string[] = [];
    const syncs = walSyncFor(join(dir, 'link', 'berth.db'));
    const flush = syncs.flush;
    syncs.flush = async (paths) => {
      synced.push(paths.wal);
      await flush(paths);
    };
    try {
      await store.hosts.create({ name: 'node-a' });
    } finally {
      syncs.flush = flush;
      await store.close();
    }
    expect(synced).toEqual([join(dir, 'real', 'berth.db-wal')]);
  });

  it('two drivers over one database file share its syncs', async () => {
    const { database, db, syncs } = open();
    // A second Kysely (its own driver and statement-cache wrapper) over the same connection; not
    // destroyed here: that would close the connection the first one's cleanup closes.
    const other = new Kysely<{ t: { a: number } }>({ dialect: new BerthSqliteDialect(database, { filename: database.name, busyTimeoutMs: 1_000 }) });
    const before = syncs.started;
    await runDeferred(() => db.insertInto('t').values({ a: 1 }).execute());
    await other.transaction().execute((trx) => trx.insertInto('t').values({ a: 2 }).execute());
    expect(syncs.started).toBe(before + 1);
  });

  it('a transaction begun durable stays durable when a deferred write joins it', async () => {
    const { db, syncs } = open();
    const before = syncs.started;
    await db.transaction().execute((trx) => runDeferred(() => trx.insertInto('t').values({ a: 1 }).execute()));
    expect(syncs.started).toBe(before + 1);
  });
});

/** Resolve once `condition` holds, looking at every turn of the event loop (5 s at most). */
async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met within 5 s');
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

describe('the kept WAL descriptor', () => {
  const walDescriptors = (wal: string): string[] =>
    readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`).startsWith(wal);
      } catch {
        return false;
      }
    });

  it('is open while a store uses the database and closed with the last store of this process on it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-durability-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const filename = join(dir, 'berth.db');
    const wal = `${filename}-wal`;
    const first = await openSqliteStore({ filename });
    const second = await openSqliteStore({ filename });
    try {
      // SQLite's own descriptor of each connection, and the one kept for the syncs.
      await first.hosts.create({ name: 'node-a' });
      expect(walDescriptors(wal)).toHaveLength(3);
      await second.hosts.create({ name: 'node-b' });
      expect(walDescriptors(wal)).toHaveLength(3);
      await first.close();
      // The second store's connection keeps the WAL: the kept descriptor stays, and still syncs.
      expect(walDescriptors(wal)).toHaveLength(2);
      await second.hosts.create({ name: 'node-c' });
    } finally {
      await first.close().catch(() => undefined);
      await second.close();
    }
    // SQLite removed the WAL with the last connection; a descriptor kept now would sync a removed file.
    expect(walDescriptors(wal)).toEqual([]);
    // A store opened and closed without a query (its schema already current) lets go too.
    await (await openSqliteStore({ filename })).close();
    const again = await openSqliteStore({ filename });
    try {
      await again.hosts.create({ name: 'node-d' });
      expect(walDescriptors(wal)).toHaveLength(2);
      expect((await again.hosts.list()).map((h) => h.name).sort()).toEqual(['node-a', 'node-b', 'node-c', 'node-d']);
    } finally {
      await again.close();
    }
  });

  it('a read-only store closed without a query lets go of the database file too', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-durability-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const filename = join(dir, 'berth.db');
    await (await openSqliteStore({ filename })).close();
    // Before, the connection stayed open until the process ended (Kysely closes only one it used).
    await (await openSqliteStoreReadOnly({ filename })).close();
    expect(walDescriptors(filename)).toEqual([]);
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
