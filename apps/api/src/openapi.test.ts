import { Validator } from '@seriousme/openapi-schema-validator';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiApp, type ApiApp } from './app.js';
import { TokenTable } from './auth.js';
import { stubService } from './test-stub-service.js';
import { testTokenEntries } from './test-support.js';

type Operation = {
  parameters?: Array<{ name: string; in: string }>;
  requestBody?: { required: boolean; content: Record<string, { schema: Record<string, unknown> }> };
  responses: Record<string, { headers?: Record<string, unknown>; content?: Record<string, { schema: Record<string, unknown> }> }>;
};
type Document = {
  openapi: string;
  info: { license?: { identifier?: string } };
  servers?: Array<{ url: string }>;
  paths: Record<string, Record<string, Operation>>;
};

let app: ApiApp;
let doc: Document;

beforeAll(async () => {
  app = await createApiApp({ service: stubService({}), tokens: TokenTable.fromConfig(testTokenEntries(), {}), defaultProject: 'default', defaultMetrics: false });
  const answer = await app.fastify.inject({ method: 'GET', url: '/openapi.json' });
  expect(answer.statusCode).toBe(200);
  doc = JSON.parse(answer.body) as Document;
});

afterAll(async () => {
  await app.close();
});

function operations(): Array<[string, Operation]> {
  return Object.entries(doc.paths).flatMap(([path, methods]) => Object.entries(methods).map(([m, op]): [string, Operation] => [`${m.toUpperCase()} ${path}`, op]));
}

describe('the OpenAPI document', () => {
  it('is valid OpenAPI 3.1, as a schema validator reads it', async () => {
    const validator = new Validator();
    const result = await validator.validate(structuredClone(doc) as unknown as Parameters<Validator['validate']>[0]);
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
    expect(validator.version).toBe('3.1');
  });

  it('documents every route, from the zod schemas that validate it', () => {
    const documented = operations().map(([name]) => name);
    expect(documented.sort()).toEqual(app.routes.map((r) => `${r.method} ${r.path}`).sort());
    const create = doc.paths['/v1/volumes']?.post;
    expect(create?.requestBody?.content['application/json']?.schema).toMatchObject({
      type: 'object',
      additionalProperties: false,
      required: ['name'],
      properties: { sizeBytes: { type: 'integer' }, size: { type: 'string' } },
    });
    const attach = doc.paths['/v1/servers/{server}/volume-attachments']?.post;
    expect(Object.keys(attach?.responses ?? {})).toEqual(expect.arrayContaining(['202', '400', '401', '403', '404', '409', '503']));
    expect(attach?.parameters?.map((p) => p.name)).toEqual(expect.arrayContaining(['server', 'projectId', 'Idempotency-Key']));
    expect(doc.paths['/v1/volumes/{volume}/detach']?.post?.requestBody?.required).toBe(false);
    const reconcile = doc.paths['/v1/reconcile']?.post;
    expect(reconcile?.requestBody?.content['application/json']?.schema).toMatchObject({ type: 'object', additionalProperties: false, properties: { dryRun: { type: 'boolean' } } });
    expect(reconcile?.responses['200']?.content?.['application/json']?.schema).toMatchObject({
      required: expect.arrayContaining(['dryRun', 'operationId', 'differences', 'unchecked', 'counts']),
    });
    expect(doc.paths['/v1/operations/{id}']?.get?.parameters).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'wait', in: 'query' })]));
    // Starting an attach or detach takes `Prefer: wait=N` and may answer 200 with the outcome.
    for (const [path, method] of [
      ['/v1/volumes/{volume}/attach', 'post'],
      ['/v1/volumes/{volume}/detach', 'post'],
      ['/v1/servers/{server}/volume-attachments', 'post'],
      ['/v1/servers/{server}/volume-attachments/{volume}', 'delete'],
    ] as const) {
      const op = doc.paths[path]?.[method];
      expect(op?.parameters, path).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'Prefer', in: 'header' })]));
      expect(op?.responses['200']?.headers, path).toHaveProperty('Preference-Applied');
      expect(op?.responses['200']?.content?.['application/json']?.schema, path).toMatchObject({ required: expect.arrayContaining(['operation', 'volume']) });
      expect(op?.responses['202'], path).toBeDefined();
    }
  });

  it('has servers, a license, a 4xx on every operation, Location on 201/202 and Retry-After where it applies', () => {
    expect(doc.servers?.length).toBeGreaterThan(0);
    expect(doc.info.license?.identifier).toBe('Apache-2.0');
    for (const [name, op] of operations()) {
      const statuses = Object.keys(op.responses);
      expect(statuses.some((s) => s.startsWith('4')), name).toBe(true);
      for (const status of ['201', '202']) {
        if (op.responses[status] !== undefined) expect(op.responses[status]?.headers, `${name} ${status}`).toHaveProperty('Location');
      }
      if (op.responses['503'] !== undefined) expect(op.responses['503']?.headers, name).toHaveProperty('Retry-After');
    }
    expect(doc.paths['/v1/operations/{id}/outcome']?.get?.responses['202']?.headers).toHaveProperty('Retry-After');
    expect(doc.paths['/v1/volumes']?.post?.responses['409']?.headers).toHaveProperty('Retry-After');
  });
});

describe('the interactive docs', () => {
  it('serve Swagger UI over the same document, its assets from this process', async () => {
    const page = await app.fastify.inject({ method: 'GET', url: '/docs/' });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toContain('text/html');
    expect(page.headers['content-security-policy']).toContain("default-src 'self'");
    expect(page.body).toContain('swagger-ui-bundle.js');
    expect(page.body).not.toMatch(/src="https?:/);
    const served = await app.fastify.inject({ method: 'GET', url: '/docs/json' });
    expect(JSON.parse(served.body)).toEqual(doc);
    const bundle = await app.fastify.inject({ method: 'GET', url: '/docs/static/swagger-ui-bundle.js' });
    expect(bundle.statusCode).toBe(200);
    expect(bundle.headers['content-type']).toContain('javascript');
    const missing = await app.fastify.inject({ method: 'GET', url: '/docs/static/no-such-file.js' });
    expect(missing.statusCode).toBe(404);
    expect(missing.headers['content-type']).toBe('application/problem+json; charset=utf-8');
  });
});
