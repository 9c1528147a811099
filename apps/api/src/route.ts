import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from '@berth/core/zod';
import { BerthError, parseWith } from '@berth/core';
import { requireRole, scopeOf } from './access.js';
import type { Principal, Role, TokenTable } from './auth.js';
import { IDEMPOTENCY_KEY, idempotencyScope, requestFingerprint, type IdempotencyCache } from './idempotency.js';
import { zEmptyBody } from './http-schemas.js';

/** HTTP methods the API uses. */
export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'DELETE';

/** What a handler answers: a status, a body (JSON unless `contentType` says otherwise) and headers. */
export interface RouteReply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
  contentType?: string;
}

/** One documented response of a route (201 and 202 are documented with `Location`, 503 with `Retry-After`). */
export interface ResponseSpec {
  description: string;
  schema?: z.ZodType;
  contentType?: string;
  /** It carries `Retry-After`. */
  retryAfter?: boolean;
  /** It carries `Preference-Applied` (an answer to `Prefer: wait=N`). */
  preferenceApplied?: boolean;
}

/** What a public route's handler gets: the parsed parameters, query and body. */
export interface PublicContext<P, Q, B> {
  params: P;
  query: Q;
  body: B;
  request: FastifyRequest;
  /**
   * A signal that aborts when the client goes away (its connection closes before the answer is
   * sent) or the app shuts down: what a handler that waits (a long-poll) stops on.
   */
  abandoned(): AbortSignal;
}

/** What an authenticated route's handler gets: also who asked, and the Idempotency-Key. */
export interface RouteContext<P, Q, B> extends PublicContext<P, Q, B> {
  principal: Principal;
  idempotencyKey: string | undefined;
  /** `Prefer: wait=N` in ms on a route that takes it (`preferWait`); 0 when not asked. */
  preferredWaitMs: number;
}

/**
 * How a route takes an `Idempotency-Key`: `operation` hands it to the service (attach/detach keep it
 * in the operations table); `cache` replays the first reply from the app's bounded memory.
 */
export type IdempotencyMode = 'operation' | 'cache';

interface RouteBase<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType> {
  method: HttpMethod;
  /** OpenAPI-style path: `/v1/volumes/{volume}`. */
  path: string;
  operationId: string;
  summary: string;
  description?: string;
  tag: string;
  params: P;
  query: Q;
  /** Absent: the request must have no body (or `{}`). */
  body?: B;
  /** With `body`: a request without one is read as `{}` (attach/detach with every default). */
  optionalBody?: boolean;
  idempotency?: IdempotencyMode;
  /** It takes `Prefer: wait=N` (RFC 7240): wait up to N s for the operation it starts to end. */
  preferWait?: boolean;
  responses: Record<number, ResponseSpec>;
}

/** A route anyone may call (health, readiness, the API description). */
export interface PublicRoute<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType> extends RouteBase<P, Q, B> {
  access: 'public';
  handler(ctx: PublicContext<z.output<P>, z.output<Q>, z.output<B>>): Promise<RouteReply>;
}

/** A route that needs a bearer token with one of `access`'s roles. */
export interface AuthRoute<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType> extends RouteBase<P, Q, B> {
  access: readonly Role[];
  handler(ctx: RouteContext<z.output<P>, z.output<Q>, z.output<B>>): Promise<RouteReply>;
}

/** A route with its types erased, as the registry keeps it. */
export type AnyRoute = PublicRoute<z.ZodType, z.ZodType, z.ZodType> | AuthRoute<z.ZodType, z.ZodType, z.ZodType>;

/** Define an authenticated route (typed handler, erased for the registry). */
export function route<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType = typeof zEmptyBody>(definition: AuthRoute<P, Q, B>): AnyRoute {
  return definition as unknown as AnyRoute;
}

/** Define a public route. */
export function publicRoute<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType = typeof zEmptyBody>(definition: PublicRoute<P, Q, B>): AnyRoute {
  return definition as unknown as AnyRoute;
}

/** `/v1/volumes/{volume}` → `/v1/volumes/:volume`. */
export function fastifyPath(path: string): string {
  return path.replace(/\{([A-Za-z0-9_]+)\}/g, ':$1');
}

/** What registering routes needs from the app. */
export interface RouteRegistrar {
  tokens: TokenTable;
  idempotency: IdempotencyCache;
  /** The project of requests that name none: part of an idempotent reply's scope. */
  defaultProject: string;
  /** Aborted when the app shuts down (see `PublicContext.abandoned`). */
  shutdown: AbortSignal;
}

const principals = new WeakMap<FastifyRequest, Principal>();

function parseBody(route: AnyRoute, body: unknown): unknown {
  if (route.body !== undefined) return parseWith(route.body, body === undefined && route.optionalBody === true ? {} : body, 'body');
  if (body === undefined || body === null) return {};
  return parseWith(zEmptyBody, body, 'body (this request takes none)');
}

function idempotencyKeyOf(request: FastifyRequest): string | undefined {
  const raw = request.headers['idempotency-key'];
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || !IDEMPOTENCY_KEY.test(raw)) {
    throw new BerthError('VALIDATION', 'Idempotency-Key must be 1 to 200 visible ASCII characters, sent once', {
      hint: 'use a random UUID per distinct request',
    });
  }
  return raw;
}

const PREFER_WAIT = /^wait\s*=\s*"?(\d+)"?$/i;

// Any longer wait is the server's maximum anyway (capped by the caller); a huge one was ignored.
const PREFER_WAIT_MAX_S = 86_400;

/**
 * The `wait` of a `Prefer` header in ms (RFC 7240: `Prefer: wait=10`, seconds, possibly beside other
 * preferences, in one header or several); 0 when there is none. A preference the server does not
 * understand, or a malformed one, is ignored as the RFC says, not refused.
 */
export function preferredWaitMs(header: string | string[] | undefined): number {
  const values = header === undefined ? [] : Array.isArray(header) ? header : [header];
  for (const value of values) {
    for (const preference of value.split(',')) {
      // `token=value; parameters`: only the preference itself counts.
      const match = PREFER_WAIT.exec((preference.split(';')[0] ?? '').trim());
      if (match) return Math.min(Number(match[1]), PREFER_WAIT_MAX_S) * 1000;
    }
  }
  return 0;
}

/**
 * A signal that aborts once the client is gone or the app shuts down. The response's `close` comes
 * when the connection closes before the answer was sent (and, harmlessly, after it was sent).
 */
function abandonedSignal(reply: FastifyReply, shutdown: AbortSignal): AbortSignal {
  const gone = new AbortController();
  const raw = reply.raw;
  if (shutdown.aborted || raw.destroyed || raw.socket?.destroyed === true) {
    gone.abort();
    return gone.signal;
  }
  const abort = (): void => gone.abort();
  shutdown.addEventListener('abort', abort, { once: true });
  raw.once('close', () => {
    shutdown.removeEventListener('abort', abort);
    gone.abort();
  });
  return gone.signal;
}

async function send(reply: FastifyReply, result: RouteReply): Promise<FastifyReply> {
  for (const [name, value] of Object.entries(result.headers ?? {})) void reply.header(name, value);
  void reply.code(result.status);
  if (result.contentType !== undefined) void reply.type(result.contentType);
  return result.body === undefined ? reply.send() : reply.send(result.body);
}

/**
 * Register routes: an `onRequest` hook authenticates and checks the role (401/403 come before the
 * body is even read), then the handler parses path, query and body with the route's zod schemas
 * (400 with every issue), applies the Idempotency-Key and calls the route.
 */
export function registerRoutes(app: FastifyInstance, routes: readonly AnyRoute[], registrar: RouteRegistrar): void {
  for (const definition of routes) {
    const access = definition.access;
    app.route({
      method: definition.method,
      url: fastifyPath(definition.path),
      ...(access === 'public'
        ? {}
        : {
            onRequest: async (request: FastifyRequest) => {
              const principal = registrar.tokens.authenticate(request.headers.authorization);
              requireRole(principal, access);
              principals.set(request, principal);
            },
          }),
      handler: async (request, reply) => {
        const params = parseWith(definition.params, request.params ?? {}, 'path parameters');
        const query = parseWith(definition.query, request.query ?? {}, 'query');
        const body = parseBody(definition, request.body);
        const abandoned = (): AbortSignal => abandonedSignal(reply, registrar.shutdown);
        if (definition.access === 'public') {
          return send(reply, await definition.handler({ params, query, body, request, abandoned }));
        }
        const principal = principals.get(request);
        if (principal === undefined) throw new BerthError('UNAUTHENTICATED', 'this request needs a bearer token');
        const key = definition.idempotency === undefined ? undefined : idempotencyKeyOf(request);
        const preferredWait = definition.preferWait === true ? preferredWaitMs(request.headers.prefer) : 0;
        const ctx: RouteContext<unknown, unknown, unknown> = { params, query, body, request, abandoned, principal, idempotencyKey: key, preferredWaitMs: preferredWait };
        if (definition.idempotency !== 'cache' || key === undefined) return send(reply, await definition.handler(ctx));

        // Keyed by the token's identity and the project the request acts in (a member naming
        // another project is refused here, before anything is replayed).
        const requested = (query as { projectId?: unknown }).projectId;
        const scope = idempotencyScope(principal.tokenId, scopeOf(principal, typeof requested === 'string' ? requested : undefined, registrar.defaultProject).projectId);
        const fingerprint = requestFingerprint(definition.method, request.url, body);
        const decision = registrar.idempotency.begin(scope, key, fingerprint);
        if (decision.kind === 'replay') {
          return send(reply, { ...decision.reply, headers: { ...decision.reply.headers, 'idempotent-replayed': 'true' } });
        }
        let result: RouteReply;
        try {
          result = await definition.handler(ctx);
        } catch (error) {
          registrar.idempotency.abandon(scope, key);
          throw error;
        }
        if (result.status < 300) {
          registrar.idempotency.complete(scope, key, fingerprint, { status: result.status, body: result.body, headers: result.headers ?? {} });
        } else {
          registrar.idempotency.abandon(scope, key);
        }
        return send(reply, result);
      },
    });
  }
}
