import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { BerthError, createMonotonicClock, createNotificationHub, parseWith, zNotificationChannel, zNotificationPayload } from '@berth/core';
import type { Store, StoreNotifications } from '@berth/core';
import type { Kysely, Transaction } from 'kysely';
import type { Database } from './database.js';
import { outsideDeferred, runDeferred } from './durability.js';
import type { NotificationBackend } from './notification-backend.js';
import type { NotificationRelay } from './socket-relay.js';
import type { RepositoryContext } from './repository-context.js';
import { createAttachmentRepository } from './repositories/attachment-repository.js';
import { createHostDeviceRepository } from './repositories/host-device-repository.js';
import { createHostRepository } from './repositories/host-repository.js';
import { createLockRepository } from './repositories/lock-repository.js';
import { createOperationRepository } from './repositories/operation-repository.js';
import { createServerRepository } from './repositories/server-repository.js';
import { createVolumeRepository } from './repositories/volume-repository.js';
import { createWorkItemRepository } from './repositories/work-item-repository.js';
import type { StoreDialect } from './store-dialect.js';

/** One open transaction of a store. */
interface TransactionScope {
  readonly trx: Transaction<Database>;
  open: boolean;
  store: Store | undefined;
  /** In-process notifications sent inside the transaction: delivered on commit, dropped on rollback. */
  readonly afterCommit: Array<() => void>;
}

/**
 * How many times `transaction` runs `fn` when the engine keeps aborting it for losing a race.
 * Each retry starts at once (no sleep): PostgreSQL picks the victim of a serialization failure
 * so that an immediate retry does not meet the same conflict again, and the dialect's
 * `transactionAttempt` lets a transaction that keeps losing run alone. The bound only stops a
 * livelock.
 */
export const TRANSACTION_ATTEMPTS = 30;

/** Options of `createKyselyStore`. */
export interface KyselyStoreOptions {
  /** The engine's encodings. */
  dialect: StoreDialect;
  /** Run when the store closes, after Kysely is destroyed (close files, drop pools). */
  onClose?: () => Promise<void> | void;
  /** Carries notifications between processes; without it they stay within this process. */
  notifications?: NotificationBackend;
  /**
   * Without `notifications` (SQLite): also carry them, once committed, to the other processes on
   * the same database (`createSocketRelay`).
   */
  relay?: NotificationRelay;
  /**
   * The same database through a connection of its own, for lease renewals outside transactions
   * (`RepositoryContext.urgentDb`); destroyed on close. Without it renewals use `db`.
   */
  urgent?: Kysely<Database>;
}

/**
 * The Store port over any Kysely instance whose schema is `Database`. Dialect-neutral: the engine
 * only shows through `options.dialect`.
 */
export function createKyselyStore(db: Kysely<Database>, options: KyselyStoreOptions): Store {
  const { dialect } = options;
  const urgent = options.urgent ?? db;
  const active = new AsyncLocalStorage<TransactionScope>();
  const now = createMonotonicClock();
  let closed = false;

  const backend = options.notifications;
  const relay = backend === undefined ? options.relay : undefined;
  /** In-process delivery (used when there is no backend). */
  const hub = createNotificationHub();
  /** Another process's notification, into this one's listeners (a malformed one is dropped). */
  const fromElsewhere = (channel: string, payload: string): void => {
    try {
      hub.notify(channel, payload);
    } catch {
      // Not a valid channel or payload: nothing of berth's.
    }
  };

  const notifications = (ctx: RepositoryContext, scope: () => TransactionScope | undefined): StoreNotifications => ({
    async notify(channel: string, payload = ''): Promise<void> {
      if (backend === undefined) {
        const afterCommit = scope()?.afterCommit;
        // Listeners run outside a deferred-durable caller's scope (see `outsideDeferred`).
        outsideDeferred(() => hub.notify(channel, payload, afterCommit));
        if (relay) {
          // Validated by the hub above; sent to the others once the transaction has committed.
          const publish = (): void => relay.publish(channel, payload);
          if (afterCommit) afterCommit.push(publish);
          else publish();
        }
        return;
      }
      const name = parseWith(zNotificationChannel, channel, 'notification channel');
      const text = parseWith(zNotificationPayload, payload, 'notification payload');
      await backend.send(ctx.db(), name, text);
    },
    async listen(channel: string, listener: (payload: string) => void): Promise<() => Promise<void>> {
      if (backend === undefined) {
        const stop = hub.listen(channel, listener);
        // Unreachable from elsewhere (a read-only data dir, a socket path too long): this process still hears itself.
        await relay?.start(fromElsewhere).catch(() => false);
        return stop;
      }
      return backend.subscribe(parseWith(zNotificationChannel, channel, 'notification channel'), listener);
    },
  });

  const repositories = (
    ctx: RepositoryContext,
    scope: () => TransactionScope | undefined,
  ): Pick<Store, 'volumes' | 'hosts' | 'servers' | 'attachments' | 'operations' | 'workItems' | 'notifications' | 'devices' | 'locks'> => ({
    volumes: createVolumeRepository(ctx),
    hosts: createHostRepository(ctx),
    servers: createServerRepository(ctx),
    attachments: createAttachmentRepository(ctx),
    operations: createOperationRepository(ctx),
    workItems: createWorkItemRepository(ctx),
    notifications: notifications(ctx, scope),
    devices: createHostDeviceRepository(ctx),
    locks: createLockRepository(ctx),
  });

  const openScope = (): TransactionScope | undefined => {
    const scope = active.getStore();
    return scope?.open === true ? scope : undefined;
  };

  const boundStore = (scope: TransactionScope): Store => {
    const trx = (): Kysely<Database> => {
      if (!scope.open) {
        throw new BerthError('INTERNAL', 'the store was used after its transaction ended', {
          hint: 'use the store passed to transaction() only inside the callback',
        });
      }
      return scope.trx;
    };
    return {
      ...repositories(
        // Inside a transaction, renewals join it like everything else.
        { dialect, now, newId: randomUUID, db: trx, urgentDb: trx, atomically: (fn) => fn() },
        () => (scope.open ? scope : undefined),
      ),
      // Nested transactions join the open one: there is one unit of work.
      transaction: <T>(fn: (store: Store) => Promise<T>): Promise<T> => fn(boundStore(scope)),
      // Its writes are the open transaction's, committed as that one was begun.
      deferDurability: <T>(fn: () => Promise<T>): Promise<T> => fn(),
      close: () => Promise.reject(new BerthError('INTERNAL', 'cannot close the store inside one of its transactions')),
    };
  };

  const transaction = async <T>(fn: (store: Store) => Promise<T>): Promise<T> => {
    const current = active.getStore();
    if (current?.open === true && current.store !== undefined) return fn(current.store);
    for (let attempt = 1; ; attempt += 1) {
      let builder = db.transaction();
      if (dialect.isolationLevel !== undefined) builder = builder.setIsolationLevel(dialect.isolationLevel);
      const committed: { scope?: TransactionScope } = {};
      try {
        const execute = (): Promise<T> =>
          builder.execute(async (trx) => {
            const scope: TransactionScope = { trx, open: true, store: undefined, afterCommit: [] };
            const store = boundStore(scope);
            scope.store = store;
            try {
              const value = await active.run(scope, () => fn(store));
              committed.scope = scope;
              return value;
            } finally {
              scope.open = false;
            }
          });
        const result = dialect.transactionAttempt === undefined ? await execute() : await dialect.transactionAttempt(attempt, execute);
        for (const deliver of committed.scope?.afterCommit ?? []) outsideDeferred(deliver);
        return result;
      } catch (error) {
        if (dialect.lostBeforeCommit?.(error) === true && BerthError.is(error)) {
          // Rolled back by the server with its connection: the caller's store retry may run it all again.
          error.details.retryable = true;
          throw error;
        }
        if (!dialect.retryableTransaction(error)) throw error;
        if (attempt >= TRANSACTION_ATTEMPTS) {
          throw new BerthError(
            'CONFLICT',
            `the ${dialect.name} database aborted this transaction ${attempt} times because concurrent ones changed the same rows`,
            {
              hint: 'the store is under heavy contention on the same rows; retry the command',
              details: { attempts: attempt },
              cause: error,
            },
          );
        }
      }
    }
  };

  const rootContext: RepositoryContext = {
    dialect,
    now,
    newId: randomUUID,
    // Calls on the root store made from inside transaction(fn) join that transaction instead of
    // waiting for the connection it holds (which would never come back).
    db: () => openScope()?.trx ?? db,
    urgentDb: () => openScope()?.trx ?? urgent,
    // Inside transaction(fn), `db()` above is its connection.
    atomically: (fn) => transaction(() => fn()),
  };

  return {
    ...repositories(rootContext, openScope),

    transaction,

    deferDurability: runDeferred,

    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      try {
        await backend?.close();
        await relay?.close();
      } finally {
        await db.destroy();
        await options.urgent?.destroy();
        await options.onClose?.();
      }
    },
  };
}
