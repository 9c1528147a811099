import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiApp, type ApiApp } from './app.js';
import { TokenTable } from './auth.js';
import { stubService } from './test-stub-service.js';
import { testTokenEntries } from './test-support.js';

let app: ApiApp;

beforeAll(async () => {
  app = await createApiApp({ service: stubService({}), tokens: TokenTable.fromConfig(testTokenEntries(), {}), defaultProject: 'default', defaultMetrics: false });
});

afterAll(async () => {
  await app.close();
});

describe('the OpenAPI document', () => {
  it('documents every route, from the zod schemas that validate it', async () => {
    const answer = await app.fastify.inject({ method: 'GET', url: '/openapi.json' });
    expect(answer.statusCode).toBe(200);
    const doc = JSON.parse(answer.body) as { openapi: string; paths: Record<string, Record<string, Record<string, unknown>>> };
    expect(doc.openapi).toBe('3.1.0');
    const documented = Object.entries(doc.paths).flatMap(([path, methods]) => Object.keys(methods).map((m) => `${m.toUpperCase()} ${path}`));
    expect(documented.sort()).toEqual(app.routes.map((r) => `${r.method} ${r.path}`).sort());
    for (const needed of [
      'GET /v1/volumes',
      'POST /v1/servers/{server}/volume-attachments',
      'DELETE /v1/servers/{server}/volume-attachments/{volume}',
      'POST /v1/attachments',
      'PUT /v1/attachments/{id}',
      'POST /v1/attachments/{id}/complete',
      'GET /v1/operations/{id}',
      'GET /v1/hosts',
      'GET /healthz',
      'GET /readyz',
      'GET /metrics',
      'GET /openapi.json',
      'POST /v1/reconcile',
    ]) {
      expect(documented).toContain(needed);
    }
    const create = doc.paths['/v1/volumes']?.post as { requestBody: { content: Record<string, { schema: Record<string, unknown> }> } };
    const schema = create.requestBody.content['application/json']?.schema;
    expect(schema).toMatchObject({ type: 'object', additionalProperties: false, required: ['name'] });
    const attach = doc.paths['/v1/servers/{server}/volume-attachments']?.post as { responses: Record<string, unknown>; parameters: Array<{ name: string }> };
    expect(Object.keys(attach.responses)).toEqual(expect.arrayContaining(['202', '400', '401', '403', '404', '409']));
    expect(attach.parameters.map((p) => p.name)).toEqual(expect.arrayContaining(['server', 'projectId', 'Idempotency-Key']));
    const reconcile = doc.paths['/v1/reconcile']?.post as {
      requestBody: { content: Record<string, { schema: Record<string, unknown> }> };
      responses: Record<string, { content?: Record<string, { schema: Record<string, unknown> }> }>;
    };
    expect(reconcile.requestBody.content['application/json']?.schema).toMatchObject({ type: 'object', additionalProperties: false, properties: { dryRun: { type: 'boolean' } } });
    expect(reconcile.responses['200']?.content?.['application/json']?.schema).toMatchObject({
      required: expect.arrayContaining(['dryRun', 'operationId', 'differences', 'unchecked', 'counts']),
    });
    expect(Object.keys(reconcile.responses)).toEqual(expect.arrayContaining(['200', '400', '401', '403']));
    const get = doc.paths['/v1/operations/{id}']?.get as { parameters: Array<{ name: string; in: string }> };
    expect(get.parameters).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'wait', in: 'query' })]));
  });

  it('is also a docs page for people, with every route and nothing unescaped', async () => {
    const answer = await app.fastify.inject({ method: 'GET', url: '/docs' });
    expect(answer.statusCode).toBe(200);
    expect(answer.headers['content-type']).toContain('text/html');
    expect(answer.body).toContain('POST /v1/servers/{server}/volume-attachments');
    expect(answer.body).not.toContain('<script');
  });
});
