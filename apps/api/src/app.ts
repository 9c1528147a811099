import { randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { STATUS_CODES, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Writable } from 'node:stream';
import fastifySwagger from '@fastify/swagger';
import fastifySwaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import type { BerthService } from '@berth/core';
import type { TokenTable } from './auth.js';
import { IdempotencyCache, OperationKeyLog } from './idempotency.js';
import { API_REDACT_PATHS, CENSOR, redactDeep, serializeError, serializeRequest } from './log-redaction.js';
import { ApiMetrics } from './metrics.js';
import { buildOpenApi, type OpenApiDocument } from './openapi.js';
import { OperationTracker } from './operation-tracker.js';
import { clientErrorProblem, makeProblem, PROBLEM_CONTENT_TYPE, toProblem, type Problem } from './problem.js';
import type { AgentTimings, RouteDeps } from './route-deps.js';
import { registerRoutes, type AnyRoute } from './route.js';
import { agentRoutes } from './routes/agent.js';
import { attachmentRoutes } from './routes/attachments.js';
import { hostRoutes } from './routes/hosts.js';
import { operationRoutes } from './routes/operations.js';
import { reconcileRoutes } from './routes/reconcile.js';
import { serverRoutes } from './routes/servers.js';
import { systemRoutes } from './routes/system.js';
import { volumeRoutes } from './routes/volumes.js';
import { API_VERSION } from './version.js';

/** Where the interactive API docs (Swagger UI) are served. */
export const DOCS_PATH = '/docs';

/** Default request body limit: every berth request is small. */
export const DEFAULT_BODY_LIMIT = 64 * 1024;
/** Default upper bound of `?wait=`. */
export const DEFAULT_MAX_WAIT_MS = 60_000;

/** How the app logs: not at all, or pino JSON at `level` (to `stream`, default stdout). */
export type ApiLogOptions = false | { level: string; stream?: Writable };

/** Options of `createApiApp`. */
export interface ApiAppOptions {
  /** The service every route calls (from `openBerth`). The app never closes it. */
  service: BerthService;
  tokens: TokenTable;
  /** The project of requests that name none (the config's `defaultProject`). */
  defaultProject: string;
  logger?: ApiLogOptions;
  bodyLimit?: number;
  maxWaitMs?: number;
  /** Export prom-client's process metrics too (default true). */
  defaultMetrics?: boolean;
  /** How many finished operations' outcomes and idempotent replies to remember (default 1000 each). */
  memoryCapacity?: number;
  /** The agent protocol's timings (the config's `agent`; default 25 s wait, offline after 45 s). */
  agent?: AgentTimings;
}

/** A built app: fastify plus the parts tests and the server look at. */
export interface ApiApp {
  fastify: FastifyInstance;
  metrics: ApiMetrics;
  tracker: OperationTracker;
  openapi: OpenApiDocument;
  routes: readonly AnyRoute[];
  /** Listen on `host:port` (port 0: any free one); resolves to the base URL. */
  listen(host: string, port: number): Promise<string>;
  /**
   * Stop: refuse new requests (503), end long-polls, let requests in flight finish, close the
   * listener, then wait for every operation this app started. The service stays open.
   */
  close(): Promise<void>;
}

/** What a 503 during shutdown tells a client (`Retry-After`): about the time a restart takes. */
export const SHUTDOWN_RETRY_AFTER_SECONDS = 5;

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function sendProblem(reply: FastifyReply, problem: Problem): FastifyReply {
  void reply.header('x-request-id', problem.requestId);
  if (problem.code === 'UNAUTHENTICATED') void reply.header('www-authenticate', 'Bearer');
  const retryAfter = problem.details?.retryAfterSeconds;
  if (typeof retryAfter === 'number') void reply.header('retry-after', String(retryAfter));
  return reply.code(problem.status).type(PROBLEM_CONTENT_TYPE).send(problem);
}

/**
 * Errors the HTTP parser raises before there is a request (headers too large, a malformed request
 * line, a request that never finished) are problems too; the connection is closed after the answer,
 * since what follows on it cannot be trusted.
 */
function answerClientError(this: FastifyInstance, error: Error & { code?: string }, socket: Duplex): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const problem = clientErrorProblem(error.code, randomUUID());
  this.log.info({ code: problem.code, status: problem.status, requestId: problem.requestId }, 'malformed request refused');
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(problem);
  socket.end(
    `HTTP/1.1 ${problem.status} ${STATUS_CODES[problem.status] ?? 'Bad Request'}\r\n` +
      `content-type: ${PROBLEM_CONTENT_TYPE}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `x-request-id: ${problem.requestId}\r\nconnection: close\r\n\r\n${body}`,
  );
}

/** Build the HTTP app on a service: routes, auth, validation, problem+json errors and metrics. */
export async function createApiApp(options: ApiAppOptions): Promise<ApiApp> {
  const log = options.logger ?? false;
  const fastify = Fastify({
    logger:
      log === false
        ? false
        : {
            level: log.level,
            redact: { paths: API_REDACT_PATHS, censor: CENSOR },
            formatters: { log: (object: Record<string, unknown>) => redactDeep(object) as Record<string, unknown> },
            serializers: { req: serializeRequest, err: serializeError },
            ...(log.stream === undefined ? {} : { stream: log.stream }),
          },
    bodyLimit: options.bodyLimit ?? DEFAULT_BODY_LIMIT,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    requestIdHeader: false,
    // A caller's own request id is kept when it is a plain token, so logs on both sides line up.
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    routerOptions: { maxParamLength: 256 },
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    frameworkErrors: (error, request, reply) => {
      sendProblem(reply, toProblem(error, request.id));
    },
    clientErrorHandler: answerClientError,
  });

  // JSON only: fastify's own text/plain parser let a text body through to the schema ("expected
  // object, received string", 400) where the README promises 415 for any other content type.
  fastify.removeContentTypeParser('text/plain');
  const metrics = new ApiMetrics({ defaultMetrics: options.defaultMetrics ?? true });
  const tracker = new OperationTracker(options.service, metrics, fastify.log, options.memoryCapacity ?? 1000);
  const shutdown = new AbortController();
  // Every long-poll listens on it for as long as it waits: many at once is normal, not a leak.
  setMaxListeners(0, shutdown.signal);
  // Routes describe themselves in it, so it exists only once they are registered.
  const built: { openapi?: OpenApiDocument } = {};
  const deps: RouteDeps = {
    service: options.service,
    tracker,
    metrics,
    defaultProject: options.defaultProject,
    maxWaitMs: options.maxWaitMs ?? DEFAULT_MAX_WAIT_MS,
    shutdown: shutdown.signal,
    operationKeys: new OperationKeyLog(options.memoryCapacity ?? 1000),
    agent: options.agent ?? { pollWaitMs: 25_000, offlineAfterMs: 45_000 },
    agentTokenNames: (host) => options.tokens.agentTokenNames(host),
    openapi: () => {
      if (built.openapi === undefined) throw new Error('the OpenAPI document is built after the routes');
      return built.openapi;
    },
  };
  const routes = [...systemRoutes(deps), ...volumeRoutes(deps), ...serverRoutes(deps), ...hostRoutes(deps), ...agentRoutes(deps), ...attachmentRoutes(deps), ...operationRoutes(deps), ...reconcileRoutes(deps)];
  const openapi = buildOpenApi(routes, API_VERSION);
  built.openapi = openapi;

  fastify.addHook('onRequest', async (request, reply) => {
    void reply.header('x-request-id', request.id);
    if (shutdown.signal.aborted && request.url !== '/healthz') {
      void reply.header('connection', 'close');
      return sendProblem(
        reply,
        makeProblem('CANCELLED', 'the server is shutting down; retry after it restarts', request.id, {
          status: 503,
          details: { retryAfterSeconds: SHUTDOWN_RETRY_AFTER_SECONDS },
        }),
      );
    }
    return undefined;
  });
  fastify.addHook('onResponse', async (request, reply) => {
    metrics.httpDuration.observe(
      { method: request.method, route: request.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
  });
  fastify.setErrorHandler((error, request, reply) => {
    const problem = toProblem(error, request.id);
    if (problem.status >= 500) request.log.error({ err: error, code: problem.code }, 'request failed');
    else request.log.info({ code: problem.code, status: problem.status }, 'request refused');
    return sendProblem(reply, problem);
  });
  fastify.setNotFoundHandler((request, reply) =>
    sendProblem(reply, makeProblem('NOT_FOUND', `no route ${request.method} ${(request.url.split('?')[0] ?? '').slice(0, 200)}`, request.id, {
      hint: 'see /openapi.json or /docs for the routes',
    })),
  );
  registerRoutes(fastify, routes, {
    tokens: options.tokens,
    idempotency: new IdempotencyCache(options.memoryCapacity ?? 1000),
    defaultProject: options.defaultProject,
    shutdown: shutdown.signal,
  });
  // Interactive docs (Swagger UI, its assets served from this process: nothing is fetched from
  // elsewhere) over the very document /openapi.json serves.
  await fastify.register(fastifySwagger, { mode: 'static', specification: { document: openapi } });
  await fastify.register(fastifySwaggerUi, { routePrefix: DOCS_PATH, staticCSP: true, uiConfig: { deepLinking: true, docExpansion: 'list' } });
  await fastify.ready();

  let closing: Promise<void> | undefined;
  return {
    fastify,
    metrics,
    tracker,
    openapi,
    routes,
    async listen(host, port) {
      await fastify.listen({ host, port });
      const address = fastify.server.address();
      if (address === null || typeof address === 'string') return `http://${host}:${port}`;
      const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      return `http://${shown}:${address.port}`;
    },
    close() {
      closing ??= (async () => {
        shutdown.abort();
        // Still listening, new requests get their 503 until connections stop arriving: closing the
        // listener at once reset connections the kernel or Node had accepted but whose request was
        // not read yet (7 of 10 attaches sent just before a SIGTERM got "connection reset", a POST
        // the client cannot tell was done or not). After it, a client is refused a connection,
        // which it knows was never a request.
        await quietPeriod(fastify.server, SHUTDOWN_QUIET_MS, SHUTDOWN_QUIET_MAX_MS);
        await fastify.close();
        await tracker.drain();
      })();
      return closing;
    },
  };
}

/** Shutdown: how long no connection and no request must arrive before the listener closes... */
const SHUTDOWN_QUIET_MS = 100;
/** ...and the longest it stays open for that (a client that keeps connecting is refused then). */
const SHUTDOWN_QUIET_MAX_MS = 2_000;

/**
 * Resolves once `server` has seen neither a new connection nor a new request for `quietMs`, or
 * after `maxMs` at most.
 */
function quietPeriod(server: Server, quietMs: number, maxMs: number): Promise<void> {
  if (!server.listening) return Promise.resolve();
  return new Promise((resolve) => {
    let quiet: NodeJS.Timeout;
    const done = (): void => {
      clearTimeout(quiet);
      clearTimeout(bound);
      server.off('connection', activity);
      server.off('request', activity);
      resolve();
    };
    const activity = (): void => {
      clearTimeout(quiet);
      quiet = setTimeout(done, quietMs);
    };
    const bound = setTimeout(done, maxMs);
    server.on('connection', activity);
    server.on('request', activity);
    activity();
  });
}
