import BetterSqlite3 from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cachedQuery } from './cached-query.js';
import type { Database } from './database.js';

describe('cachedQuery', () => {
  let db: Kysely<Database>;

  beforeEach(async () => {
    db = new Kysely<Database>({ dialect: new SqliteDialect({ database: new BetterSqlite3(':memory:') }) });
    await db.schema.createTable('locks').addColumn('key', 'text', (c) => c.primaryKey()).addColumn('owner', 'text').addColumn('acquired_at', 'text').addColumn('expires_at', 'text').execute();
  });

  afterEach(async () => {
    await db.destroy();
  });

  it('runs one compiled query with each call’s parameters, constants kept', async () => {
    const insert = cachedQuery<{ key: string; owner: string }, never>(['key', 'owner'], (kdb, p) =>
      kdb.insertInto('locks').values({ key: p.key, owner: p.owner, acquired_at: 'then', expires_at: 'later' }),
    );
    const byOwner = cachedQuery<{ owner: string }, { key: string; acquired_at: string }>(['owner'], (kdb, p) =>
      kdb.selectFrom('locks').select(['key', 'acquired_at']).where('owner', '=', p.owner).orderBy('key'),
    );
    await insert(db, { key: 'a', owner: 'me' });
    await insert(db, { key: 'b', owner: 'you' });
    await db.transaction().execute((trx) => insert(trx, { key: 'c', owner: 'me' }));
    expect((await byOwner(db, { owner: 'me' })).rows).toEqual([
      { key: 'a', acquired_at: 'then' },
      { key: 'c', acquired_at: 'then' },
    ]);
    expect((await byOwner(db, { owner: 'you' })).rows).toEqual([{ key: 'b', acquired_at: 'then' }]);
  });

  it('refuses a build that reads a parameter as a value, leaves one out, or compiles in something that varies', async () => {
    const stringified = cachedQuery<{ owner: string }, never>(['owner'], (kdb, p) => kdb.deleteFrom('locks').where('owner', '=', `${p.owner}!`));
    await expect(stringified(db, { owner: 'me' })).rejects.toThrow(/used as a value/);
    const unbound = cachedQuery<{ key: string; owner: string }, never>(['key', 'owner'], (kdb, p) => kdb.deleteFrom('locks').where('key', '=', p.key));
    await expect(unbound(db, { key: 'a', owner: 'me' })).rejects.toThrow(/owner not bound/);
    let calls = 0;
    const varying = cachedQuery<{ key: string }, never>(['key'], (kdb, p) => kdb.deleteFrom('locks').where('key', '=', p.key).where('owner', '=', `call ${++calls}`));
    await expect(varying(db, { key: 'a' })).rejects.toThrow(/varies between builds/);
  });
});
