import { AsyncLocalStorage } from 'node:async_hooks';
import { BerthError } from '@berth/core';
import { CompiledQuery } from 'kysely';
import type { DatabaseConnection, Driver, QueryResult, TransactionSettings } from 'kysely';
import type pg from 'pg';
import { durabilityDeferred } from './durability.js';
import {
  isPostgresConnectionError,
  postgresAdminShutdown,
  postgresConnectionFailure,
  postgresPoolBusy,
  postgresQueryNotSent,
  postgresServerRefusal,
  type PostgresBounds,
} from './postgres-errors.js';

/** What the berth PostgreSQL driver needs. */
export interface BerthPostgresDriverOptions {
  /** The pool connections come from (the driver ends it on destroy). */
  pool: pg.Pool;
  /** The store URL with its password redacted, for messages. */
  target: string;
  /** The password, so that no message can echo it. */
  password: string | undefined;
  /** The pool's bounds, for messages that name them (a lock or statement timeout, a pool that stayed busy). */
  bounds?: PostgresBounds;
}

/**
 * How the statements run inside `fn` are sent, set by the three functions below. One
 * AsyncLocalStorage for all three: each enabled one costs every promise of the process a hook.
 */
interface StatementMode {
  /**
   * A statement whose constraint violation the caller catches and goes on from (reads the row to
   * word a CONFLICT/NOT_FOUND, or retries): inside a transaction it runs under a savepoint, so the
   * transaction stays usable after it fails, as on SQLite. Other statements save the round trips:
   * an error from them ends the transaction anyway.
   */
  guarded?: true;
  /**
   * A statement whose effect only shows once the transaction commits (`pg_notify`): inside a
   * transaction it is held back and sent with COMMIT, in the same round trip; outside one it runs
   * at once. It must return nothing the caller reads and take string parameters only (they are
   * inlined as escaped literals, since a query of several statements takes none).
   */
  atCommit?: true;
  /**
   * A statement sent with BEGIN, in the same round trip, for the transaction started inside it
   * (the dialect's `transaction_gate` lock): no parameters, so one simple-protocol query carries both.
   */
  preamble?: string;
}
const statementMode = new AsyncLocalStorage<StatementMode>();

function withMode<T>(mode: StatementMode, fn: () => Promise<T>): Promise<T> {
  return statementMode.run({ ...statementMode.getStore(), ...mode }, fn);
}

/** Run `fn` with its statements savepoint-guarded inside a transaction (see `StatementMode.guarded`). */
export function guardPostgresStatement<T>(fn: () => Promise<T>): Promise<T> {
  return withMode({ guarded: true }, fn);
}

/** Run `fn` so that its statement, inside a transaction, goes with COMMIT (see `StatementMode.atCommit`). */
export function atPostgresCommit<T>(fn: () => Promise<T>): Promise<T> {
  return withMode({ atCommit: true }, fn);
}

/** Run `fn` so that the transaction it begins runs `statement` right after BEGIN, in one round trip. */
export function withBeginPreamble<T>(statement: string, fn: () => Promise<T>): Promise<T> {
  return withMode({ preamble: statement }, fn);
}

/** One pooled client as Kysely sees it. */
class BerthPostgresConnection implements DatabaseConnection {
  readonly client: pg.PoolClient;
  readonly #options: BerthPostgresDriverOptions;
  /** Set between BEGIN and COMMIT/ROLLBACK: statements that may fail run under a savepoint. */
  inTransaction = false;
  /** The connection-level error that broke this client: it is destroyed on release, not reused. */
  broken: Error | undefined;
  /** Statements held back for COMMIT (`atPostgresCommit`), parameters inlined; dropped on rollback. */
  atCommit: string[] = [];
  /** A guarded statement's savepoint that succeeded and is not released yet (it goes with the next savepoint or COMMIT). */
  savepointHeld = false;
  /** Set while COMMIT is on its way: a connection lost then leaves the transaction's outcome unknown. */
  committing = false;
  /** Set while BEGIN (with its preamble) or ROLLBACK is on its way: lost then, nothing of the transaction took effect. */
  atEdge = false;

  /**
   * pg's pool drops its own 'error' listener from a client it lends out, so a connection that dies
   * while this one holds it (between queries) would emit an error no one listens to and crash the
   * process: it is recorded here instead, and the client destroyed on release.
   */
  readonly #onError = (error: Error): void => {
    this.broken ??= error;
  };

  constructor(client: pg.PoolClient, options: BerthPostgresDriverOptions) {
    this.client = client;
    this.#options = options;
    client.on('error', this.#onError);
  }

  /** Give the client back to the pool (destroyed when its connection broke). */
  release(): void {
    this.client.removeListener('error', this.#onError);
    // A truthy argument makes pg destroy the client rather than pool it.
    this.client.release(this.broken);
  }

  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    const mode = statementMode.getStore();
    if (this.inTransaction && mode?.atCommit === true) {
      this.atCommit.push(inlined(this.client, compiledQuery));
      return { rows: [] };
    }
    if (!this.inTransaction || mode?.guarded !== true) {
      return this.#run<R>(compiledQuery.sql, compiledQuery.parameters);
    }
    // A failed statement aborts a PostgreSQL transaction, while the repositories answer a unique
    // or foreign-key violation by reading the row to word the CONFLICT/NOT_FOUND (and callers may
    // go on after catching it, as they can on SQLite). A savepoint around such a statement keeps
    // the transaction usable after it fails. After a success the savepoint is released with the
    // next savepoint or with COMMIT, in their round trip, rather than in one of its own.
    await this.#run(this.savepointHeld ? 'release savepoint berth_statement; savepoint berth_statement' : 'savepoint berth_statement', []);
    this.savepointHeld = false;
    let result: QueryResult<R>;
    try {
      result = await this.#run<R>(compiledQuery.sql, compiledQuery.parameters);
    } catch (error) {
      if (this.broken === undefined) await this.#run('rollback to savepoint berth_statement; release savepoint berth_statement', []);
      throw error;
    }
    this.savepointHeld = true;
    return result;
  }

  // eslint-disable-next-line require-yield -- the interface demands a generator; berth never streams
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new BerthError('INTERNAL', 'the berth PostgreSQL driver does not stream query results');
  }

  async #run<R>(sql: string, parameters: readonly unknown[]): Promise<QueryResult<R>> {
    try {
      const { command, rowCount, rows } = await this.client.query(sql, [...parameters]);
      const counted = command === 'INSERT' || command === 'UPDATE' || command === 'DELETE' || command === 'MERGE';
      return {
        ...(counted ? { numAffectedRows: BigInt(rowCount ?? 0) } : {}),
        rows: (rows ?? []) as R[],
      };
    } catch (error) {
      if (!isPostgresConnectionError(error)) throw postgresServerRefusal(error, this.#options.target, this.#options.password, this.#options.bounds) ?? error;
      const earlier = this.broken;
      this.broken = earlier ?? (error instanceof Error ? error : new Error(String(error)));
      throw postgresConnectionFailure(error, this.#options.target, this.#options.password, this.#rerunnable(error, earlier));
    }
  }

  /**
   * What may be run again after a lost connection, when the server ended it on purpose (no
   * committed work lost, deferred-durable commits included: `postgresAdminShutdown`): a transaction
   * whose COMMIT had not gone out (the server rolled it back), as a whole — the store's outermost
   * `transaction` marks it retryable (`lostBeforeCommit`) —, or a statement pg never sent. A
   * statement outside a transaction lost on its way, or a COMMIT, may have taken effect (marked
   * `outcomeUnknown`, however the connection was lost); and after a crash the last deferred
   * commits may be gone, so nothing is run again on top of them.
   */
  #rerunnable(error: unknown, earlier: Error | undefined): Record<string, unknown> {
    const notSent = postgresQueryNotSent(error);
    // Whichever way the connection was lost, a COMMIT or a lone statement that went out may have
    // taken effect (core's `isOutcomeUnknown`: the caller must read the database, not its memory,
    // to learn what it did); a transaction whose COMMIT had not gone out was rolled back with it.
    const unknown = !notSent && !this.atEdge && (!this.inTransaction || this.committing) ? { outcomeUnknown: true } : {};
    if (!(notSent ? postgresAdminShutdown(earlier) : postgresAdminShutdown(error))) return unknown;
    if (this.inTransaction || this.atEdge) return this.committing ? { endedOnPurpose: true, ...unknown } : { endedOnPurpose: true, uncommitted: true };
    return notSent ? { endedOnPurpose: true, retryable: true } : { endedOnPurpose: true, ...unknown };
  }
}

/**
 * Kysely's PostgreSQL driver, rewritten small on `pg` for five things Kysely's own does not do:
 * a statement whose constraint violation the caller handles runs under a savepoint inside
 * transactions (so the transaction survives it, as on SQLite); BEGIN carries the dialect's
 * preamble in the same round trip, and COMMIT the statements held back for it (`pg_notify`); a client whose connection broke is destroyed instead
 * of going back to the pool; and connection failures become BerthErrors (UNAVAILABLE/CONFIG)
 * that name the server by its redacted URL.
 */
export class BerthPostgresDriver implements Driver {
  readonly #options: BerthPostgresDriverOptions;
  #ended = false;
  /**
   * Connections lent out and not yet given back. The pool's own `totalCount` counts clients
   * still connecting too: with the server unreachable it reads full, and "busy" would be said of
   * an outage (a review).
   */
  #lent = 0;

  constructor(options: BerthPostgresDriverOptions) {
    this.#options = options;
  }

  async init(): Promise<void> {
    // The pool connects lazily.
  }

  async acquireConnection(): Promise<DatabaseConnection> {
    let client: pg.PoolClient;
    try {
      client = await this.#options.pool.connect();
    } catch (error) {
      const { target, bounds } = this.#options;
      // Every pooled connection stayed busy until the wait ran out: the server answers, its
      // statements do not end (a lock, a slow disk). Saying "cannot reach" sent operators to the network.
      if (bounds !== undefined && this.#lent >= bounds.poolSize && /timeout exceeded when trying to connect/i.test(String((error as Error)?.message))) {
        throw postgresPoolBusy(target, bounds);
      }
      throw postgresConnectionFailure(error, this.#options.target, this.#options.password);
    }
    this.#lent += 1;
    return new BerthPostgresConnection(client, this.#options);
  }

  async beginTransaction(connection: DatabaseConnection, settings: TransactionSettings): Promise<void> {
    const isolation = settings.isolationLevel === undefined ? '' : ` isolation level ${settings.isolationLevel}`;
    const access = settings.accessMode === undefined ? '' : ` ${settings.accessMode}`;
    // A deferred-durable transaction (`Store.deferDurability`) does not wait for its WAL flush at
    // COMMIT; the next durable commit waits for everything before it in the log.
    const parts = [...(durabilityDeferred() ? ['set local synchronous_commit to off'] : []), statementMode.getStore()?.preamble].filter((p) => p !== undefined);
    const preamble = parts.length === 0 ? undefined : parts.join('; ');
    const berth = asBerth(connection);
    // One simple-protocol query (no parameters) may hold several statements: BEGIN and the
    // preamble cost one round trip, not two.
    const begin = `start transaction${isolation}${access}`;
    try {
      berth.atEdge = true;
      await connection.executeQuery(CompiledQuery.raw(preamble === undefined ? begin : `${begin}; ${preamble}`));
    } catch (error) {
      // BEGIN may have run before the preamble failed, and Kysely rolls back only a transaction
      // whose begin succeeded: end it here so that the client goes back to the pool idle.
      if (preamble !== undefined && berth.broken === undefined) await connection.executeQuery(CompiledQuery.raw('rollback')).catch(() => undefined);
      throw error;
    } finally {
      berth.atEdge = false;
    }
    berth.inTransaction = true;
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    const berth = asBerth(connection);
    // The held-back statements and COMMIT in one simple-protocol query: if one fails, the
    // statements after it (COMMIT too) are skipped and Kysely rolls the transaction back.
    const statements = [...(berth.savepointHeld ? ['release savepoint berth_statement'] : []), ...berth.atCommit, 'commit'];
    berth.atCommit = [];
    berth.savepointHeld = false;
    berth.committing = true;
    try {
      await connection.executeQuery(CompiledQuery.raw(statements.join('; ')));
    } finally {
      berth.committing = false;
      berth.inTransaction = false;
    }
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    const berth = asBerth(connection);
    berth.atCommit = [];
    berth.savepointHeld = false;
    try {
      // A lost connection ended the transaction on the server already; sending ROLLBACK would only
      // fail again and hide the error that ended it (whether COMMIT had gone out) from the caller.
      berth.atEdge = true;
      if (berth.broken === undefined) await connection.executeQuery(CompiledQuery.raw('rollback'));
    } finally {
      berth.atEdge = false;
      asBerth(connection).inTransaction = false;
    }
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    this.#lent -= 1;
    asBerth(connection).release();
  }

  async destroy(): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    await this.#options.pool.end();
  }
}

/** A statement with its `$n` parameters replaced by escaped string literals (strings only: INTERNAL otherwise). */
function inlined(client: pg.PoolClient, query: CompiledQuery): string {
  return query.sql.replace(/\$(\d+)/g, (_, n: string) => {
    const value = query.parameters[Number(n) - 1];
    if (typeof value !== 'string') throw new BerthError('INTERNAL', 'a statement held back for COMMIT takes string parameters only');
    return client.escapeLiteral(value);
  });
}

function asBerth(connection: DatabaseConnection): BerthPostgresConnection {
  if (!(connection instanceof BerthPostgresConnection)) {
    throw new BerthError('INTERNAL', 'a connection from another driver reached the berth PostgreSQL driver');
  }
  return connection;
}
