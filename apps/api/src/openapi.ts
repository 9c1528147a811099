import { z } from 'zod';
import { zProblem } from './problem.js';
import type { AnyRoute } from './route.js';

/** A JSON Schema object as embedded in the document. */
type JsonSchema = Record<string, unknown>;

/** The OpenAPI 3.1 document of the app (the slice of the format berth fills). */
export interface OpenApiDocument {
  openapi: '3.1.0';
  info: { title: string; version: string; description: string };
  paths: Record<string, Record<string, JsonSchema>>;
  components: { schemas: Record<string, JsonSchema>; securitySchemes: Record<string, JsonSchema> };
}

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

const PROBLEM_REF = { $ref: '#/components/schemas/Problem' };
const ERROR_RESPONSES: Record<string, string> = {
  '400': 'The request is not valid (code VALIDATION; `issues` lists each problem)',
  '401': 'No or an unknown bearer token (UNAUTHENTICATED)',
  '403': 'The token\'s role may not do this (FORBIDDEN)',
  '404': 'No such resource in the caller\'s project (NOT_FOUND)',
  '409': 'The resource is in a state that does not allow it (CONFLICT, INVALID_STATE)',
  '422': 'Understood but cannot be done (UNPROCESSABLE, HOST_UNSUPPORTED, ...)',
  '500': 'A driver, backend, command or berth itself failed',
};

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
            ? 'a retry with the same key returns the original operation (kept with the operation)'
            : 'a retry with the same key returns the first reply (kept in the server\'s memory for 24 h)',
        schema: { type: 'string', minLength: 1, maxLength: 200 },
      });
    }
    if (params.length > 0) operation.parameters = params;
    if (r.body !== undefined) {
      operation.requestBody = { required: true, content: { 'application/json': { schema: jsonSchema(r.body, 'input') } } };
    }
    const responses: JsonSchema = {};
    for (const [status, spec] of Object.entries(r.responses)) {
      responses[status] = {
        description: spec.description,
        ...(spec.schema === undefined ? {} : { content: { [spec.contentType ?? 'application/json']: { schema: jsonSchema(spec.schema, 'output') } } }),
      };
    }
    if (r.access !== 'public') {
      for (const [status, description] of Object.entries(ERROR_RESPONSES)) {
        responses[status] ??= { description, content: { 'application/problem+json': { schema: PROBLEM_REF } } };
      }
    }
    operation.responses = responses;
    (paths[r.path] ??= {})[r.method.toLowerCase()] = operation;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'berth API',
      version,
      description:
        'Attach block volumes to hosts. Attach and detach answer 202 with an operation to poll (`GET /v1/operations/{id}?wait=30s`). Errors are application/problem+json with a stable `code`.',
    },
    paths,
    components: {
      schemas: { Problem: jsonSchema(zProblem, 'output') },
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'a token from the server\'s config (stored there as its SHA-256)' } },
    },
  };
}
