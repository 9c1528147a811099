import { CompiledQuery, type DatabaseConnection } from 'kysely';
import { describe, expect, it } from 'vitest';
import { BerthPostgresDriver } from './postgres-driver.js';

// What the driver says of a statement whose connection was lost, by where it was lost — on a
// pool whose client fails the statements a rule picks (no server: the real losses are in
// postgres-store.test.ts). `outcomeUnknown`: it may have taken effect (core then reads the
// database instead of undoing from memory); `uncommitted`: the server rolled the transaction back.

type Rule = (sql: string) => Error | undefined;

function driverWith(rule: Rule): BerthPostgresDriver {
  const client = {
    on() {},
    removeListener() {},
    release() {},
    escapeLiteral: (s: string) => `'${s}'`,
    async query(sql: string) {
      const error = rule(sql);
      if (error) throw error;
      return { command: 'SELECT', rowCount: 0, rows: [] };
    },
  };
  return new BerthPostgresDriver({ pool: { connect: async () => client, end: async () => undefined } as never, target: 'postgres://berth@db/berth', password: undefined });
}

const reset = (): Error => new Error('Connection terminated unexpectedly');
const adminShutdown = (): Error => Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' });

async function detailsOf(rule: Rule, run: (driver: BerthPostgresDriver, connection: DatabaseConnection) => Promise<unknown>): Promise<Record<string, unknown>> {
  const driver = driverWith(rule);
  const connection = await driver.acquireConnection();
  try {
    await run(driver, connection);
  } catch (error) {
    return (error as { details: Record<string, unknown> }).details;
  }
  throw new Error('the statement did not fail');
}

describe('a lost connection: what the driver says the statement may have done', () => {
  it('a COMMIT or a lone statement that went out: outcomeUnknown', async () => {
    const commit = await detailsOf(
      (sql) => (sql.includes('commit') ? reset() : undefined),
      async (driver, connection) => {
        await driver.beginTransaction(connection, {});
        await driver.commitTransaction(connection);
      },
    );
    expect(commit).toMatchObject({ outage: true, outcomeUnknown: true });
    const lone = await detailsOf((sql) => (sql.startsWith('select') ? reset() : undefined), (_driver, connection) => connection.executeQuery(CompiledQuery.raw('select 1')));
    expect(lone).toMatchObject({ outage: true, outcomeUnknown: true });
  });

  it('BEGIN, a statement inside the transaction, or the ROLLBACK after a failed COMMIT: nothing took effect', async () => {
    const begin = await detailsOf((sql) => (sql.startsWith('start transaction') ? reset() : undefined), (driver, connection) => driver.beginTransaction(connection, {}));
    expect(begin.outcomeUnknown).toBeUndefined();
    // Ended on purpose (a fast shutdown, pg_terminate_backend) during BEGIN: the whole transaction may run again.
    const endedAtBegin = await detailsOf((sql) => (sql.startsWith('start transaction') ? adminShutdown() : undefined), (driver, connection) => driver.beginTransaction(connection, {}));
    expect(endedAtBegin).toMatchObject({ endedOnPurpose: true, uncommitted: true });
    expect(endedAtBegin.outcomeUnknown).toBeUndefined();
    const inside = await detailsOf(
      (sql) => (sql.startsWith('select') ? reset() : undefined),
      async (driver, connection) => {
        await driver.beginTransaction(connection, {});
        await connection.executeQuery(CompiledQuery.raw('select 1'));
      },
    );
    expect(inside.outcomeUnknown).toBeUndefined();
    const rollback = await detailsOf(
      (sql) => (sql.includes('commit') ? Object.assign(new Error('could not serialize access'), { code: '40001' }) : sql === 'rollback' ? reset() : undefined),
      async (driver, connection) => {
        await driver.beginTransaction(connection, {});
        try {
          await driver.commitTransaction(connection);
        } catch {
          await driver.rollbackTransaction(connection);
        }
      },
    );
    expect(rollback.outcomeUnknown).toBeUndefined();
  });
});

describe('a server that answers but cannot write: an outage, not a failed write', () => {
  const refusing = (code: string, message: string) => (sql: string) => (sql.startsWith('update') ? Object.assign(new Error(message), { code }) : undefined);
  const update = (_driver: BerthPostgresDriver, connection: DatabaseConnection) => connection.executeQuery(CompiledQuery.raw('update volumes set status = $1', ['available']));

  it('disk full and out of memory: UNAVAILABLE, an outage the same write may get past later', async () => {
    const full = await detailsOf(refusing('53100', 'could not extend file "base/16384/16390": No space left on device'), update);
    expect(full).toMatchObject({ outage: true, retryable: true, reason: 'disk-full', errorCode: '53100' });
    const memory = await detailsOf(refusing('53200', 'out of memory'), update);
    expect(memory).toMatchObject({ outage: true, retryable: true, reason: 'out-of-memory' });
  });

  it('read-only (a standby, a demoted primary): an outage, not retried in place', async () => {
    const readOnly = await detailsOf(refusing('25006', 'cannot execute UPDATE in a read-only transaction'), update);
    expect(readOnly).toMatchObject({ outage: true, retryable: false, reason: 'read-only' });
    expect(readOnly.outcomeUnknown).toBeUndefined();
  });

  it('a refused write is not an outage: a constraint violation stays the driver\'s error for the dialect to read', async () => {
    const driver = driverWith(refusing('23505', 'duplicate key value violates unique constraint "volumes_name_key"'));
    const connection = await driver.acquireConnection();
    const error = await update(driver, connection).catch((e: unknown) => e);
    expect((error as { code?: string }).code).toBe('23505');
    expect((error as { details?: unknown }).details).toBeUndefined();
  });
});
