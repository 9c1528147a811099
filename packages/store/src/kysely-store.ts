import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { BerthError } from '@berth/core';
import type { Store } from '@berth/core';
import type { Kysely, Transaction } from 'kysely';
import { createMonotonicClock } from './clock.js';
import type { Database } from './database.js';
import type { RepositoryContext } from './repository-context.js';
import { createAttachmentRepository } from './repositories/attachment-repository.js';
import { createHostDeviceRepository } from './repositories/host-device-repository.js';
import { createHostRepository } from './repositories/host-repository.js';
import { createLockRepository } from './repositories/lock-repository.js';
import { createOperationRepository } from './repositories/operation-repository.js';
import { createServerRepository } from './repositories/server-repository.js';
import { createVolumeRepository } from './repositories/volume-repository.js';
import type { StoreDialect } from './store-dialect.js';

/** One open transaction of a store. */
interface TransactionScope {
  readonly trx: Transaction<Database>;
  open: boolean;
  store: Store | undefined;
}

/** Options of `createKyselyStore`. */
export interface KyselyStoreOptions {
  /** The engine's encodings. */
  dialect: StoreDialect;
  /** Run when the store closes, after Kysely is destroyed (close files, drop pools). */
  onClose?: () => Promise<void> | void;
}

/**
 * The Store port over any Kysely instance whose schema is `Database`. Dialect-neutral: the engine
 * only shows through `options.dialect`.
 */
export function createKyselyStore(db: Kysely<Database>, options: KyselyStoreOptions): Store {
  const { dialect } = options;
  const active = new AsyncLocalStorage<TransactionScope>();
  const now = createMonotonicClock();
  let closed = false;

  const repositories = (
    ctx: RepositoryContext,
  ): Pick<Store, 'volumes' | 'hosts' | 'servers' | 'attachments' | 'operations' | 'devices' | 'locks'> => ({
    volumes: createVolumeRepository(ctx),
    hosts: createHostRepository(ctx),
    servers: createServerRepository(ctx),
    attachments: createAttachmentRepository(ctx),
    operations: createOperationRepository(ctx),
    devices: createHostDeviceRepository(ctx),
    locks: createLockRepository(ctx),
  });

  const boundStore = (scope: TransactionScope): Store => ({
    ...repositories({
      dialect,
      now,
      newId: randomUUID,
      db: () => {
        if (!scope.open) {
          throw new BerthError('INTERNAL', 'the store was used after its transaction ended', {
            hint: 'use the store passed to transaction() only inside the callback',
          });
        }
        return scope.trx;
      },
    }),
    // Nested transactions join the open one: there is one unit of work.
    transaction: <T>(fn: (store: Store) => Promise<T>): Promise<T> => fn(boundStore(scope)),
    close: () =>
      Promise.reject(new BerthError('INTERNAL', 'cannot close the store inside one of its transactions')),
  });

  const rootContext: RepositoryContext = {
    dialect,
    now,
    newId: randomUUID,
    // Calls on the root store made from inside transaction(fn) join that transaction instead of
    // waiting for the connection it holds (which would never come back).
    db: () => {
      const scope = active.getStore();
      return scope?.open === true ? scope.trx : db;
    },
  };

  return {
    ...repositories(rootContext),

    async transaction<T>(fn: (store: Store) => Promise<T>): Promise<T> {
      const current = active.getStore();
      if (current?.open === true && current.store !== undefined) return fn(current.store);
      let builder = db.transaction();
      if (dialect.isolationLevel !== undefined) builder = builder.setIsolationLevel(dialect.isolationLevel);
      return builder.execute(async (trx) => {
        const scope: TransactionScope = { trx, open: true, store: undefined };
        const store = boundStore(scope);
        scope.store = store;
        try {
          return await active.run(scope, () => fn(store));
        } finally {
          scope.open = false;
        }
      });
    },

    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await db.destroy();
      await options.onClose?.();
    },
  };
}
