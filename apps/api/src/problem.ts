import type { Problem } from '@berth/client';
import { BerthError, HTTP_STATUS, type BerthErrorCode } from '@berth/core';

/** The media type of every error body. */
export const PROBLEM_CONTENT_TYPE = 'application/problem+json; charset=utf-8';

/** An RFC 9457 problem, with berth's stable `code` and the request id to find it in the log (the client's schema). */
export { zProblem, type Problem } from '@berth/client';

const TITLES: Record<BerthErrorCode, string> = {
  VALIDATION: 'The request is not valid',
  NOT_FOUND: 'Not found',
  CONFLICT: 'Conflict with the current state',
  INVALID_STATE: 'The resource is in the wrong state',
  UNPROCESSABLE: 'The request cannot be carried out',
  UNAUTHENTICATED: 'Authentication required',
  FORBIDDEN: 'Not allowed for this token',
  PERMISSION_DENIED: 'The server lacks a permission on its host',
  TIMEOUT: 'Deadline passed',
  CANCELLED: 'Cancelled',
  AUTH_FAILED: 'Storage authentication failed',
  HOST_UNSUPPORTED: 'The host lacks what this needs',
  COMMAND_FAILED: 'A host command failed',
  DRIVER_ERROR: 'A transport driver failed',
  BACKEND_ERROR: 'A volume backend failed',
  PLUGIN_ERROR: 'A plugin failed',
  CONFIG: 'Server configuration problem',
  UNAVAILABLE: 'A service berth depends on is unreachable',
  INTERNAL: 'Internal error',
};

/** The `type` URI of a code (stable; one per code). */
export function problemType(code: BerthErrorCode): string {
  return `urn:berth:error:${code.toLowerCase().replaceAll('_', '-')}`;
}

/** A problem from its parts. */
export function makeProblem(
  code: BerthErrorCode,
  detail: string,
  requestId: string,
  extra: { status?: number; hint?: string; operationId?: string; issues?: Problem['issues']; details?: Record<string, unknown> } = {},
): Problem {
  return {
    type: problemType(code),
    title: TITLES[code],
    status: extra.status ?? HTTP_STATUS[code],
    code,
    detail,
    requestId,
    ...(extra.hint === undefined ? {} : { hint: extra.hint }),
    ...(extra.operationId === undefined ? {} : { operationId: extra.operationId }),
    ...(extra.issues === undefined ? {} : { issues: extra.issues }),
    ...(extra.details === undefined || Object.keys(extra.details).length === 0 ? {} : { details: extra.details }),
  };
}

/**
 * A PostgreSQL store's outage reasons (`details.reason`, the store's own enum, never the server's
 * text) and what a caller is told of each, in words that name no server.
 */
const DATABASE_REFUSALS: Readonly<Record<string, string>> = {
  'disk-full': 'the disk holding its database is full',
  'out-of-memory': 'its database server is out of memory',
  'out-of-resources': 'its database server is out of resources',
  'io-error': 'its database server reported an I/O error',
  'read-only': 'its database is read-only',
  'lock-timeout': "another session held a lock on berth's tables too long",
  'statement-timeout': 'a database statement ran too long',
  'pool-busy': 'all of its connections to its database stayed busy',
};

/** What a store outage's 503 tells a client to wait (`Retry-After`) when it may retry. */
export const OUTAGE_RETRY_AFTER_SECONDS = 5;

/**
 * A store outage as a 503. Its words are the server's, not its paths or its database's address
 * (the log has the whole error under the request id): `disk-full`, `read-only`,
 * `database-locked`, or the database unreachable.
 */
function outageProblem(error: BerthError, requestId: string, operationId: string | undefined): Problem {
  const reason = typeof error.details.reason === 'string' ? error.details.reason : undefined;
  if (error.details.outcomeUnknown === true) {
    // Committed, but not known to be on disk (SQLite's sync failed): a retry could do it twice.
    return makeProblem(error.code, 'the server committed this change but could not make it durable: it may or may not stand', requestId, {
      status: 503,
      hint: `read it back before retrying (the change is probably there); the server's operator must restart it — its log has the cause under request id ${requestId}`,
      ...(operationId === undefined ? {} : { operationId }),
      details: { outcomeUnknown: true, ...(reason === undefined ? {} : { reason }) },
    });
  }
  // An UNAVAILABLE store is worth retrying unless it said otherwise (a read-only or failing PostgreSQL).
  const retryable = error.details.retryable === true || (error.code === 'UNAVAILABLE' && error.details.retryable !== false);
  const what =
    reason === 'read-only' && typeof error.details.store !== 'string'
      ? 'its database cannot be written (a read-only data directory)'
      : reason !== undefined && reason in DATABASE_REFUSALS
        ? DATABASE_REFUSALS[reason]
        : reason === 'database-locked'
          ? 'its database stayed locked by another process'
          : error.code === 'UNAVAILABLE'
            ? 'it cannot reach its database'
            : 'it cannot use its database';
  return makeProblem(error.code, `the server cannot do this now: ${what}`, requestId, {
    status: 503,
    hint: retryable
      ? `retry later; the server's log has the cause under request id ${requestId}`
      : `the server's operator must fix it; its log has the cause under request id ${requestId}`,
    ...(operationId === undefined ? {} : { operationId }),
    details: { ...(reason === undefined ? {} : { reason }), ...(retryable ? { retryAfterSeconds: OUTAGE_RETRY_AFTER_SECONDS } : {}) },
  });
}

/** The shape of errors fastify raises itself (body parser, router, limits). */
interface FrameworkError {
  statusCode?: unknown;
  code?: unknown;
  message?: unknown;
  name?: unknown;
}

const FRAMEWORK_DETAIL: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'the request body is too large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'send the body as application/json',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'the body is empty but its content-type says JSON; send {} or no content-type',
  // fastify reports a syntax error and a `__proto__`/`constructor.prototype` key alike.
  FST_ERR_CTP_INVALID_JSON_BODY: 'the body is not valid JSON, or it holds a forbidden key (__proto__ or constructor.prototype)',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'the content-length does not match the body',
  FST_ERR_BAD_URL: 'the URL is not valid (bad percent-encoding)',
  FST_ERR_ASYNC_CONSTRAINT: 'the request does not match any route',
};

/** Safe, JSON-able facts from a BerthError's details (ids, statuses, validation issues). */
function safeDetails(details: Record<string, unknown>): { issues?: Problem['issues']; details: Record<string, unknown> } {
  const out: Record<string, unknown> = {};
  let issues: Problem['issues'];
  for (const [key, value] of Object.entries(details)) {
    if (key === 'issues' && Array.isArray(value)) {
      issues = value
        .filter((i): i is { path: unknown; message: unknown } => typeof i === 'object' && i !== null)
        .map((i) => ({ path: Array.isArray(i.path) ? i.path.map(String) : [], message: String(i.message) }));
    } else if (key !== 'operationId' && (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' || value === null)) {
      out[key] = value;
    } else if (key !== 'operationId' && Array.isArray(value) && value.every((v) => typeof v === 'string')) {
      out[key] = value;
    }
  }
  return issues === undefined ? { details: out } : { issues, details: out };
}

/** A PostgreSQL store URL (`postgres://user@host:port/db`, as berth's store errors name it). */
const STORE_URL = /postgres(?:ql)?:\/\/[^\s,;)]*[^\s,;):.]/g;

/** `text` without the server's database addresses. */
function withoutStoreUrls(text: string): string {
  return text.replace(STORE_URL, "the server's database");
}

/**
 * The problem for anything a request threw. BerthErrors keep their code, message and hint (they
 * are written to be shown); fastify's own 4xx errors get a fixed sentence per code (their messages
 * can echo the body); anything else is INTERNAL with no detail at all: it goes to the log only.
 */
export function toProblem(error: unknown, requestId: string): Problem {
  if (BerthError.is(error)) {
    const operationId = typeof error.details.operationId === 'string' ? error.details.operationId : undefined;
    if (error.code === 'INTERNAL') {
      return makeProblem('INTERNAL', `an internal error happened; the server log has it under request id ${requestId}`, requestId, {
        ...(operationId === undefined ? {} : { operationId }),
      });
    }
    const status = HTTP_STATUS[error.code];
    const safe = status < 500 ? safeDetails(error.details) : { details: {} };
    if (typeof error.details.store === 'string') {
      // The server's own database failed: where it is (user, host, port, name) and how the
      // server is configured are its operator's business, not a caller's — an agent's least of all
      // (agents never reach the database). The log has the whole error under the request id.
      // A server that answers but refuses (its disk full, a lock held too long): said in the
      // outage's fixed words. Reported as "cannot reach", a full disk sent operators to the
      // network (found by an explorer).
      if (error.details.outage === true && typeof error.details.reason === 'string' && error.details.reason in DATABASE_REFUSALS) {
        return outageProblem(error, requestId, operationId);
      }
      const unreachable = error.code === 'UNAVAILABLE';
      return makeProblem(error.code, `the server ${unreachable ? 'cannot reach its database' : 'cannot use its database'}`, requestId, {
        hint: unreachable
          ? `retry later; the server's log has the cause under request id ${requestId}`
          : `the server's operator must fix its database settings; its log has the cause under request id ${requestId}`,
        ...(operationId === undefined ? {} : { operationId }),
        ...(error.details.outage === true ? { status: 503 } : {}),
      });
    }
    // The server's own database could not be written (its disk full, its data dir read-only, the
    // database locked): the server's failure, not the request's — 503, with Retry-After when the
    // same request may succeed later. A 422 (what HOST_UNSUPPORTED and PERMISSION_DENIED map to)
    // told clients and balancers not to retry, nor to go elsewhere (found by an explorer).
    if (error.details.outage === true) return outageProblem(error, requestId, operationId);
    // A database failure inside another error's words (a rollback the database stopped): its
    // address goes, the rest stays.
    return makeProblem(error.code, withoutStoreUrls(error.message), requestId, {
      ...(error.hint === undefined ? {} : { hint: withoutStoreUrls(error.hint) }),
      ...(operationId === undefined ? {} : { operationId }),
      ...safe,
    });
  }
  const framework = (typeof error === 'object' && error !== null ? error : {}) as FrameworkError;
  const status = typeof framework.statusCode === 'number' ? framework.statusCode : 500;
  if (status >= 400 && status < 500) {
    const code = typeof framework.code === 'string' ? framework.code : '';
    let detail = FRAMEWORK_DETAIL[code];
    if (detail === undefined && framework.name === 'SyntaxError') {
      const message = typeof framework.message === 'string' ? framework.message : '';
      detail = /prototype|constructor/i.test(message)
        ? 'the body holds a forbidden key (__proto__ or constructor.prototype)'
        : 'the body is not valid JSON';
    }
    const berthCode: BerthErrorCode = status === 404 ? 'NOT_FOUND' : status === 401 ? 'UNAUTHENTICATED' : status === 403 ? 'FORBIDDEN' : 'VALIDATION';
    return makeProblem(berthCode, detail ?? `the request is malformed${code ? ` (${code})` : ''}`, requestId, { status });
  }
  return makeProblem('INTERNAL', `an internal error happened; the server log has it under request id ${requestId}`, requestId);
}

/** The problem, and its status line, for an error the HTTP parser raised before a request existed. */
export function clientErrorProblem(errorCode: string | undefined, requestId: string): Problem {
  if (errorCode === 'HPE_HEADER_OVERFLOW') {
    return makeProblem('VALIDATION', 'the request headers are too large', requestId, {
      status: 431,
      hint: 'send fewer or shorter headers (16 KiB in all at most)',
    });
  }
  if (errorCode === 'ERR_HTTP_REQUEST_TIMEOUT') {
    return makeProblem('TIMEOUT', 'the request did not arrive in time', requestId, { status: 408, hint: 'send the whole request at once, then retry' });
  }
  return makeProblem('VALIDATION', 'the request is not valid HTTP/1.1', requestId, { hint: 'check the request line, the headers and the body framing' });
}
