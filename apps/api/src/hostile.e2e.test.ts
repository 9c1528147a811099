import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLIENT_KEY_PREFIX, RemoteBerthService } from '@berth/client';
import type { Host, Operation, Volume } from '@berth/core';
import { operationKeyIn } from './operation-access.js';
import { captureLogs, createTestApi, expectProblem, loopDevicesUnder, PROJECT_A, PROJECT_B, TOKENS, type TestApi } from './test-support.js';

// The HTTP app tried as a hostile client would (issue 9): each test failed before its fix.

const MiB = 1024 * 1024;

let t: TestApi;
const logs = captureLogs();

beforeAll(async () => {
  t = await createTestApi({ logStream: logs.stream });
});

afterAll(async () => {
  await t.cleanup();
});


/** Wait for an operation to end through the API. */
async function settled(token: string, id: string): Promise<Operation> {
  for (;;) {
    const answer = await t.request('GET', `/v1/operations/${id}?wait=30s`, { token });
    const operation = answer.body as Operation;
    if (operation.state !== 'running') return operation;
  }
}

/** Send raw bytes on a new connection and read everything until the server closes it. */
async function rawExchange(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('the server neither answered nor closed the connection'));
    }, 10_000);
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('utf8'));
    });
    socket.write(bytes);
  });
}

/** Status, headers (lower-case names) and JSON body of a raw HTTP/1.1 answer. */
function parseRaw(text: string): { status: number; headers: Record<string, string>; body: Record<string, unknown> } {
  const [head = '', body = ''] = text.split('\r\n\r\n');
  const [statusLine = '', ...lines] = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const at = line.indexOf(':');
    headers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
  }
  return { status: Number(statusLine.split(' ')[1]), headers, body: JSON.parse(body) as Record<string, unknown> };
}

describe('Idempotency-Key', () => {
  it('is kept per token identity and project: a token with another\'s name never gets its reply', async () => {
    const key = { 'idempotency-key': 'create-shared-name' };
    const a = await t.request('POST', '/v1/volumes', { token: TOKENS.memberA, json: { name: 'idem-1', sizeBytes: MiB }, headers: key });
    expect(a.status).toBe(201);
    expect((a.body as Volume).projectId).toBe(PROJECT_A);
    // Same name on its token entry, same key, same request: its own volume in its own project.
    const twin = await t.request('POST', '/v1/volumes', { token: TOKENS.twinOfA, json: { name: 'idem-1', sizeBytes: MiB }, headers: key });
    expect(twin.status).toBe(201);
    expect(twin.headers.get('idempotent-replayed')).toBeNull();
    expect((twin.body as Volume).projectId).toBe(PROJECT_B);
    expect((twin.body as Volume).id).not.toBe((a.body as Volume).id);
    // The admin's key space is its own too.
    const admin = await t.request('POST', '/v1/volumes', { token: TOKENS.admin, json: { name: 'idem-1', sizeBytes: MiB }, headers: key });
    expect(admin.status).toBe(201);
    expect((admin.body as Volume).projectId).toBe('default');
    // Access comes before any replay: a member naming another project is refused, not replayed to.
    expectProblem(await t.request('POST', `/v1/volumes?projectId=${PROJECT_B}`, { token: TOKENS.memberA, json: { name: 'idem-1', sizeBytes: MiB }, headers: key }), 404, 'NOT_FOUND');
    // The original token still gets its own reply back.
    const again = await t.request('POST', '/v1/volumes', { token: TOKENS.memberA, json: { name: 'idem-1', sizeBytes: MiB }, headers: key });
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect((again.body as Volume).id).toBe((a.body as Volume).id);
  });

  it('refuses an attach or detach sent again with the same key and another body (422)', async () => {
    const token = TOKENS.memberA;
    await t.request('POST', '/v1/volumes', { token, json: { name: 'idem-att', sizeBytes: MiB } });
    const key = { 'idempotency-key': 'attach-idem-att' };
    const first = await t.request('POST', '/v1/volumes/idem-att/attach', { token, json: { mode: 'rw' }, headers: key });
    expect(first.status).toBe(202);
    const attach = first.body as Operation;
    expect((await settled(token, attach.id)).state).toBe('succeeded');
    const replay = await t.request('POST', '/v1/volumes/idem-att/attach', { token, json: { mode: 'rw' }, headers: key });
    expect(replay.status).toBe(202);
    expect((replay.body as Operation).id).toBe(attach.id);
    expectProblem(await t.request('POST', '/v1/volumes/idem-att/attach', { token, json: { mode: 'ro' }, headers: key }), 422, 'UNPROCESSABLE');
    expectProblem(await t.request('POST', '/v1/volumes/idem-att/attach', { token, json: { mode: 'rw', server: 'no-such-server' }, headers: key }), 404, 'NOT_FOUND');

    const detachKey = { 'idempotency-key': 'detach-idem-att' };
    const detach = await t.request('POST', '/v1/volumes/idem-att/detach', { token, json: {}, headers: detachKey });
    expect(detach.status).toBe(202);
    expect((await settled(token, (detach.body as Operation).id)).state).toBe('succeeded');
    expectProblem(await t.request('POST', '/v1/volumes/idem-att/detach', { token, json: { force: true }, headers: detachKey }), 422, 'UNPROCESSABLE');
    expect((await t.request('POST', '/v1/volumes/idem-att/detach', { token, json: {}, headers: detachKey })).status).toBe(202);

    // Keys are per project: another project's attach with the same key is its own operation — not
    // a 422 telling it the key exists, nor a squat on project A's retries.
    const other = TOKENS.memberB;
    await t.request('POST', '/v1/volumes', { token: other, json: { name: 'idem-att-b', sizeBytes: MiB } });
    const theirs = await t.request('POST', '/v1/volumes/idem-att-b/attach', { token: other, json: {}, headers: key });
    expect(theirs.status).toBe(202);
    expect((theirs.body as Operation).id).not.toBe(attach.id);
    expect((await settled(other, (theirs.body as Operation).id)).state).toBe('succeeded');
    const theirDetach = await t.request('POST', '/v1/volumes/idem-att-b/detach', { token: other, json: {} });
    expect(theirDetach.status).toBe(202);
    expect((await settled(other, (theirDetach.body as Operation).id)).state).toBe('succeeded');
    const mine = await t.request('POST', '/v1/volumes/idem-att/attach', { token, json: { mode: 'rw' }, headers: key });
    expect((mine.body as Operation).id).toBe(attach.id);
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('replays an operation an older berth journalled under the bare key, to its own project only', async () => {
    const token = TOKENS.memberA;
    const key = { 'idempotency-key': 'attach-bare-key' };
    const volume = (await t.request('POST', '/v1/volumes', { token, json: { name: 'idem-bare', sizeBytes: MiB } })).body as Volume;
    // As the older berth journalled it: the caller's key, bare, straight to the service.
    const older = await t.service.startAttach({ volume: volume.id, projectId: PROJECT_A, idempotencyKey: 'attach-bare-key' });
    await older.done;
    expect(older.operation.idempotencyKey).toBe('attach-bare-key');
    // The same rules as a scoped replay: another kind on that volume is refused from the row
    // (this process never saw the key), then the retry gets the first operation back.
    expectProblem(await t.request('POST', '/v1/volumes/idem-bare/detach', { token, json: {}, headers: key }), 422, 'UNPROCESSABLE');
    const replay = await t.request('POST', '/v1/volumes/idem-bare/attach', { token, json: {}, headers: key });
    expect(replay.status).toBe(202);
    expect((replay.body as Operation).id).toBe(older.operation.id);

    // Another project does not see it: not a 422, not a replay, but its own new operation.
    const other = TOKENS.memberB;
    await t.request('POST', '/v1/volumes', { token: other, json: { name: 'idem-bare-b', sizeBytes: MiB } });
    const theirs = await t.request('POST', '/v1/volumes/idem-bare-b/attach', { token: other, json: {}, headers: key });
    expect(theirs.status).toBe(202);
    const theirOperation = theirs.body as Operation;
    expect(theirOperation.id).not.toBe(older.operation.id);
    // Shown as the caller sent it (until 2026-12-07 as the journal keeps it, `<project tag>/<key>`).
    expect(theirOperation.idempotencyKey).toBe('attach-bare-key');
    expect((await t.service.getOperation(theirOperation.id)).idempotencyKey).toMatch(/^[0-9a-f]{16}\/attach-bare-key$/);
    const listed = (await t.request('GET', `/v1/operations?volumeId=${theirOperation.volumeId}`, { token: other })).body as { operations: Operation[] };
    expect(listed.operations.map((o) => o.idempotencyKey)).toContain('attach-bare-key');
    expect(((await t.request('GET', `/v1/operations/${theirOperation.id}`, { token: other })).body as Operation).idempotencyKey).toBe('attach-bare-key');
    expect((await settled(other, theirOperation.id)).state).toBe('succeeded');
    expect(((await t.request('POST', '/v1/volumes/idem-bare-b/attach', { token: other, json: {}, headers: key })).body as Operation).id).toBe(theirOperation.id);
    expect(((await t.request('POST', '/v1/volumes/idem-bare/attach', { token, json: {}, headers: key })).body as Operation).id).toBe(older.operation.id);

    for (const [who, name] of [[token, 'idem-bare'], [other, 'idem-bare-b']] as const) {
      const detach = await t.request('POST', `/v1/volumes/${name}/detach`, { token: who, json: {} });
      expect(detach.status).toBe(202);
      expect((await settled(who, (detach.body as Operation).id)).state).toBe('succeeded');
    }
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it("replays by the client's own key (berth-client:<uuid>) and shows it as null everywhere, as embedded mode shows a start without a key", async () => {
    const token = TOKENS.memberA;
    const key = { 'idempotency-key': `${CLIENT_KEY_PREFIX}${randomUUID()}` };
    await t.request('POST', '/v1/volumes', { token, json: { name: 'idem-client', sizeBytes: MiB } });
    const first = await t.request('POST', '/v1/volumes/idem-client/attach', { token, json: {}, headers: key });
    expect(first.status).toBe(202);
    const operation = first.body as Operation;
    expect(operation.idempotencyKey).toBeNull();
    // Journalled under it (with the project tag), so another replica replays the start.
    expect((await t.service.getOperation(operation.id)).idempotencyKey).toBe(`${operationKeyIn({ projectId: PROJECT_A }, key['idempotency-key'])}`);
    const again = await t.request('POST', '/v1/volumes/idem-client/attach', { token, json: {}, headers: key });
    expect((again.body as Operation).id).toBe(operation.id);
    expect((again.body as Operation).idempotencyKey).toBeNull();
    expect((await settled(token, operation.id)).idempotencyKey).toBeNull();
    const listed = (await t.request('GET', `/v1/operations?volumeId=${operation.volumeId}`, { token })).body as { operations: Operation[] };
    expect(listed.operations.find((o) => o.id === operation.id)?.idempotencyKey).toBeNull();
    const outcome = (await t.request('GET', `/v1/operations/${operation.id}/outcome`, { token })).body as { operation: Operation };
    expect(outcome.operation.idempotencyKey).toBeNull();
    // Held for its answer (`Prefer: wait`): the outcome it answers with shows null too.
    const detachKey = { 'idempotency-key': `${CLIENT_KEY_PREFIX}${randomUUID()}`, prefer: 'wait=30' };
    const detach = await t.request('POST', '/v1/volumes/idem-client/detach', { token, json: {}, headers: detachKey });
    const detached = detach.status === 200 ? (detach.body as { operation: Operation }).operation : await settled(token, (detach.body as Operation).id);
    expect(detached.state).toBe('succeeded');
    expect(detached.idempotencyKey).toBeNull();
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('berth --api A,B: an attach and a detach whose replica A is frozen go to B under the client\'s own key, shown as null', async () => {
    const sockets: net.Socket[] = [];
    const frozen = net.createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => frozen.listen(0, '127.0.0.1', resolve));
    const frozenUrl = `http://127.0.0.1:${(frozen.address() as net.AddressInfo).port}`;
    const remote = new RemoteBerthService({ url: frozenUrl, fallbackUrls: [t.url], token: TOKENS.memberA, pollWaitSeconds: 1, longPollMarginMs: 300 });
    try {
      await t.request('POST', '/v1/volumes', { token: TOKENS.memberA, json: { name: 'idem-frozen', sizeBytes: MiB } });
      const attached = await remote.attach({ volume: 'idem-frozen' });
      expect(attached.operation.state).toBe('succeeded');
      expect(attached.operation.idempotencyKey).toBeNull();
      expect(sockets.length).toBe(1);
      expect((await t.service.getOperation(attached.operation.id)).idempotencyKey).toMatch(/^[0-9a-f]{16}\/berth-client:[0-9a-f-]{36}$/);
      const detached = await remote.detach({ volume: 'idem-frozen' });
      expect(detached.operation.state).toBe('succeeded');
      expect(detached.operation.idempotencyKey).toBeNull();
    } finally {
      await remote.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => frozen.close(resolve));
    }
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });
});

describe('POST /v1/servers', () => {
  it('writes nothing when it refuses: a host that is not an RFC 1123 name, or a server name taken', async () => {
    const hostsBefore = (await t.service.listHosts()).map((h) => h.name).sort();
    for (const host of ['not a host!', '-leading', 'trailing-', 'a..b', '../../etc', 'x'.repeat(64), 'under_score']) {
      const refused = expectProblem(await t.request('POST', '/v1/servers', { token: TOKENS.memberA, json: { name: 'srv-bad-host', host } }), 400, 'VALIDATION');
      expect(JSON.stringify(refused.issues)).toContain('host');
    }
    expect((await t.request('POST', '/v1/servers', { token: TOKENS.memberA, json: { name: 'srv-taken' } })).status).toBe(201);
    const taken = expectProblem(await t.request('POST', '/v1/servers', { token: TOKENS.memberA, json: { name: 'srv-taken', host: 'brand-new-host.example' } }), 409, 'CONFLICT');
    expect(taken.hint).toContain('another name');
    const hostsAfter = (await t.service.listHosts()).map((h: Host) => h.name).sort();
    expect(hostsAfter).toEqual(hostsBefore);
    expect((await t.service.listServers({ projectId: PROJECT_A })).map((s) => s.name)).not.toContain('srv-bad-host');
    const ok = await t.request('POST', '/v1/servers', { token: TOKENS.memberA, json: { name: 'srv-far', host: 'far-1.rack-2.example' } });
    expect(ok.status).toBe(201);
  });
});

describe('request logs', () => {
  it('never hold a query string\'s values, nor a secret at any depth', async () => {
    const secret = 'query-secret-value-0123456789';
    await t.request('GET', `/v1/volumes?token=${secret}`, { token: TOKENS.admin });
    await t.request('GET', `/v1/volumes?projectId=${secret}`, { token: TOKENS.admin });
    t.app.fastify.log.info({ a: { b: { c: { d: { auth_password_in: 'deep-secret-1', discovery_auth_password_in: 'deep-secret-2' } } } } }, 'deep');
    t.app.fastify.log.info({ list: [{ connector: { auth_password_in: 'deep-secret-3' } }], discovery_auth_password_in: 'top-secret-4' }, 'flat');
    const text = logs.text();
    expect(text).toContain('"url":"/v1/volumes?token=***"');
    for (const leaked of [secret, 'deep-secret-1', 'deep-secret-2', 'deep-secret-3', 'top-secret-4']) expect(text).not.toContain(leaked);
    expect(text).toContain('"auth_password_in":"***"');
  });
});

describe('errors below the routes are problems too', () => {
  it('answers 431 for headers too large, and 400 for a request that is not HTTP, as problem+json', async () => {
    const port = Number(new URL(t.url).port);
    const big = parseRaw(await rawExchange(port, `GET /v1/volumes HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20 * 1024)}\r\n\r\n`));
    expect(big.status).toBe(431);
    expect(big.headers['content-type']).toBe('application/problem+json; charset=utf-8');
    expect(big.body).toMatchObject({ status: 431, code: 'VALIDATION', type: 'urn:berth:error:validation', requestId: big.headers['x-request-id'] });
    const garbage = parseRaw(await rawExchange(port, 'THIS IS NOT HTTP\r\n\r\n'));
    expect(garbage.status).toBe(400);
    expect(garbage.body).toMatchObject({ status: 400, code: 'VALIDATION' });
    const badLength = parseRaw(await rawExchange(port, 'POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n'));
    expect(badLength.status).toBe(400);
    expect(badLength.headers['content-type']).toBe('application/problem+json; charset=utf-8');
  });

  it('answers fastify\'s own refusals (body, media type, route, method, URL) as problems with a stable code', async () => {
    const token = TOKENS.admin;
    expectProblem(await t.request('POST', '/v1/volumes', { token, raw: '{"name":' }), 400, 'VALIDATION');
    expectProblem(await t.request('POST', '/v1/volumes', { token, raw: 'x'.repeat(70 * 1024) }), 413, 'VALIDATION');
    expectProblem(await t.request('POST', '/v1/volumes', { token, raw: '<xml/>', contentType: 'application/xml' }), 415, 'VALIDATION');
    // fastify's own text/plain parser let this reach the schema (400 "expected object").
    expectProblem(await t.request('POST', '/v1/volumes', { token, raw: '{"name":"t","size":"1MiB"}', contentType: 'text/plain' }), 415, 'VALIDATION');
    expectProblem(await t.request('GET', '/v1/nothing-here', { token }), 404, 'NOT_FOUND');
    expectProblem(await t.request('PATCH', '/v1/volumes', { token }), 404, 'NOT_FOUND');
    expectProblem(await t.request('GET', '/v1/volumes/%E0%A4%A', { token }), 400, 'VALIDATION');
  });
});

describe('detach with no body, and sizes as the CLI takes them', () => {
  it('creates and extends with "size", attaches and detaches with no body, and names the servers when there are several', async () => {
    const token = TOKENS.memberA;
    const created = await t.request('POST', '/v1/volumes', { token, json: { name: 'sized', size: '8MiB', multiattach: true } });
    expect(created.status).toBe(201);
    expect((created.body as Volume).sizeBytes).toBe(8 * MiB);
    const grown = await t.request('POST', '/v1/volumes/sized/extend', { token, json: { size: '16MiB' } });
    expect((grown.body as Volume).sizeBytes).toBe(16 * MiB);
    const bad = expectProblem(await t.request('POST', '/v1/volumes', { token, json: { name: 'bad-size', size: '12 parsecs' } }), 400, 'VALIDATION');
    expect((bad.issues as Array<{ path: string[] }>).map((i) => i.path.join('.'))).toEqual(['size']);
    expectProblem(await t.request('POST', '/v1/volumes', { token, json: { name: 'both', size: '1MiB', sizeBytes: MiB } }), 400, 'VALIDATION');

    const attach = await fetch(`${t.url}/v1/volumes/sized/attach`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    expect(attach.status).toBe(202);
    expect((await settled(token, ((await attach.json()) as Operation).id)).state).toBe('succeeded');
    const detach = await fetch(`${t.url}/v1/volumes/sized/detach`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    expect(detach.status).toBe(202);
    expect((await settled(token, ((await detach.json()) as Operation).id)).state).toBe('succeeded');
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);

    // Two reservations (the three-phase API: nothing connected) make a volume attached to two servers.
    for (const name of ['multi-1', 'multi-2']) {
      await t.request('POST', '/v1/servers', { token, json: { name } });
      expect((await t.request('POST', '/v1/attachments', { token, json: { volume: 'sized', server: name } })).status).toBe(201);
    }
    const several = await fetch(`${t.url}/v1/volumes/sized/detach`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    const problem = (await several.json()) as Record<string, unknown>;
    expect(several.status).toBe(409);
    expect(problem).toMatchObject({ code: 'CONFLICT' });
    expect(problem.detail).toContain('multi-1');
    expect(problem.detail).toContain('multi-2');
    expect(problem.hint).toMatch(/"server": "multi-[12]"/);
    for (const a of await t.service.listAttachments({ projectId: PROJECT_A, volume: 'sized' })) {
      expect((await t.request('DELETE', `/v1/attachments/${a.id}`, { token })).status).toBe(200);
    }
  });
});
