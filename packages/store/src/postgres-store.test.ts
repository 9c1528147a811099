// The store on a real PostgreSQL server: a throwaway cluster for this file (initdb + pg_ctl in a
// temp dir, its own port), a fresh database per test.
import { BerthError } from '@berth/core';
import type { NewVolume, Server, Store, Volume } from '@berth/core';
import { Kysely, sql } from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { describeStoreConformance } from './conformance.js';
import { describeManyHostsStoreConformance } from './conformance-many-hosts.js';
import type { Database } from './database.js';
import { openPostgresStore } from './open-postgres-store.js';
import { BerthPostgresDialect } from './postgres-dialect.js';
import { createPostgresNotifications } from './postgres-notifications.js';
import { runDeferred } from './durability.js';
import { withBeginPreamble } from './postgres-driver.js';
import { redactPostgresUrl } from './postgres-url.js';
import { queryOn, startPostgresCluster } from './testing/postgres-cluster.js';
import type { PostgresCluster } from './testing/postgres-cluster.js';

let cluster: PostgresCluster | undefined;
const openStores: Store[] = [];

function running(): PostgresCluster {
  if (cluster === undefined) throw new Error('the PostgreSQL cluster did not start');
  return cluster;
}

beforeAll(async () => {
  cluster = await startPostgresCluster();
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
}, 60_000);

afterEach(async () => {
  for (const store of openStores.splice(0)) await store.close();
});

async function openFresh(): Promise<Store> {
  return openPostgresStore({ url: await running().createDatabase() });
}

async function openTracked(url: string, poolSize?: number): Promise<Store> {
  const store = await openPostgresStore(poolSize === undefined ? { url } : { url, poolSize });
  openStores.push(store);
  return store;
}

function volume(name: string): NewVolume {
  return { name, projectId: 'p', sizeBytes: 1 << 20, backend: 'file', multiattach: false, status: 'available' };
}

async function failure(promise: Promise<unknown>): Promise<BerthError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!BerthError.is(error)) throw new Error(`expected a BerthError, got ${String(error)}`);
  return error;
}

/** Kysely over a one-connection pool whose client records every query text it sends. */
function recordingKysely(url: string): { db: Kysely<Database>; sent: string[] } {
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  const sent: string[] = [];
  pool.on('connect', (client) => {
    const query = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<unknown>;
    (client as unknown as { query: typeof query }).query = (text, values) => {
      sent.push(text);
      return query(text, values);
    };
  });
  return { db: new Kysely<Database>({ dialect: new BerthPostgresDialect({ pool, target: 'test', password: undefined }) }), sent };
}

describeStoreConformance('postgres', openFresh);
describeManyHostsStoreConformance('postgres', openFresh);

describe('openPostgresStore', () => {
  it('migrates once: reopening keeps the data, and stores opening a fresh database together all succeed', async () => {
    const url = await running().createDatabase();
    const stores = await Promise.all(Array.from({ length: 4 }, () => openTracked(url)));
    const created = await stores[0]!.volumes.create(volume('data1'));
    const again = await openTracked(url);
    expect(await again.volumes.require(created.id)).toEqual(created);
    // Its own connection, ended here: an idle one left open errors out when the cluster stops.
    const rows = await running().query<{ name: string }>('select name from kysely_migration order by name', [], new URL(url).pathname.slice(1));
    expect(rows.map((r) => r.name)).toEqual(['0001-initial', '0002-leases-and-work-items', '0003-host-devices-and-locks', '0004-host-agents', '0005-server-hypervisor', '0006-attachment-host-root', '0007-host-device-root', '0008-agent-transport-info']);
  });

  it('refuses a database migrated by a newer berth, saying so', async () => {
    const url = await running().createDatabase();
    await (await openPostgresStore({ url })).close();
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query("insert into kysely_migration (name, timestamp) values ('9999-from-the-future', '2030-01-01')");
    } finally {
      await client.end();
    }
    const error = await failure(openPostgresStore({ url }));
    expect(error.code).toBe('CONFIG');
    expect(error.hint).toContain('newer berth');
  });

  it('a server that refuses connections is UNAVAILABLE with a hint, and the password appears nowhere', async () => {
    // Port 1 on loopback: nothing listens there.
    const url = 'postgres://berth:s3cret-Pa55@127.0.0.1:1/berth';
    const error = await failure(openPostgresStore({ url, connectTimeoutMs: 5000 }));
    expect(error.code).toBe('UNAVAILABLE');
    // An outage, not a refusal: core leaves a rollback that meets it to recovery (`isStoreOutage`).
    expect(error.details.outage).toBe(true);
    expect(error.message).toContain('postgres://berth:***@127.0.0.1:1/berth');
    expect(error.hint).toContain('PostgreSQL is running');
    const everything = JSON.stringify({ message: error.message, hint: error.hint, details: error.details, cause: String(error.cause) });
    expect(everything).not.toContain('s3cret-Pa55');
    expect(String(error.stack)).not.toContain('s3cret-Pa55');
  });

  it('a missing database is CONFIG, saying to create it', async () => {
    const error = await failure(openPostgresStore({ url: running().url('no_such_database') }));
    expect(error.code).toBe('CONFIG');
    expect(error.message).toContain('no_such_database');
    expect(error.hint).toContain('create the database');
  });

  it('refuses a URL that is not PostgreSQL without echoing it', async () => {
    const error = await failure(openPostgresStore({ url: 'mysql://root:hunter2@db/berth' }));
    expect(error.code).toBe('CONFIG');
    expect(error.message).not.toContain('hunter2');
    expect(redactPostgresUrl('postgresql://u:p%40ss@h:5/d?sslmode=require&password=x')).toBe(
      'postgresql://u:***@h:5/d?sslmode=require&password=***',
    );
    // A malformed %-escape in the password (the driver decodes it): CONFIG, not "URI malformed".
    const malformed = await failure(openPostgresStore({ url: 'postgres://berth:S3cret%zzPw@127.0.0.1:1/berth' }));
    expect(malformed.code).toBe('CONFIG');
    expect(malformed.message).not.toContain('S3cret');
    expect(malformed.hint).toContain('%25');
  });

  it('a connection killed under a store is UNAVAILABLE once, and the store recovers', async () => {
    const url = await running().createDatabase();
    const store = await openTracked(url, 1);
    await store.volumes.create(volume('before'));
    const database = new URL(url).pathname.slice(1);
    await running().query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and application_name = 'berth'", [database]);
    // The pooled client may notice the termination while idle (then the pool drops it) or on
    // its next query (then that query is UNAVAILABLE); either way the next call works.
    const first = await store.volumes.list().then(
      () => undefined,
      (e: unknown) => e,
    );
    if (first !== undefined) expect(BerthError.is(first) && first.code).toBe('UNAVAILABLE');
    expect((await store.volumes.list()).map((v) => v.name)).toEqual(['before']);
  });

  it('a lone write whose connection the server ended while it ran may have taken effect: outcomeUnknown, not retryable', async () => {
    const url = await running().createDatabase();
    const store = await openTracked(url, 1);
    const held = await store.volumes.create(volume('held'));
    const database = new URL(url).pathname.slice(1);
    // Another session holds the row: the store's UPDATE went out and waits on its lock.
    const holder = new pg.Client({ connectionString: url });
    await holder.connect();
    try {
      await holder.query('begin');
      await holder.query('select 1 from volumes where id = $1 for update', [held.id]);
      const pending = failure(store.volumes.transition(held.id, ['available'], 'reserved'));
      const waiting = "select pid from pg_stat_activity where datname = $1 and application_name = 'berth' and wait_event_type = 'Lock'";
      await vi.waitFor(async () => expect(await running().query(waiting, [database])).toHaveLength(1), { timeout: 10_000, interval: 20 });
      await running().query(`select pg_terminate_backend(pid) from (${waiting}) as w`, [database]);
      const error = await pending;
      expect(error.code).toBe('UNAVAILABLE');
      // Core reads the database after it rather than undo from memory (`isOutcomeUnknown`).
      expect(error.details).toMatchObject({ outage: true, outcomeUnknown: true, endedOnPurpose: true });
      expect(error.details.retryable).toBeUndefined();
    } finally {
      await holder.query('rollback').catch(() => undefined);
      await holder.end();
    }
  });

  it('a server that answers but is read-only (a standby, a demoted primary) makes a write an outage, not a failed write', async () => {
    const url = await running().createDatabase();
    const store = await openTracked(url, 1);
    await store.volumes.create(volume('before'));
    const database = new URL(url).pathname.slice(1);
    const sessions = "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and application_name = 'berth'";
    // New sessions of this database are read-only; the store's pooled one is ended so it opens one.
    await running().query(`alter database "${database}" set default_transaction_read_only = on`);
    try {
      await running().query(sessions, [database]);
      await store.volumes.list().catch(() => undefined);
      expect((await store.volumes.list()).map((v) => v.name)).toEqual(['before']);
      const error = await failure(store.volumes.create(volume('after')));
      expect(error.code).toBe('UNAVAILABLE');
      // Core's isStoreOutage: an undo that meets it leaves the operation to recovery.
      expect(error.details).toMatchObject({ outage: true, reason: 'read-only', retryable: false, errorCode: '25006' });
      expect(error.message).toMatch(/cannot write now/);
    } finally {
      await running().query(`alter database "${database}" reset default_transaction_read_only`);
    }
    await running().query(sessions, [database]);
    await store.volumes.list().catch(() => undefined);
    await store.volumes.create(volume('after'));
    expect((await store.volumes.list()).map((v) => v.name).sort()).toEqual(['after', 'before']);
  });

  it("a lock another session holds on berth's tables fails a statement at the store's lock timeout (an outage naming the lock), not at the lock's end; a pool kept busy by such waits says so, not 'cannot reach'", async () => {
    const url = await running().createDatabase();
    const store = await openPostgresStore({ url, poolSize: 1, connectTimeoutMs: 300, lockTimeoutMs: 1_500 });
    openStores.push(store);
    await store.volumes.create(volume('before'));
    const locker = new pg.Client({ connectionString: url });
    await locker.connect();
    try {
      await locker.query('begin');
      await locker.query('lock table volumes in access exclusive mode');
      const started = Date.now();
      // The only pooled connection waits on the lock; a second call finds the pool busy.
      const waiting = failure(store.volumes.create(volume('during')));
      const busy = await failure(store.volumes.list());
      expect(busy.code).toBe('UNAVAILABLE');
      expect(busy.details).toMatchObject({ reason: 'pool-busy', outage: true, retryable: true });
      expect(busy.message).toMatch(/answers, but all 1 of this process's connections to it stayed busy for 0.3 s/);
      expect(busy.hint).toMatch(/pg_stat_activity/);
      const locked = await waiting;
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(locked.code).toBe('UNAVAILABLE');
      // Core's isStoreOutage and retryableStoreError: a step retries it until its deadline.
      expect(locked.details).toMatchObject({ reason: 'lock-timeout', errorCode: '55P03', outage: true, retryable: true });
      expect(locked.message).toMatch(/lock timeout/);
      expect(locked.hint).toMatch(/lock timeout \(1.5 s\).*pg_locks/);
      expect(locked.message + (locked.hint ?? '')).not.toContain(new URL(url).password || '\u0000');
    } finally {
      await locker.query('rollback').catch(() => undefined);
      await locker.end();
    }
    await store.volumes.create(volume('after'));
    expect((await store.volumes.list()).map((v) => v.name).sort()).toEqual(['after', 'before']);
  });

  it('a transaction whose connection the server ended before COMMIT is retryable, and nothing of it committed', async () => {
    const url = await running().createDatabase();
    const store = await openTracked(url, 2);
    const database = new URL(url).pathname.slice(1);
    const error = await failure(
      store.transaction(async (tx) => {
        await tx.volumes.create(volume('half'));
        // pg_terminate_backend: SQLSTATE 57P01, the server rolls the open transaction back.
        await running().query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and application_name = 'berth' and state like 'idle in transaction%'", [database]);
        await tx.volumes.create(volume('rest'));
      }),
    );
    expect(error.code).toBe('UNAVAILABLE');
    // The pipelines' store retry (core's withStoreRetry) runs such a transaction again.
    expect(error.details.retryable).toBe(true);
    // Known not to have taken effect: not `outcomeUnknown`.
    expect(error.details).toMatchObject({ outage: true, uncommitted: true });
    expect(error.details.outcomeUnknown).toBeUndefined();
    expect(await store.volumes.list()).toEqual([]);
    await store.transaction(async (tx) => {
      await tx.volumes.create(volume('half'));
      await tx.volumes.create(volume('rest'));
    });
    expect((await store.volumes.list()).map((v) => v.name).sort()).toEqual(['half', 'rest']);
  });
});

describe('PostgreSQL concurrency', () => {
  it('many stores racing CAS transitions: exactly one winner per volume, no lost update', async () => {
    const url = await running().createDatabase();
    const stores = await Promise.all(Array.from({ length: 4 }, () => openTracked(url, 4)));
    const [first] = stores as [Store];
    const volumes: Volume[] = [];
    for (let i = 0; i < 25; i += 1) volumes.push(await first.volumes.create(volume(`vol-${i}`)));
    const counter = await first.hosts.create({ name: 'counter', connector: { host: 'counter', n: 0 } });

    const outcomes = await Promise.all(
      stores.flatMap((store) =>
        volumes.map(async (v) => {
          // A plain CAS and a read-modify-write transaction on one shared row, from every store.
          const won = await store.volumes.transition(v.id, ['available'], 'reserved').then(
            () => true,
            (e: unknown) => {
              if (BerthError.is(e) && e.code === 'CONFLICT') return false;
              throw e;
            },
          );
          await store.transaction(async (tx) => {
            const host = await tx.hosts.require(counter.id);
            const n = typeof host.connector?.n === 'number' ? host.connector.n : 0;
            await tx.hosts.setConnector(counter.id, { host: 'counter', n: n + 1 });
          });
          return won ? v.id : undefined;
        }),
      ),
    );
    const winners = outcomes.filter((id): id is string => id !== undefined);
    expect(winners).toHaveLength(volumes.length);
    expect(new Set(winners).size).toBe(volumes.length);
    expect((await first.volumes.list()).every((v) => v.status === 'reserved')).toBe(true);
    // Every one of the 160 serialisable increments counted: the aborted ones were run again.
    expect((await first.hosts.require(counter.id)).connector).toEqual({ host: 'counter', n: stores.length * volumes.length });
  });

  it('concurrent reservations through transactions (read, decide, CAS, insert) never double-book a volume', async () => {
    const url = await running().createDatabase();
    const stores = await Promise.all(Array.from({ length: 3 }, () => openTracked(url, 4)));
    const [first] = stores as [Store];
    const host = await first.hosts.create({ name: 'node-a' });
    const servers: Server[] = [];
    for (let i = 0; i < 6; i += 1) servers.push(await first.servers.create({ name: `vm-${i}`, projectId: 'p', hostId: host.id }));
    const target = await first.volumes.create(volume('shared'));
    // What core's reserve step does: read the volume and its attachments, refuse if taken, CAS, insert.
    const reserve = (store: Store, serverId: string): Promise<boolean> =>
      store
        .transaction(async (tx) => {
          const current = await tx.volumes.require(target.id);
          const existing = await tx.attachments.list({ volumeId: target.id });
          if (current.status !== 'available' || existing.length > 0) return false;
          await tx.volumes.transition(target.id, ['available'], 'reserved');
          await tx.attachments.create({ volumeId: target.id, serverId, hostId: host.id, mode: 'rw' });
          return true;
        })
        .catch((e: unknown) => {
          if (BerthError.is(e) && e.code === 'CONFLICT') return false;
          throw e;
        });
    const results = await Promise.all(servers.map((server, i) => reserve(stores[i % stores.length]!, server.id)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await first.attachments.list({ volumeId: target.id })).toHaveLength(1);
    expect((await first.volumes.require(target.id)).status).toBe('reserved');
  });

  it('a unique violation inside a transaction leaves it usable (savepoint), as on SQLite', async () => {
    const store = await openTracked(await running().createDatabase());
    await store.volumes.create(volume('taken'));
    const created = await store.transaction(async (tx) => {
      const error = await failure(tx.volumes.create(volume('taken')));
      expect(error.code).toBe('CONFLICT');
      expect(error.message).toContain('a volume named taken already exists');
      return tx.volumes.create(volume('free'));
    });
    expect(await store.volumes.get(created.id)).toEqual(created);
  });

  it('BEGIN and its preamble go in one round trip; a preamble that fails leaves the pooled client idle, not in a transaction', async () => {
    const url = await running().createDatabase();
    const { db, sent } = recordingKysely(url);
    try {
      await withBeginPreamble("set local lock_timeout = '60s'", () =>
        db.transaction().setIsolationLevel('serializable').execute((trx) => sql`select 1`.execute(trx)),
      );
      expect(sent).toEqual(["start transaction isolation level serializable; set local lock_timeout = '60s'", 'select 1', 'commit']);
      await expect(withBeginPreamble('lock table no_such_table', () => db.transaction().execute((trx) => sql`select 1`.execute(trx)))).rejects.toThrow(/no_such_table/);
      // The one pooled client is idle again: a statement outside a transaction runs (inside an
      // aborted one it would fail with 25P02).
      const { rows } = await sql<{ ok: number }>`select 1 as ok`.execute(db);
      expect(rows).toEqual([{ ok: 1 }]);
    } finally {
      await db.destroy();
    }
  });

  it('a deferred-durable transaction commits without waiting for its WAL flush (SET LOCAL in the BEGIN), the others wait', async () => {
    const url = await running().createDatabase();
    const { db, sent } = recordingKysely(url);
    try {
      // The test cluster runs with synchronous_commit=off: this session asks for the default back.
      await sql`set synchronous_commit to on`.execute(db);
      const setting = (trx: Kysely<Database>): Promise<string | undefined> =>
        sql<{ synchronous_commit: string }>`show synchronous_commit`.execute(trx).then(({ rows }) => rows[0]?.synchronous_commit);
      const deferred = await runDeferred(() =>
        withBeginPreamble("set local lock_timeout = '60s'", () => db.transaction().execute((trx) => setting(trx))),
      );
      const durable = await db.transaction().execute((trx) => setting(trx));
      expect([deferred, durable]).toEqual(['off', 'on']);
      // BEGIN, the deferral and the preamble: still one round trip.
      expect(sent).toContain("start transaction; set local synchronous_commit to off; set local lock_timeout = '60s'");
    } finally {
      await db.destroy();
    }
  });

  it('lease renewals do not queue behind a pool busy with other work: the live holder keeps its leases', async () => {
    // One pooled connection, held by a transaction that waits: every ordinary statement now
    // waits for it, as operations' statements do when the pool is saturated. Renewals take the
    // connection reserved for them; queued behind the pool they would hang here until the
    // connect timeout failed them (and another replica took the operation over meanwhile).
    const url = await running().createDatabase();
    const store = await openTracked(url, 1);
    const deadlineAt = new Date(Date.now() + 3_600_000).toISOString();
    const operation = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: 1000, deadlineAt });
    expect(await store.locks.tryAcquire('device:h:v', 'api-1/a', deadlineAt)).toBeUndefined();
    let holding!: () => void;
    const held = new Promise<void>((resolve) => {
      holding = resolve;
    });
    let letGo!: () => void;
    const released = new Promise<void>((resolve) => {
      letGo = resolve;
    });
    const busy = store.transaction(async (tx) => {
      await tx.volumes.list();
      holding();
      await released;
    });
    try {
      await held;
      expect(await store.operations.heartbeat!('api-1', 60_000)).toEqual([operation.id]);
      expect(await store.locks.takeOver('device:h:v', 'api-1/a', 'api-1/a', deadlineAt)).toBe(true);
    } finally {
      letGo();
      await busy;
    }
    const [row] = await queryOn<{ lease_expires_at: string }>(url, 'select lease_expires_at from operations where id = $1', [operation.id]);
    expect(Date.parse(row?.lease_expires_at ?? '')).toBeGreaterThan(Date.now() + 30_000);
  });

  it.each([
    ['a takeover by setOwner', "update operations set owner = 'api-2' where id = $1"],
    ["another replica's finish", "update operations set owner = 'api-2', state = 'rolled_back' where id = $1"],
  ])('a journal write fenced by its owner waits for %s in progress, then writes nothing (FOR SHARE: FOR KEY SHARE let it through)', async (_what, update) => {
    const url = await running().createDatabase();
    const store = await openTracked(url);
    const op = await store.operations.create({ kind: 'attach', owner: 'api-1', leaseMs: 3_600_000, deadlineAt: new Date(Date.now() + 3_600_000).toISOString() });
    const seq = await store.operations.startStep(op.id, 'reserve', 'do', 'api-1');
    const other = new pg.Client({ connectionString: url });
    const watcher = new pg.Client({ connectionString: url });
    await other.connect();
    await watcher.connect();
    try {
      await other.query('begin');
      await other.query(update, [op.id]);
      const writes = [
        store.operations.startStep(op.id, 'dispatch', 'do', 'api-1'),
        store.operations.endStep(op.id, seq, { state: 'done' }, 'api-1'),
        store.operations.advanceStep(op.id, seq, { state: 'done' }, { name: 'dispatch', phase: 'do' }, 'api-1'),
      ].map((write) => write.then(() => 'written' as const, (error: unknown) => error));
      // All three wait on the operation's row (none may decide from the old owner its snapshot shows).
      const waiting = async (): Promise<'waiting'> => {
        for (;;) {
          const { rows } = await watcher.query<{ n: string }>(`select count(*) as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`);
          if (Number(rows[0]?.n) >= 3) return 'waiting';
        }
      };
      expect(await Promise.race([waiting(), ...writes])).toBe('waiting');
      await other.query('commit');
      for (const outcome of await Promise.all(writes)) {
        expect(BerthError.is(outcome) && outcome.details).toMatchObject({ reason: 'not-owner', owner: 'api-1' });
      }
      expect((await store.operations.require(op.id)).steps.map((step) => [step.name, step.state])).toEqual([['reserve', 'running']]);
    } finally {
      await other.end();
      await watcher.end();
    }
  });

  it('notifications cross stores (and processes) sharing the database', async () => {
    const url = await running().createDatabase();
    const sender = await openTracked(url);
    const receiver = await openTracked(url);
    const received: string[] = [];
    let delivered!: (payload: string) => void;
    const arrived = new Promise<string>((resolve) => {
      delivered = resolve;
    });
    const stop = await receiver.notifications!.listen('work_host_7', (payload) => {
      received.push(payload);
      delivered(payload);
    });
    try {
      await sender.notifications!.notify('work_host_7', 'item-42');
      expect(await arrived).toBe('item-42');
    } finally {
      await stop();
    }
    expect(received).toEqual(['item-42']);
  });

  it('many channels listened to and left at once: every subscriber is listening when listen() resolves, and pg never sees overlapping queries', async () => {
    const url = await running().createDatabase();
    const sender = await openTracked(url);
    const receiver = await openTracked(url);
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning.message);
    process.on('warning', onWarning);
    try {
      // Like one long-poll per host: subscribers come and go on many channels at the same time.
      const channels = Array.from({ length: 30 }, (_, i) => `work_host_${i}`);
      const churn = await Promise.all(channels.map((c) => receiver.notifications!.listen(c, () => undefined)));
      await Promise.all(churn.map((stop) => stop()));
      const arrived = channels.map(() => {
        let resolve!: () => void;
        return { promise: new Promise<void>((r) => (resolve = r)), resolve: () => resolve() };
      });
      // Two subscribers per channel at once: the second must not resolve before the LISTEN is in place.
      const stops = await Promise.all(
        channels.flatMap((c, i) => [receiver.notifications!.listen(c, () => arrived[i]?.resolve()), receiver.notifications!.listen(c, () => undefined)]),
      );
      try {
        for (const c of channels) await sender.notifications!.notify(c, 'x');
        await Promise.all(arrived.map((a) => a.promise));
      } finally {
        await Promise.all(stops.map((stop) => stop()));
      }
      expect(warnings.filter((w) => w.includes('already executing a query'))).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('one LISTEN per channel and process: a channel its last listener left stays listened to, up to a bound', async () => {
    const url = await running().createDatabase();
    const sender = await openTracked(url);
    // Every statement the listening connection ran so far.
    let recorded: () => string[] = () => [];
    const backend = createPostgresNotifications({
      newClient: () => {
        const client = new pg.Client({ connectionString: url });
        const query = vi.spyOn(client, 'query');
        recorded = () => query.mock.calls.map((call) => String(call[0]));
        return client;
      },
      target: 'test',
      password: undefined,
      maxIdleChannels: 2,
    });
    try {
      // A long-poll after another on one channel: LISTEN once, never UNLISTEN.
      for (let poll = 0; poll < 3; poll++) {
        let delivered!: (payload: string) => void;
        const arrived = new Promise<string>((resolve) => (delivered = resolve));
        const stop = await backend.subscribe('work_host_1', delivered);
        await sender.notifications!.notify('work_host_1', `item-${poll}`);
        expect(await arrived).toBe(`item-${poll}`);
        await stop();
      }
      expect(recorded()).toEqual(['listen "work_host_1"']);
      // Past the bound, the least recently used idle channel is let go.
      for (const channel of ['work_host_2', 'work_host_3']) await (await backend.subscribe(channel, () => undefined))();
      expect(recorded()).toEqual(['listen "work_host_1"', 'listen "work_host_2"', 'listen "work_host_3"', 'unlisten "work_host_1"']);
      // And a subscriber on it listens again before subscribe() resolves.
      let delivered!: (payload: string) => void;
      const arrived = new Promise<string>((resolve) => (delivered = resolve));
      const stop = await backend.subscribe('work_host_1', delivered);
      await sender.notifications!.notify('work_host_1', 'again');
      expect(await arrived).toBe('again');
      await stop();
      expect(recorded().slice(4)).toEqual(['listen "work_host_1"', 'unlisten "work_host_2"']);
    } finally {
      await backend.close();
    }
  });

  it('a listening connection re-opened by a new subscriber (before the reconnect) LISTENs every channel again, not only its own', async () => {
    const url = await running().createDatabase();
    const sender = await openTracked(url);
    const ended: Array<Promise<void>> = [];
    const backend = createPostgresNotifications({
      newClient: () => {
        const client = new pg.Client({ connectionString: url });
        ended.push(new Promise<void>((resolve) => client.once('end', () => resolve())));
        return client;
      },
      target: 'test',
      password: undefined,
    });
    const payloads: string[] = [];
    const waiters: Array<{ want: string; resolve: () => void }> = [];
    const deliver = (payload: string): void => {
      payloads.push(payload);
      for (const w of waiters.filter((x) => x.want === payload)) w.resolve();
    };
    const next = (want: string): Promise<void> => new Promise<void>((resolve) => waiters.push({ want, resolve }));
    try {
      const stopA = await backend.subscribe('work_host_a', deliver);
      const database = new URL(url).pathname.slice(1);
      // The database drops the listening connection (a restart does this to every one).
      await running().query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and query ilike 'listen%'", [database]);
      await ended[0];
      // Another host's long-poll subscribes before the reconnect timer: it opens the connection.
      const woken = next('');
      const stopB = await backend.subscribe('work_host_b', () => undefined);
      await woken;
      const arrived = next('item-after');
      await sender.notifications!.notify('work_host_a', 'item-after');
      await Promise.race([arrived, new Promise((_r, reject) => setTimeout(() => reject(new Error(`work_host_a not listened to again: ${JSON.stringify(payloads)}`)), 10_000).unref())]);
      await stopA();
      await stopB();
    } finally {
      await backend.close();
    }
  });

  it('a lost listening connection is re-opened and listeners are told they may have missed something', async () => {
    const url = await running().createDatabase();
    const store = await openTracked(url);
    const payloads: string[] = [];
    const waiters: Array<() => void> = [];
    const stop = await store.notifications!.listen('wake', (payload) => {
      payloads.push(payload);
      waiters.shift()?.();
    });
    const nextPayload = (): Promise<void> => new Promise<void>((resolve) => waiters.push(resolve));
    try {
      const database = new URL(url).pathname.slice(1);
      const reconnected = nextPayload();
      await running().query(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and query ilike 'listen%'",
        [database],
      );
      await reconnected;
      expect(payloads).toEqual(['']);
      const after = nextPayload();
      await store.notifications!.notify('wake', 'after-reconnect');
      await after;
      expect(payloads).toEqual(['', 'after-reconnect']);
    } finally {
      await stop();
    }
  });
});
