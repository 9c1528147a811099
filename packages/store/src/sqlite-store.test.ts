import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '@berth/core';
import type { NewVolume, Store } from '@berth/core';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { describeStoreConformance } from './conformance.js';
import { describeManyHostsStoreConformance } from './conformance-many-hosts.js';
import { openSqliteStore } from './open-sqlite-store.js';

const tempDirs: string[] = [];
const openStores: Store[] = [];

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'berth-store-'));
  tempDirs.push(dir);
  return dir;
}

async function openTracked(filename: string, busyTimeoutMs?: number): Promise<Store> {
  const store = await openSqliteStore(busyTimeoutMs === undefined ? { filename } : { filename, busyTimeoutMs });
  openStores.push(store);
  return store;
}

afterEach(async () => {
  for (const store of openStores.splice(0)) await store.close();
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function volume(name: string): NewVolume {
  return { name, projectId: 'p', sizeBytes: 1 << 20, backend: 'file', multiattach: false, status: 'available' };
}

describeStoreConformance('sqlite :memory:', () => openSqliteStore({ filename: ':memory:' }));
describeStoreConformance('sqlite file', () => openSqliteStore({ filename: join(tempDir(), 'berth.db') }));
describeManyHostsStoreConformance('sqlite :memory:', () => openSqliteStore({ filename: ':memory:' }));
describeManyHostsStoreConformance('sqlite file', () => openSqliteStore({ filename: join(tempDir(), 'berth.db') }));

describe('openSqliteStore', () => {
  it('waits out a lock another connection holds on a file not yet in WAL mode, trying again in short turns', async () => {
    // Another connection (standing in for another process) holds the exclusive lock of a new file
    // in rollback mode for longer than one try of the pragmas; opening waits for it, and does not
    // hold a lock itself while it waits (each try lets go), so the holder can finish and let go.
    const filename = join(tempDir(), 'berth.db');
    const holder = new BetterSqlite3(filename);
    holder.exec('create table other(x)');
    holder.exec('begin exclusive');
    const released = new Promise<void>((resolve) =>
      setTimeout(() => {
        holder.exec('commit');
        holder.close();
        resolve();
      }, 600),
    );
    const store = await openSqliteStore({ filename, busyTimeoutMs: 10_000 });
    try {
      await released;
      expect(await store.hosts.list()).toEqual([]);
    } finally {
      await store.close();
    }
  });

  it('creates missing parent directories with mode 0700 and puts the file in WAL mode', async () => {
    const root = tempDir();
    const filename = join(root, 'data', 'berth', 'berth.db');
    await openTracked(filename);
    expect(statSync(join(root, 'data')).mode & 0o777).toBe(0o700);
    expect(statSync(join(root, 'data', 'berth')).mode & 0o777).toBe(0o700);
    const raw = new BetterSqlite3(filename, { readonly: true });
    try {
      expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      raw.close();
    }
  });

  it('leaves an existing directory as it is', async () => {
    const root = tempDir();
    mkdirSync(join(root, 'shared'), { mode: 0o755 });
    await openTracked(join(root, 'shared', 'berth.db'));
    expect(statSync(join(root, 'shared')).mode & 0o777).toBe(0o755);
  });

  it('migrations are idempotent: reopening keeps the data and applies nothing twice', async () => {
    const filename = join(tempDir(), 'berth.db');
    const first = await openSqliteStore({ filename });
    const created = await first.volumes.create(volume('data1'));
    await first.close();
    const second = await openTracked(filename);
    const third = await openTracked(filename);
    expect(await second.volumes.require(created.id)).toEqual(created);
    expect(await third.volumes.findByName('p', 'data1')).toEqual(created);
    const raw = new BetterSqlite3(filename, { readonly: true });
    try {
      expect(raw.prepare('select name from kysely_migration order by name').all()).toEqual([
        { name: '0001-initial' },
        { name: '0002-leases-and-work-items' },
        { name: '0003-host-devices-and-locks' },
        { name: '0004-host-agents' },
        { name: '0005-server-hypervisor' },
        { name: '0006-attachment-host-root' },
        { name: '0007-host-device-root' },
        { name: '0008-agent-transport-info' },
      ]);
    } finally {
      raw.close();
    }
  });

  it('brings an older database up to date on open (the fast path only skips a database that is already latest)', async () => {
    const filename = join(tempDir(), 'berth.db');
    await (await openSqliteStore({ filename })).close();
    const raw = new BetterSqlite3(filename);
    const last = (raw.prepare('select name from kysely_migration order by name desc limit 1').get() as { name: string }).name;
    raw.prepare('delete from kysely_migration where name = ?').run(last);
    const tablesBefore = raw.prepare("select count(*) as n from sqlite_master where type = 'table'").get() as { n: number };
    raw.close();
    // The last migration's rows are gone but its tables are not: the migrator must run it again, and
    // its "create table" must then fail loudly; a skipped migration would open without complaint.
    const reopened = await openSqliteStore({ filename }).then(
      async (store) => {
        await store.close();
        return 'opened';
      },
      (e: unknown) => (BerthError.is(e) ? e.code : 'other'),
    );
    expect(reopened).toBe('CONFIG');
    expect(tablesBefore.n).toBeGreaterThan(0);
  });

  it('refuses a file that is not a database with CONFIG', async () => {
    const filename = join(tempDir(), 'berth.db');
    writeFileSync(filename, 'this is not sqlite '.repeat(100));
    const error = await openSqliteStore({ filename }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(BerthError.is(error) && error.code).toBe('CONFIG');
    expect((error as Error).message).toContain(filename);
  });

  it('refuses a database migrated by a newer berth, saying so', async () => {
    const filename = join(tempDir(), 'berth.db');
    await (await openSqliteStore({ filename })).close();
    const raw = new BetterSqlite3(filename);
    raw.prepare("insert into kysely_migration (name, timestamp) values ('9999-from-the-future', '2030-01-01')").run();
    raw.close();
    const error = await openSqliteStore({ filename }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(BerthError.is(error) && error.code).toBe('CONFIG');
    expect(BerthError.is(error) && error.hint).toContain('newer berth');
  });

  it('refuses a negative busy timeout', async () => {
    await expect(openSqliteStore({ filename: ':memory:', busyTimeoutMs: -1 })).rejects.toMatchObject({ code: 'CONFIG' });
  });
});

describe('two stores on the same file', () => {
  it('concurrent reservations, many rounds: exactly one store wins each round', async () => {
    const filename = join(tempDir(), 'berth.db');
    const a = await openTracked(filename);
    const b = await openTracked(filename);
    for (let round = 0; round < 100; round += 1) {
      const created = await (round % 2 === 0 ? a : b).volumes.create(volume(`vol-${round}`));
      const [first, second] = round % 3 === 0 ? [b, a] : [a, b];
      const results = await Promise.allSettled([
        first.volumes.transition(created.id, ['available'], 'reserved'),
        second.volumes.transition(created.id, ['available'], 'reserved'),
      ]);
      const won = results.filter((r) => r.status === 'fulfilled');
      const lost = results.filter((r) => r.status === 'rejected');
      expect(won).toHaveLength(1);
      expect(lost).toHaveLength(1);
      const reason: unknown = lost[0]?.reason;
      expect(BerthError.is(reason) && reason.code).toBe('CONFLICT');
      expect((await a.volumes.require(created.id)).status).toBe('reserved');
    }
  });

  it('a write waits for the other store of this process to commit instead of failing busy', async () => {
    const filename = join(tempDir(), 'berth.db');
    // A short timeout: better-sqlite3 blocks the event loop while SQLite waits, so without the
    // per-file queue the second write would always time out here.
    const a = await openTracked(filename, 100);
    const b = await openTracked(filename, 100);
    let openGate!: () => void;
    const gate = new Promise<void>((resolve) => {
      openGate = resolve;
    });
    let inside!: () => void;
    const entered = new Promise<void>((resolve) => {
      inside = resolve;
    });
    const held = a.transaction(async (tx) => {
      await tx.volumes.create(volume('from-a'));
      inside();
      await gate;
    });
    await entered;
    let settled = false;
    const write = b.volumes.create(volume('from-b')).finally(() => {
      settled = true;
    });
    await new Promise((resolve) => setImmediate(resolve));
    expect(settled).toBe(false);
    openGate();
    await held;
    await write;
    expect((await b.volumes.list()).map((v) => v.name).sort()).toEqual(['from-a', 'from-b']);
  });

  it('a lock held by another connection past the busy timeout surfaces as TIMEOUT, and nothing is written', async () => {
    const filename = join(tempDir(), 'berth.db');
    const store = await openTracked(filename, 50);
    const other = new BetterSqlite3(filename);
    try {
      other.prepare('begin immediate').run();
      const error = await store.volumes.create(volume('blocked')).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
      expect((error as BerthError).hint).toBeTruthy();
      other.prepare('rollback').run();
      expect(await store.volumes.list()).toEqual([]);
      await store.volumes.create(volume('after'));
    } finally {
      other.close();
    }
  });
});

describe('transaction scope', () => {
  it('the store given to fn cannot be used after the transaction ended', async () => {
    const store = await openTracked(':memory:');
    let leaked: Store | undefined;
    await store.transaction(async (tx) => {
      leaked = tx;
    });
    await expect(leaked?.volumes.list()).rejects.toMatchObject({ code: 'INTERNAL' });
    await expect(leaked?.close()).rejects.toMatchObject({ code: 'INTERNAL' });
  });
});
