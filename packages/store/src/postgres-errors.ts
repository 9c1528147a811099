import { BerthError } from '@berth/core';

/** Node socket errors that mean the server cannot be reached. */
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  'ENOENT',
]);

/** SQLSTATEs that mean the server is there but will not serve this connection now. */
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300']);

function codeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The error and its causes, outermost first (bounded, in case of a cycle). */
export function causeChain(error: unknown): unknown[] {
  const chain: unknown[] = [];
  let current: unknown = error;
  while (current !== undefined && current !== null && chain.length < 10) {
    chain.push(current);
    current = (current as { cause?: unknown }).cause;
  }
  return chain;
}

/** Whether `error` means the connection to PostgreSQL failed or was lost (not a failed statement). */
export function isPostgresConnectionError(error: unknown): boolean {
  const code = codeOf(error);
  if (code !== undefined && (NETWORK_CODES.has(code) || UNAVAILABLE_SQLSTATES.has(code) || code.startsWith('08'))) return true;
  // pg's own messages for a connection that ended, or a pool that timed out connecting.
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Connection ended/i.test(
    messageOf(error),
  );
}

/** The bounds a store's pool was opened with (`openPostgresStore`), for the messages that name them. */
export interface PostgresBounds {
  lockTimeoutMs: number;
  statementTimeoutMs: number;
  poolSize: number;
  connectTimeoutMs: number;
}

/**
 * SQLSTATEs with which a reachable server refuses a write it could take later: its disk full
 * (`53100`), out of memory or other resources (`53200`, `53000`), an I/O error (`58030`), or read-only
 * (`25006`: a standby, a failover's demoted primary, `default_transaction_read_only`). The statement
 * did not take effect (its transaction is aborted); the store is out, not the write wrong.
 */
const REFUSED_SQLSTATES: ReadonlyMap<string, { reason: string; retryable: boolean }> = new Map([
  ['53100', { reason: 'disk-full', retryable: true }],
  ['53200', { reason: 'out-of-memory', retryable: true }],
  ['53000', { reason: 'out-of-resources', retryable: true }],
  ['58030', { reason: 'io-error', retryable: false }],
  ['25006', { reason: 'read-only', retryable: false }],
  // The store's own bounds (`lock_timeout`, `statement_timeout`): another session held a lock on
  // berth's tables, or the server was too slow. The statement did not take effect.
  ['55P03', { reason: 'lock-timeout', retryable: true }],
  ['57014', { reason: 'statement-timeout', retryable: true }],
]);

const seconds = (ms: number | undefined): string => (ms === undefined ? 'its bound' : `${ms / 1000} s`);

/** What to do about a refusal, by its reason. */
function refusalHint(reason: string, bounds: PostgresBounds | undefined): string {
  switch (reason) {
    case 'read-only':
      return 'the server is read-only (a standby, or default_transaction_read_only): point the store URL at the primary';
    case 'lock-timeout':
      return `another session held a lock on berth's tables for longer than the store's lock timeout (${seconds(bounds?.lockTimeoutMs)}): find it in pg_locks and pg_stat_activity (an open transaction, a LOCK TABLE), end it, then retry`;
    case 'statement-timeout':
      return `a statement ran longer than the store's statement timeout (${seconds(bounds?.statementTimeoutMs)}): check the server's load and pg_stat_activity, then retry`;
    default:
      return 'free space or memory on the PostgreSQL server (its logs say which), then retry';
  }
}

/**
 * Every pooled connection stayed busy for the whole connect wait: the server answers, but the
 * statements on them do not end (a lock, a stalled disk). An outage, UNAVAILABLE.
 */
export function postgresPoolBusy(target: string, bounds: PostgresBounds): BerthError {
  return new BerthError('UNAVAILABLE', `the berth database at ${target} answers, but all ${bounds.poolSize} of this process's connections to it stayed busy for ${seconds(bounds.connectTimeoutMs)}`, {
    hint: `statements are waiting on the server (a lock held by another session, a slow disk): see pg_stat_activity; each gives up after the store's lock timeout (${seconds(bounds.lockTimeoutMs)}) or statement timeout (${seconds(bounds.statementTimeoutMs)})`,
    details: { store: target, reason: 'pool-busy', retryable: true, outage: true },
  });
}

/**
 * The server answered but cannot write now (`REFUSED_SQLSTATES`): an UNAVAILABLE outage, as
 * SQLite's disk full and read-only are (core's `isStoreOutage`: an undo that meets it leaves the
 * operation to recovery instead of settling it half rolled back). Undefined for any other error.
 */
export function postgresServerRefusal(error: unknown, target: string, password: string | undefined, bounds?: PostgresBounds): BerthError | undefined {
  const code = codeOf(error);
  const refused = code === undefined ? undefined : REFUSED_SQLSTATES.get(code);
  if (refused === undefined) return undefined;
  const reason = scrub(messageOf(error), password);
  // A bound the store set cuts reads as well as writes short.
  const what = refused.reason === 'lock-timeout' || refused.reason === 'statement-timeout' ? 'gave a statement up' : 'cannot write now';
  return new BerthError('UNAVAILABLE', `the berth database at ${target} ${what}: ${reason}`, {
    hint: refusalHint(refused.reason, bounds),
    details: { store: target, errorCode: code, reason: refused.reason, retryable: refused.retryable, outage: true },
  });
}

/** Replace every occurrence of `secret` in `text` (drivers should never echo it; this makes sure). */
function scrub(text: string, secret: string | undefined): string {
  return secret === undefined || secret === '' ? text : text.split(secret).join('***');
}

/**
 * A BerthError for a failure to connect or a lost connection: UNAVAILABLE when the server cannot
 * be reached, CONFIG when it refuses the credentials or the database does not exist. `target`
 * is the redacted URL; the password never appears, and the driver's error is not kept as cause
 * (its fields are copied as text instead).
 */
export function postgresConnectionFailure(error: unknown, target: string, password: string | undefined, extra: Record<string, unknown> = {}): BerthError {
  const code = codeOf(error);
  const reason = scrub(messageOf(error), password);
  const details = { store: target, reason, ...(code === undefined ? {} : { errorCode: code }) };
  if (code === '28P01' || code === '28000') {
    return new BerthError('CONFIG', `PostgreSQL at ${target} refused the login: ${reason}`, {
      hint: 'check the user and password in the store URL (or PGPASSWORD / ~/.pgpass) and pg_hba.conf on the server',
      details,
    });
  }
  if (code === '3D000') {
    return new BerthError('CONFIG', `PostgreSQL at ${target}: ${reason}`, {
      hint: 'create the database first (createdb, or CREATE DATABASE) or fix its name in the store URL',
      details,
    });
  }
  // An outage (`isStoreOutage`): the write may work once the server is back.
  return new BerthError('UNAVAILABLE', `cannot reach the berth database at ${target}: ${reason}`, {
    hint: 'check that PostgreSQL is running and reachable at that address (pg_isready), then retry; the store URL comes from --store, BERTH_STORE_URL or the config file',
    details: { ...details, outage: true, ...extra },
  });
}

/**
 * The server ended the connection on purpose: SQLSTATE 57P01 *with* "due to administrator command"
 * (`pg_terminate_backend`, or a fast shutdown, which ends the sessions and then writes its shutdown
 * checkpoint). No committed transaction is lost with it, deferred-durable ones included. The same
 * code also says "due to unexpected postmaster exit" (a crash: the last deferred commits may be
 * gone) and a standby's recovery conflict; those, 57P02 and a connection that just broke are not it.
 */
export function postgresAdminShutdown(error: unknown): boolean {
  return error !== undefined && codeOf(error) === '57P01' && /due to administrator command/i.test(messageOf(error));
}

/** pg refused the query without sending it: its client's connection had already failed. */
export function postgresQueryNotSent(error: unknown): boolean {
  return /is not queryable/i.test(messageOf(error));
}

/**
 * Whether `error` is a lost connection that ended a transaction before its COMMIT was sent (the
 * driver marks it): the server rolled the transaction back, so running it again is safe.
 */
export function lostBeforeCommit(error: unknown): error is BerthError {
  return BerthError.is(error) && error.details.uncommitted === true;
}

/** Whether `error` (or a cause) is PostgreSQL aborting a transaction that lost a race. */
export function isRetryableTransactionError(error: unknown): boolean {
  return causeChain(error).some((link) => {
    const code = codeOf(link);
    return code === '40001' || code === '40P01';
  });
}
