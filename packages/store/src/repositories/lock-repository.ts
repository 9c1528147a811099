import { BerthError } from '@berth/core';
import type { LockHolder, LockRepository } from '@berth/core';
import { cachedQuery } from '../cached-query.js';
import type { RepositoryContext } from '../repository-context.js';
import { violation } from '../repository-context.js';

// A lease is taken and released around every device step: both statements compiled once.
const insertLock = cachedQuery<{ key: string; owner: string; acquiredAt: string; expiresAt: string }, never>(
  ['key', 'owner', 'acquiredAt', 'expiresAt'],
  (db, p) => db.insertInto('locks').values({ key: p.key, owner: p.owner, acquired_at: p.acquiredAt, expires_at: p.expiresAt }),
);
const deleteLock = cachedQuery<{ key: string; owner: string }, never>(['key', 'owner'], (db, p) =>
  db.deleteFrom('locks').where('key', '=', p.key).where('owner', '=', p.owner),
);

/**
 * A lease's insert or delete whose connection the server ended on purpose (`endedOnPurpose`: 57P01
 * by an administrator command — nothing committed is lost, but the statement may or may not have
 * taken effect) may be sent again: both are
 * idempotent for their owner — a second insert finds the owner's own row (core's `withLease` takes
 * that as held), a second delete finds nothing. Inside a transaction the whole transaction is what
 * runs again (the driver marks it), so nothing is added there.
 */
function idempotent(error: unknown): never {
  if (BerthError.is(error) && error.details.endedOnPurpose === true && error.details.uncommitted !== true) error.details.retryable = true;
  throw error;
}

function checkKey(key: string, owner: string): void {
  if (key.length === 0 || key.length > 300 || owner.length === 0 || owner.length > 300) {
    throw new BerthError('VALIDATION', 'invalid lock: key and owner must be 1 to 300 characters');
  }
}

/** Leases over Kysely: a row per held key; taking one is an insert, taking over a dead one a CAS. */
export function createLockRepository(ctx: RepositoryContext): LockRepository {
  const holder = async (key: string): Promise<LockHolder | undefined> => {
    const row = await ctx.db().selectFrom('locks').selectAll().where('key', '=', key).executeTakeFirst();
    return row === undefined ? undefined : { owner: row.owner, acquiredAt: row.acquired_at, expiresAt: row.expires_at };
  };

  return {
    holder,

    async tryAcquire(key: string, owner: string, expiresAt: string): Promise<LockHolder | undefined> {
      checkKey(key, owner);
      try {
        await ctx.dialect.guarded(() => insertLock(ctx.db(), { key, owner, acquiredAt: ctx.now(), expiresAt }));
        return undefined;
      } catch (error) {
        if (violation(ctx, error) !== 'unique') idempotent(error);
      }
      // Held: say by whom (it may have been released meanwhile; then the caller simply tries again).
      return (await holder(key)) ?? { owner: '', acquiredAt: ctx.now(), expiresAt: ctx.now() };
    },

    async takeOver(key: string, owner: string, expectedOwner: string, expiresAt: string): Promise<boolean> {
      checkKey(key, owner);
      // The holder's renewal is a takeover from itself: it takes the connection reserved for leases.
      const result = await ctx
        .urgentDb()
        .updateTable('locks')
        .set({ owner, acquired_at: ctx.now(), expires_at: expiresAt })
        .where('key', '=', key)
        .where('owner', '=', expectedOwner)
        .executeTakeFirst();
      return result.numUpdatedRows > 0n;
    },

    async release(key: string, owner: string): Promise<void> {
      await deleteLock(ctx.db(), { key, owner }).catch(idempotent);
    },
  };
}
