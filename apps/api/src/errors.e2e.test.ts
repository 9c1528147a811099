import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Host, Operation, Server, Volume } from '@berth/core';
import { bodyOf, captureLogs, createTestApi, expectProblem, PROJECT_A, PROJECT_B, TOKENS, type TestApi } from './test-support.js';

const MiB = 1024 * 1024;

let t: TestApi;
const logs = captureLogs();
let volumeB: Volume;
let volumeA: Volume;
let operationB: Operation;

beforeAll(async () => {
  t = await createTestApi({ logStream: logs.stream });
  volumeA = (await t.request('POST', '/v1/volumes', { token: TOKENS.memberA, json: { name: 'vol-a', sizeBytes: MiB } })).body as Volume;
  volumeB = (await t.request('POST', '/v1/volumes', { token: TOKENS.memberB, json: { name: 'secret-b', sizeBytes: MiB } })).body as Volume;
  await t.request('POST', '/v1/servers', { token: TOKENS.memberA, json: { name: 'srv-a' } });
  await t.request('POST', '/v1/servers', { token: TOKENS.memberB, json: { name: 'srv-b', host: 'far-away-host' } });
  const started = await t.request('POST', '/v1/servers/srv-a/volume-attachments', { token: TOKENS.memberA, json: { volumeId: 'vol-a' } });
  await t.request('GET', `/v1/operations/${String(bodyOf(started).id)}?wait=30s`, { token: TOKENS.memberA });
  // An operation on project B's volume (refused at the dispatch step: its server is elsewhere).
  const b = await t.request('POST', '/v1/volumes/secret-b/attach', { token: TOKENS.memberB, json: { server: 'srv-b' } });
  operationB = (await t.request('GET', `/v1/operations/${String(bodyOf(b).id)}?wait=30s`, { token: TOKENS.memberB })).body as Operation;
});

afterAll(async () => {
  await t.cleanup();
});


describe('400: every body, parameter and query is validated', () => {
  it('rejects unknown fields, bad values and wrong types with every issue listed', async () => {
    const unknown = expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin, json: { name: 'x1', sizeBytes: MiB, color: 'red' } }), 400, 'VALIDATION');
    expect(JSON.stringify(unknown.issues)).toContain('color');
    const bad = expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin, json: { name: '../etc', sizeBytes: 1000 } }), 400, 'VALIDATION');
    expect((bad.issues as Array<{ path: string[] }>).map((i) => i.path.join('.')).sort()).toEqual(['name', 'sizeBytes']);
    expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin, json: ['name'] }), 400, 'VALIDATION');
    expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin }), 400, 'VALIDATION');
    expectProblem(await t.request('POST', '/v1/servers/srv-a/volume-attachments', { token: TOKENS.admin, json: { volumeId: 7 } }), 400, 'VALIDATION');
    expectProblem(await t.request('POST', '/v1/attachments', { token: TOKENS.admin, json: { volume: 'vol-a', server: 'srv-a', connector: { host: 'h', deep: { a: { b: 1 } } } } }), 400, 'VALIDATION');
    expectProblem(await t.request('PUT', `/v1/attachments/${volumeA.id}`, { token: TOKENS.admin, json: { connector: { initiator: 'no host' } } }), 400, 'VALIDATION');
  });

  it('rejects malformed JSON and prototype-pollution keys without echoing the body', async () => {
    const malformed = expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin, raw: '{"name": "secret-value-1234",' }), 400, 'VALIDATION');
    expect(malformed.detail).toContain('not valid JSON');
    expect(JSON.stringify(malformed)).not.toContain('secret-value-1234');
    const proto = expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin, raw: '{"__proto__": {"admin": true}}' }), 400, 'VALIDATION');
    expect(proto.detail).toContain('forbidden key');
    expect(({} as Record<string, unknown>).admin).toBeUndefined();
    expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin, raw: '{"constructor": {"prototype": {"admin": true}}}' }), 400, 'VALIDATION');
    expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin, raw: 'name=x', contentType: 'application/x-www-form-urlencoded' }), 415, 'VALIDATION');
    expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin, raw: 'x'.repeat(70 * 1024) }), 413, 'VALIDATION');
    expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.admin, raw: '' }), 400, 'VALIDATION');
  });

  it('rejects unknown and malformed query and path parameters and headers', async () => {
    expectProblem(await t.request('GET', '/v1/volumes?color=red', { token: TOKENS.admin }), 400, 'VALIDATION');
    expectProblem(await t.request('GET', '/v1/volumes?status=sleeping', { token: TOKENS.admin }), 400, 'VALIDATION');
    expectProblem(await t.request('GET', '/v1/volumes?status=available&status=in-use', { token: TOKENS.admin }), 400, 'VALIDATION');
    expectProblem(await t.request('GET', '/v1/operations/not-a-uuid', { token: TOKENS.admin }), 400, 'VALIDATION');
    expectProblem(await t.request('GET', `/v1/operations/${operationB.id}?wait=forever`, { token: TOKENS.admin }), 400, 'VALIDATION');
    expectProblem(await t.request('GET', '/v1/volumes/%zz', { token: TOKENS.admin }), 400, 'VALIDATION');
    expectProblem(await t.request('GET', `/v1/volumes/${'v'.repeat(201)}`, { token: TOKENS.admin }), 400, 'VALIDATION');
    expectProblem(await t.request('DELETE', '/v1/volumes/vol-a', { token: TOKENS.admin, json: { force: true } }), 400, 'VALIDATION');
    expectProblem(
      await t.request('POST', '/v1/volumes/vol-a/attach', { token: TOKENS.admin, json: {}, headers: { 'idempotency-key': 'has space' } }),
      400,
      'VALIDATION',
    );
  });
});

describe('401 and 403: tokens and roles', () => {
  it('answers 401 with WWW-Authenticate for a missing, malformed or unknown token', async () => {
    for (const headers of [{} as Record<string, string>, { authorization: 'Basic YWRtaW46YWRtaW4=' }, { authorization: 'Bearer' }, { authorization: `Bearer ${TOKENS.admin}x` }]) {
      const answer = await t.request('GET', '/v1/volumes', { headers });
      expectProblem(answer, 401, 'UNAUTHENTICATED');
      expect(answer.headers.get('www-authenticate')).toBe('Bearer');
    }
    // Authentication comes before the body is even parsed.
    expectProblem(await t.request('POST', '/v1/volumes', { raw: '{not json' }), 401, 'UNAUTHENTICATED');
  });

  it('answers 403 when the role may not do it', async () => {
    expectProblem(await t.request('GET', '/v1/doctor', { token: TOKENS.memberA }), 403, 'FORBIDDEN');
    expectProblem(await t.request('GET', '/v1/connector', { token: TOKENS.memberA }), 403, 'FORBIDDEN');
    expectProblem(await t.request('GET', '/metrics', { token: TOKENS.memberA }), 403, 'FORBIDDEN');
    expectProblem(await t.request('GET', '/v1/volumes/vol-a/credentials', { token: TOKENS.memberA }), 403, 'FORBIDDEN');
    expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.agent, json: { name: 'x2', sizeBytes: MiB } }), 403, 'FORBIDDEN');
    expectProblem(await t.request('DELETE', '/v1/volumes/vol-a', { token: TOKENS.agent }), 403, 'FORBIDDEN');
    expect((await t.request('GET', '/v1/doctor', { token: TOKENS.admin })).status).toBe(200);
    expect((await t.request('GET', '/healthz')).status).toBe(200);
    expect((await t.request('GET', '/openapi.json')).status).toBe(200);
  });
});

describe('403: an agent token calls the agent protocol and credentials only', () => {
  it('refuses every other route to every agent token, with what to use instead', async () => {
    const refused: Array<[string, string]> = [
      ['GET', '/v1/volumes'],
      ['GET', '/v1/volumes/vol-a'],
      ['GET', '/v1/servers'],
      ['GET', '/v1/hosts'],
      ['GET', '/v1/hosts/h-1'],
      ['DELETE', '/v1/hosts/h-1'],
      ['GET', '/v1/attachments'],
      ['GET', '/v1/operations'],
      ['GET', '/v1/connector'],
      ['GET', '/v1/doctor'],
      ['GET', '/v1/plugins'],
      ['GET', '/metrics'],
      ['POST', '/v1/reconcile'],
    ];
    for (const token of [TOKENS.agent, TOKENS.agentH1]) {
      for (const [method, path] of refused) {
        const problem = expectProblem(await t.request(method, path, { token, ...(method === 'POST' ? { json: {} } : {}) }), 403, 'FORBIDDEN');
        expect(problem.detail, `${method} ${path}`).toMatch(/agent token may only call the agent protocol/);
        expect(problem.hint).toMatch(/admin or member token/);
      }
      const attach = await t.request('POST', '/v1/volumes/vol-a/attach', { token, json: { server: 'web-1' } });
      expectProblem(attach, 403, 'FORBIDDEN');
    }
    // The agent routes still answer an agent token (here: not registered yet, not forbidden).
    const register = await t.request('POST', '/v1/agent/register', { token: TOKENS.agentH1, json: {} });
    expect(register.status).not.toBe(403);
    expect((await t.request('GET', '/v1/volumes/vol-a/credentials', { token: TOKENS.agentH1 })).status).not.toBe(403);
    // Admins and members keep what they had.
    expect((await t.request('GET', '/v1/volumes', { token: TOKENS.memberA })).status).toBe(200);
    expect((await t.request('GET', '/v1/hosts', { token: TOKENS.admin })).status).toBe(200);
  });
});

describe('404: another project\'s resources do not exist', () => {
  it('hides project B\'s volume, server and operation from member A, by id and by name', async () => {
    const missing = expectProblem(await t.request('GET', '/v1/volumes/00000000-0000-4000-8000-000000000000', { token: TOKENS.memberA }), 404, 'NOT_FOUND');
    const byId = expectProblem(await t.request('GET', `/v1/volumes/${volumeB.id}`, { token: TOKENS.memberA }), 404, 'NOT_FOUND');
    // The same answer as for an id that exists nowhere.
    expect(byId.detail).toBe(String(missing.detail).replace('00000000-0000-4000-8000-000000000000', volumeB.id));
    expectProblem(await t.request('GET', '/v1/volumes/secret-b', { token: TOKENS.memberA }), 404, 'NOT_FOUND');
    expectProblem(await t.request('GET', `/v1/volumes?projectId=${PROJECT_B}`, { token: TOKENS.memberA }), 404, 'NOT_FOUND');
    expectProblem(await t.request('DELETE', `/v1/volumes/${volumeB.id}`, { token: TOKENS.memberA }), 404, 'NOT_FOUND');
    expectProblem(await t.request('POST', `/v1/volumes/${volumeB.id}/extend`, { token: TOKENS.memberA, json: { sizeBytes: 2 * MiB } }), 404, 'NOT_FOUND');
    expectProblem(await t.request('POST', '/v1/servers/srv-a/volume-attachments', { token: TOKENS.memberA, json: { volumeId: volumeB.id } }), 404, 'NOT_FOUND');
    expectProblem(await t.request('GET', '/v1/servers/srv-b', { token: TOKENS.memberA }), 404, 'NOT_FOUND');
    expectProblem(await t.request('GET', `/v1/operations/${operationB.id}`, { token: TOKENS.memberA }), 404, 'NOT_FOUND');
    expectProblem(await t.request('GET', `/v1/operations/${operationB.id}/outcome`, { token: TOKENS.memberA }), 404, 'NOT_FOUND');
    expectProblem(await t.request('GET', '/v1/hosts/far-away-host', { token: TOKENS.memberA }), 404, 'NOT_FOUND');
    expectProblem(await t.request('GET', '/v1/no-such-route', { token: TOKENS.memberA }), 404, 'NOT_FOUND');

    // Nothing of B's changed, and A's listings show only A's.
    expect((await t.service.getVolume(volumeB.id, { projectId: PROJECT_B })).sizeBytes).toBe(MiB);
    const listed = bodyOf(await t.request('GET', '/v1/volumes', { token: TOKENS.memberA })).volumes as Volume[];
    expect(listed.map((v) => v.name)).toEqual(['vol-a']);
    const operations = bodyOf(await t.request('GET', '/v1/operations', { token: TOKENS.memberA })).operations as Operation[];
    expect(operations.every((o) => o.volumeId === volumeA.id)).toBe(true);
    expect(operations.length).toBeGreaterThan(0);
    const servers = bodyOf(await t.request('GET', '/v1/servers', { token: TOKENS.memberA })).servers as Server[];
    const hosts = bodyOf(await t.request('GET', '/v1/hosts', { token: TOKENS.memberA })).hosts as Host[];
    expect(hosts.map((h) => h.id)).toEqual([...new Set(servers.map((s) => s.hostId))]);
    expect(hosts.some((h) => h.name === 'far-away-host')).toBe(false);
    // An admin sees everything, project by project.
    expect((await t.request('GET', `/v1/volumes/secret-b?projectId=${PROJECT_B}`, { token: TOKENS.admin })).status).toBe(200);
    expect((await t.request('GET', `/v1/volumes?projectId=${PROJECT_A}`, { token: TOKENS.memberA })).status).toBe(200);
  });
});

describe('409 and 422: state conflicts and requests that cannot be done', () => {
  it('answers 409 at once for an attached volume, an in-use delete and a completed attachment', async () => {
    const before = await t.service.listOperations();
    const attached = expectProblem(await t.request('POST', '/v1/servers/srv-a/volume-attachments', { token: TOKENS.memberA, json: { volumeId: 'vol-a' } }), 409, 'CONFLICT');
    expect(attached.hint).toContain('detach');
    // Refused before an operation was created.
    expect(await t.service.listOperations()).toHaveLength(before.length);
    expectProblem(await t.request('DELETE', '/v1/volumes/vol-a', { token: TOKENS.memberA }), 409, 'CONFLICT');
    expectProblem(await t.request('POST', '/v1/volumes/vol-a/extend', { token: TOKENS.memberA, json: { sizeBytes: 2 * MiB } }), 409, 'CONFLICT');
    expectProblem(await t.request('DELETE', '/v1/servers/srv-a', { token: TOKENS.memberA }), 409, 'CONFLICT');
    expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.memberA, json: { name: 'vol-a', sizeBytes: MiB } }), 409, 'CONFLICT');
    const [attachment] = await t.service.listAttachments({ projectId: PROJECT_A });
    expectProblem(await t.request('POST', `/v1/attachments/${attachment?.id ?? ''}/complete`, { token: TOKENS.memberA }), 409, 'CONFLICT');
    expectProblem(await t.request('DELETE', '/v1/servers/srv-b/volume-attachments/secret-b', { token: TOKENS.memberB }), 409, 'CONFLICT');
  });

  it('answers 422 for an unknown backend and an export to another host', async () => {
    const backend = expectProblem(await t.request('POST', '/v1/volumes', { token: TOKENS.memberA, json: { name: 'vol-x', sizeBytes: MiB, backend: 'no-such-backend' } }), 422, 'UNPROCESSABLE');
    expect(backend.hint).toContain('installed backends');
    expect((await t.service.listVolumes({ projectId: PROJECT_A })).map((v) => v.name)).toEqual(['vol-a']);
    expectProblem(
      await t.request('POST', '/v1/attachments', { token: TOKENS.memberB, json: { volume: 'secret-b', server: 'srv-b', connector: { host: 'far-away-host' } } }),
      422,
      'UNPROCESSABLE',
    );
    expect((await t.service.getVolume('secret-b', { projectId: PROJECT_B })).status).toBe('available');
    // The dispatch refusal of operation B was journalled as that same kind of error.
    expect(operationB.state).toBe('rolled_back');
    expect(operationB.error?.code).toBe('UNPROCESSABLE');
    const outcome = expectProblem(await t.request('GET', `/v1/operations/${operationB.id}/outcome`, { token: TOKENS.memberB }), 422, 'UNPROCESSABLE');
    expect(outcome.operationId).toBe(operationB.id);
  });
});

describe('logs', () => {
  it('carry request ids and never a token', () => {
    const text = logs.text();
    expect(text).toContain('"reqId"');
    for (const token of Object.values(TOKENS)) expect(text).not.toContain(token);
    expect(text).not.toContain('Bearer ');
    expect(text).toContain('"request completed"');
  });
});
