import { z } from '@berth/core/zod';
import { zProblem } from './problem.js';
import type { AnyRoute, ResponseSpec } from './route.js';
import { API_LICENSE } from './version.js';

/** A JSON Schema (or any other OpenAPI object) as embedded in the document. */
type JsonSchema = Record<string, unknown>;

/** The OpenAPI 3.1 document of the app (the slice of the format berth fills). */
export interface OpenApiDocument {
  openapi: '3.1.0';
  info: { title: string; version: string; description: string; license: { name: string; identifier: string } };
  servers: Array<{ url: string; description: string }>;
  tags: Array<{ name: string; description: string }>;
  paths: Record<string, Record<string, JsonSchema>>;
  components: {
    schemas: Record<string, JsonSchema>;
    headers: Record<string, JsonSchema>;
    securitySchemes: Record<string, { type: 'http'; scheme: string; description: string }>;
  };
}

/** What each tag groups, in the order the docs show them. */
const TAGS: Record<string, string> = {
  volumes: 'Block volumes: create, grow, delete, and attach or detach by volume',
  servers: 'Servers (the consumers of volumes) and their volume attachments, as Nova names them',
  attachments: 'The three-phase attachments API for orchestrators that connect volumes themselves (Cinder\'s)',
  operations: 'Journalled attach and detach operations: poll them, long-poll them, read their outcome',
  hosts: 'The machines servers run on, with the state of their agents',
  agent: 'The agent protocol: `berth agent` on each host registers, claims its host\'s work items (long-poll), renews their leases and reports results',
  host: 'The API host itself: its connector, checks, plugins, and reconcile',
  system: 'Health, readiness, metrics and this description',
};

function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): JsonSchema {
  // Refinements (multiples of 512, ...) have no JSON Schema form: the document states the shape,
  // the zod schema behind it still enforces the rest.
  const out = z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as JsonSchema;
  delete out.$schema;
  return out;
}

function parameters(schema: z.ZodType, where: 'path' | 'query'): JsonSchema[] {
  const object = jsonSchema(schema, 'input');
  const properties = (object.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((object.required ?? []) as string[]);
  return Object.entries(properties).map(([name, property]) => {
    const { description, ...rest } = property;
    return {
      name,
      in: where,
      required: where === 'path' || required.has(name),
      ...(typeof description === 'string' ? { description } : {}),
      schema: rest,
    };
  });
}

const PROBLEM = { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } };
const LOCATION = { $ref: '#/components/headers/Location' };
const RETRY_AFTER = { $ref: '#/components/headers/RetryAfter' };

/** Error answers every authenticated route may give. */
const AUTH_ERRORS: Record<string, string> = {
  '401': 'No or an unknown bearer token (UNAUTHENTICATED)',
  '403': 'The token\'s role may not do this (FORBIDDEN)',
  '404': 'No such resource in the caller\'s project (NOT_FOUND)',
  '409': 'The resource is in a state that does not allow it (CONFLICT, INVALID_STATE)',
  '422': 'Understood but cannot be done (UNPROCESSABLE, HOST_UNSUPPORTED, ...)',
  '500': 'A driver, backend, command or berth itself failed',
};

/** One documented answer: its schema, and the headers that go with its status. */
function response(status: string, spec: ResponseSpec): JsonSchema {
  const headers: JsonSchema = {};
  if (status === '201' || status === '202') headers.Location = LOCATION;
  if (status === '503' || spec.retryAfter === true) headers['Retry-After'] = RETRY_AFTER;
  if (spec.preferenceApplied === true) {
    headers.Location = LOCATION;
    headers['Preference-Applied'] = { description: 'the `Prefer` preference this answer honoured: `wait=N`', schema: { type: 'string' } };
  }
  return {
    description: spec.description,
    ...(Object.keys(headers).length === 0 ? {} : { headers }),
    ...(spec.schema === undefined ? {} : { content: { [spec.contentType ?? 'application/json']: { schema: jsonSchema(spec.schema, 'output') } } }),
  };
}

/** Every answer of route `r`: its own, then the problems it can answer with. */
function responsesOf(r: AnyRoute): JsonSchema {
  const responses: JsonSchema = {};
  for (const [status, spec] of Object.entries(r.responses)) responses[status] = response(status, spec);
  const problem = (description: string, headers?: JsonSchema): JsonSchema => ({ description, ...(headers ? { headers } : {}), content: PROBLEM });
  // Every route parses strict parameters and queries.
  responses['400'] ??= problem('The request is not valid (code VALIDATION; `issues` lists each problem)');
  if (r.access !== 'public') {
    for (const [status, description] of Object.entries(AUTH_ERRORS)) responses[status] ??= problem(description);
    if (r.idempotency === 'cache') {
      responses['409'] = problem(
        `${AUTH_ERRORS['409']}; also while a request with the same Idempotency-Key still runs (then with Retry-After)`,
        { 'Retry-After': RETRY_AFTER },
      );
    }
  }
  // While the server shuts down every request but /healthz is refused.
  if (r.path !== '/healthz') responses['503'] ??= problem('The server is shutting down (CANCELLED): retry after Retry-After seconds', { 'Retry-After': RETRY_AFTER });
  return responses;
}

/** The OpenAPI document of `routes`, from the very zod schemas that validate them. */
export function buildOpenApi(routes: readonly AnyRoute[], version: string): OpenApiDocument {
  const paths: OpenApiDocument['paths'] = {};
  for (const r of routes) {
    const operation: JsonSchema = {
      operationId: r.operationId,
      summary: r.summary,
      ...(r.description === undefined ? {} : { description: r.description }),
      tags: [r.tag],
      security: r.access === 'public' ? [] : [{ bearer: [] }],
    };
    const params = [...parameters(r.params, 'path'), ...parameters(r.query, 'query')];
    if (r.idempotency !== undefined) {
      params.push({
        name: 'Idempotency-Key',
        in: 'header',
        required: false,
        description:
          r.idempotency === 'operation'
            ? 'a retry with the same key returns the original operation (kept with the operation); the same key with another request is refused (422)'
            : 'a retry with the same key returns the first reply (kept in the server\'s memory for 24 h, per token and project); the same key with another request is refused (422)',
        schema: { type: 'string', minLength: 1, maxLength: 200 },
      });
    }
    if (r.preferWait === true) {
      params.push({
        name: 'Prefer',
        in: 'header',
        required: false,
        description:
          '`wait=N` (RFC 7240, seconds, at most the server\'s maximum wait): hold the answer until the operation ends or N s pass; if it succeeded by then the answer is 200 with its outcome, else the usual 202. Other preferences are ignored.',
        schema: { type: 'string' },
      });
    }
    if (params.length > 0) operation.parameters = params;
    if (r.body !== undefined) {
      operation.requestBody = { required: r.optionalBody !== true, content: { 'application/json': { schema: jsonSchema(r.body, 'input') } } };
    }
    operation.responses = responsesOf(r);
    (paths[r.path] ??= {})[r.method.toLowerCase()] = operation;
  }
  const used = new Set(routes.map((r) => r.tag));
  return {
    openapi: '3.1.0',
    info: {
      title: 'berth API',
      version,
      description:
        'Attach block volumes to hosts. Attach and detach answer 202 with an operation to poll (`GET /v1/operations/{id}?wait=30s`), or, asked with `Prefer: wait=N`, 200 with its outcome when it succeeded within N s. Errors are application/problem+json with a stable `code`.',
      license: API_LICENSE,
    },
    // Relative: the server that serves this document is the one it describes.
    servers: [{ url: '/', description: 'the berth API server this document was fetched from' }],
    tags: Object.entries(TAGS)
      .filter(([name]) => used.has(name))
      .map(([name, description]) => ({ name, description })),
    paths,
    components: {
      schemas: { Problem: jsonSchema(zProblem, 'output') },
      headers: {
        Location: { description: 'where to find what was created, or the operation to poll', schema: { type: 'string' } },
        RetryAfter: { description: 'seconds to wait before asking again', schema: { type: 'integer', minimum: 0 } },
      },
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'a token from the server\'s config (stored there as its SHA-256)' } },
    },
  };
}
