import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { zWaitDuration } from './duration.js';
import { IdempotencyCache } from './idempotency.js';
import { parseListenAddress } from './listen-address.js';
import { toProblem } from './problem.js';
import { preferredWaitMs } from './route.js';

describe('?wait= durations', () => {
  it('reads seconds, milliseconds and minutes, and nothing else', () => {
    expect(zWaitDuration.parse('30s')).toBe(30_000);
    expect(zWaitDuration.parse('30')).toBe(30_000);
    expect(zWaitDuration.parse('250ms')).toBe(250);
    expect(zWaitDuration.parse('2m')).toBe(120_000);
    for (const bad of ['', '1h', '-1s', '1.5s', '30 s', '99999999s', 's']) expect(zWaitDuration.safeParse(bad).success).toBe(false);
  });
});

describe('Prefer: wait', () => {
  it('reads `wait=N` seconds among other preferences, and ignores what it does not understand', () => {
    expect(preferredWaitMs(undefined)).toBe(0);
    expect(preferredWaitMs('wait=30')).toBe(30_000);
    expect(preferredWaitMs('respond-async, wait=5')).toBe(5_000);
    expect(preferredWaitMs(['handling=lenient', 'WAIT = "2"; x=y'])).toBe(2_000);
    expect(preferredWaitMs('wait=soon')).toBe(0);
    expect(preferredWaitMs('wait=-1')).toBe(0);
    expect(preferredWaitMs('x; wait=9')).toBe(0);
    // A huge wait is a long one (the route caps it at its maximum), not ignored.
    expect(preferredWaitMs('wait=99999999999999999999')).toBe(86_400_000);
  });
});

describe('listen addresses', () => {
  it('parses host:port and [v6]:port', () => {
    expect(parseListenAddress('127.0.0.1:8776')).toEqual({ host: '127.0.0.1', port: 8776 });
    expect(parseListenAddress('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseListenAddress('localhost:80')).toEqual({ host: 'localhost', port: 80 });
    for (const bad of ['8776', '127.0.0.1', '127.0.0.1:99999', ':80', 'a b:1', '::1:80']) {
      expect(() => parseListenAddress(bad)).toThrow(BerthError);
    }
  });
});

describe('problems', () => {
  it('keep a BerthError\'s code, message and hint, but hide INTERNAL details and causes', () => {
    const conflict = toProblem(new BerthError('CONFLICT', 'volume v is in-use', { hint: 'detach it', details: { actual: 'in-use', nested: { x: 1 } } }), 'r1');
    expect(conflict).toEqual({
      type: 'urn:berth:error:conflict',
      title: 'Conflict with the current state',
      status: 409,
      code: 'CONFLICT',
      detail: 'volume v is in-use',
      requestId: 'r1',
      hint: 'detach it',
      details: { actual: 'in-use' },
    });
    const internal = toProblem(new BerthError('INTERNAL', 'sqlite said: /var/lib/berth/berth.db is locked'), 'r2');
    expect(internal.detail).not.toContain('sqlite');
    expect(toProblem(new TypeError('x is undefined'), 'r3')).toMatchObject({ status: 500, code: 'INTERNAL' });
    expect(toProblem(new TypeError('x is undefined'), 'r3').detail).not.toContain('undefined');
  });

  it("do not tell a caller where the server's database is, nor how the server is configured", () => {
    const target = 'postgres://berth@10.0.0.5:5432/berth';
    const outage = new BerthError('UNAVAILABLE', `cannot reach the berth database at ${target}: connect ECONNREFUSED 10.0.0.5:5432`, {
      hint: 'check that PostgreSQL is running; the store URL comes from --store, BERTH_STORE_URL or the config file',
      details: { store: target, outage: true },
    });
    expect(toProblem(outage, 'r9')).toEqual({
      type: 'urn:berth:error:unavailable',
      title: 'A service berth depends on is unreachable',
      status: 503,
      code: 'UNAVAILABLE',
      detail: 'the server cannot reach its database',
      requestId: 'r9',
      hint: "retry later; the server's log has the cause under request id r9",
    });
    // A server that answers but refuses: why, in fixed words, not "cannot reach" (a full disk sent
    // operators to the network), still without the address or the server's own text.
    const pgFull = toProblem(new BerthError('UNAVAILABLE', `the berth database at ${target} cannot write now: could not extend file "base/16384/16420": No space left on device`, {
      details: { store: target, errorCode: '53100', reason: 'disk-full', retryable: true, outage: true },
    }), 'r11');
    expect(pgFull).toMatchObject({ status: 503, code: 'UNAVAILABLE', detail: 'the server cannot do this now: the disk holding its database is full', details: { reason: 'disk-full', retryAfterSeconds: 5 } });
    const pgLock = toProblem(new BerthError('UNAVAILABLE', `the berth database at ${target} cannot write now: canceling statement due to lock timeout`, {
      details: { store: target, errorCode: '55P03', reason: 'lock-timeout', retryable: true, outage: true },
    }), 'r15');
    expect(pgLock).toMatchObject({ status: 503, detail: "the server cannot do this now: another session held a lock on berth's tables too long" });
    const pgStandby = toProblem(new BerthError('UNAVAILABLE', `the berth database at ${target} cannot write now: cannot execute INSERT in a read-only transaction`, {
      details: { store: target, errorCode: '25006', reason: 'read-only', retryable: false, outage: true },
    }), 'r16');
    expect(pgStandby).toMatchObject({ status: 503, detail: 'the server cannot do this now: its database is read-only' });
    // Not worth retrying where it is: no Retry-After, and the operator is told to fix it.
    expect(pgStandby.details).not.toHaveProperty('retryAfterSeconds');
    expect(pgStandby.hint).toMatch(/^the server's operator must fix it/);
    for (const problem of [pgFull, pgLock, pgStandby]) expect(JSON.stringify(problem)).not.toMatch(/10\.0\.0\.5|base\/16384|No space/);
    const login = toProblem(new BerthError('CONFIG', `PostgreSQL at ${target} refused the login: password authentication failed`, { details: { store: target } }), 'r10');
    expect(login).toMatchObject({ code: 'CONFIG', detail: 'the server cannot use its database' });
    expect(JSON.stringify(login)).not.toContain('10.0.0.5');
    expect(login.hint).toMatch(/^the server's operator must fix its database settings/);
    // A SQLite store's outage (its disk full, its data dir read-only): 503, not the 422 of
    // HOST_UNSUPPORTED / PERMISSION_DENIED, in the server's words without its paths.
    const full = toProblem(new BerthError('HOST_UNSUPPORTED', 'the disk holding the berth database (/var/lib/berth) is full', {
      hint: 'free space on that file system (see `df -h /var/lib/berth`)',
      details: { filename: '/var/lib/berth/berth.db', reason: 'disk-full', retryable: true, outage: true },
    }), 'r12');
    expect(full).toMatchObject({ status: 503, code: 'HOST_UNSUPPORTED', detail: 'the server cannot do this now: the disk holding its database is full', details: { reason: 'disk-full', retryAfterSeconds: 5 } });
    expect(JSON.stringify(full)).not.toContain('/var/lib/berth');
    const readOnly = toProblem(new BerthError('PERMISSION_DENIED', 'the berth database /d/berth.db cannot be written', {
      details: { filename: '/d/berth.db', reason: 'read-only', retryable: false, outage: true },
    }), 'r13');
    expect(readOnly).toMatchObject({ status: 503, details: { reason: 'read-only' } });
    expect(readOnly.details).not.toHaveProperty('retryAfterSeconds');
    expect(readOnly.hint).toMatch(/^the server's operator must fix it/);
    // A commit whose sync failed: no Retry-After (a retry could do it twice), and it says so.
    const unsynced = toProblem(new BerthError('UNAVAILABLE', 'committed a change but could not flush it', {
      details: { filename: '/d/berth.db', reason: 'sync-failed', outage: true, outcomeUnknown: true },
    }), 'r14');
    expect(unsynced).toMatchObject({ status: 503, details: { outcomeUnknown: true, reason: 'sync-failed' } });
    expect(unsynced.details).not.toHaveProperty('retryAfterSeconds');
    expect(unsynced.hint).toMatch(/^read it back before retrying/);
    // Inside another error's words (a rollback the database stopped): the address goes, the rest stays.
    const wrapped = toProblem(new BerthError('TIMEOUT', `the device never appeared (and the database failed before the rollback could finish: cannot reach the berth database at ${target}: ECONNREFUSED)`, { hint: 'recovery finishes it' }), 'r11');
    expect(wrapped.detail).toBe("the device never appeared (and the database failed before the rollback could finish: cannot reach the berth database at the server's database: ECONNREFUSED)");
  });

  it('turn fastify\'s own 4xx errors into fixed sentences', () => {
    const tooLarge = toProblem(Object.assign(new Error('Request body is too large'), { statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' }), 'r');
    expect(tooLarge).toMatchObject({ status: 413, code: 'VALIDATION', detail: 'the request body is too large' });
    const echo = toProblem(Object.assign(new SyntaxError('Unexpected token s in "secret"'), { statusCode: 400 }), 'r');
    expect(echo.detail).not.toContain('secret');
  });
});

describe('IdempotencyCache', () => {
  it('replays a finished reply, refuses another request and a concurrent one, forgets a failed one', () => {
    const cache = new IdempotencyCache(2);
    expect(cache.begin('t', 'k', 'f1')).toEqual({ kind: 'run' });
    expect(() => cache.begin('t', 'k', 'f1')).toThrow(expect.objectContaining({ code: 'CONFLICT' }));
    cache.complete('t', 'k', 'f1', { status: 201, body: { id: 1 }, headers: {} });
    expect(cache.begin('t', 'k', 'f1')).toEqual({ kind: 'replay', reply: { status: 201, body: { id: 1 }, headers: {} } });
    expect(() => cache.begin('t', 'k', 'f2')).toThrow(expect.objectContaining({ code: 'UNPROCESSABLE' }));
    expect(cache.begin('other-token', 'k', 'f2')).toEqual({ kind: 'run' });
    cache.abandon('other-token', 'k');
    expect(cache.begin('other-token', 'k', 'f2')).toEqual({ kind: 'run' });
    // Bounded: the oldest key is forgotten.
    cache.begin('t', 'k2', 'f');
    cache.begin('t', 'k3', 'f');
    expect(cache.begin('t', 'k', 'f9')).toEqual({ kind: 'run' });
  });
});
