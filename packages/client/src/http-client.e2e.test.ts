import { once } from 'node:events';
import http from 'node:http';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BerthError, type Operation } from '@berth/core';
import { HttpClient } from './http-client.js';
import { RemoteBerthService } from './remote-berth-service.js';
import { codeOf, sendJson, testHttpServer, testSilentServer, VOLUME_FIXTURE } from './test-support.js';

// A real HTTP server on 127.0.0.1: what the client's own transport does with connections.

let client: HttpClient | undefined;
const serve = testHttpServer();
const silent = testSilentServer();
const json = sendJson;

afterEach(() => {
  client?.close();
  client = undefined;
});

describe('HttpClient over its own keep-alive connections', () => {
  it('sends every request of a caller on one connection, with the token, body and length', async () => {
    const seen: Array<{ method: string; url: string; auth: string | undefined; body: string }> = [];
    const { url, sockets } = await serve((request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')));
      request.on('end', () => {
        seen.push({ method: request.method ?? '', url: request.url ?? '', auth: request.headers.authorization, body });
        json(response, 200, { ok: true, n: seen.length });
      });
    });
    client = new HttpClient({ url, token: 't0k' });
    for (let i = 0; i < 5; i++) expect((await client.request({ method: 'GET', path: '/v1/volumes', query: { projectId: 'p 1' } })).body).toEqual({ ok: true, n: i + 1 });
    expect(await client.request({ method: 'POST', path: '/v1/volumes', body: { name: 'd1', sizeBytes: 1048576 } })).toEqual({ status: 200, body: { ok: true, n: 6 } });
    expect(sockets).toHaveLength(1);
    expect(seen[0]).toEqual({ method: 'GET', url: '/v1/volumes?projectId=p+1', auth: 'Bearer t0k', body: '' });
    expect(JSON.parse(seen[5]?.body ?? '')).toEqual({ name: 'd1', sizeBytes: 1048576 });
    // close() ends the kept-alive connection.
    const closed = once(sockets[0] as Socket, 'close');
    client.close();
    await closed;
  });

  it('refuses a token a header cannot carry (a line break, a space, a control character) with CONFIG, without echoing it', () => {
    for (const token of ['abc\ndef', 'abc def', 'abc\u0007']) {
      const error = (() => {
        try {
          new HttpClient({ url: 'http://127.0.0.1:1', token });
          return undefined;
        } catch (e) {
          return e;
        }
      })();
      expect(BerthError.is(error) && error.code).toBe('CONFIG');
      expect(BerthError.is(error) && error.message).not.toContain('abc');
    }
  });

  it('turns a problem into its BerthError, a server that never answers into TIMEOUT', async () => {
    const { url } = await serve((request, response) => {
      if (request.url === '/hang') return;
      json(response, 409, { code: 'CONFLICT', detail: 'volume d1 is in-use', hint: 'detach it first', requestId: 'r1', status: 409 });
    });
    client = new HttpClient({ url, timeoutMs: 300 });
    const conflict = await client.request({ method: 'GET', path: '/x' }).catch((error: unknown) => error);
    expect(conflict).toBeInstanceOf(BerthError);
    expect(conflict).toMatchObject({ code: 'CONFLICT', message: 'volume d1 is in-use', hint: 'detach it first', details: { requestId: 'r1' } });
    expect(await codeOf(client.request({ method: 'GET', path: '/hang' }))).toBe('TIMEOUT');
  });

  it('sends a GET again when the server closed the idle connection it reused', async () => {
    let served = 0;
    const { url, sockets } = await serve((_request, response) => {
      served += 1;
      json(response, 200, { served });
    });
    client = new HttpClient({ url });
    expect((await client.request({ method: 'GET', path: '/a' })).body).toEqual({ served: 1 });
    // The server drops the idle kept-alive connection without a word (a restart, an idle timeout).
    const idle = sockets[0] as Socket;
    const gone = once(idle, 'close');
    idle.destroy();
    await gone;
    expect((await client.request({ method: 'GET', path: '/b' })).body).toEqual({ served: 2 });
  });

  it('with fallback URLs, a request that cannot connect goes to the next replica, which is used from then on; one that reached a replica never moves', async () => {
    let served = 0;
    const { url } = await serve((request, response) => {
      served += 1;
      if (request.url === '/fail') return void json(response, 500, { code: 'INTERNAL', detail: 'boom', status: 500 });
      json(response, 200, { served });
    });
    // A port nothing listens on (taken, then freed): connections to it are refused.
    const dead = await new Promise<string>((resolve) => {
      const probe = http.createServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as { port: number };
        probe.close(() => resolve(`http://127.0.0.1:${port}`));
      });
    });
    client = new HttpClient({ url: dead, fallbackUrls: [url] });
    expect(client.url).toBe(`${dead}/`);
    expect((await client.request({ method: 'POST', path: '/v1/volumes', body: {} })).body).toEqual({ served: 1 });
    expect(client.url).toBe(`${url}/`);
    // An answer (even an error) is the replica's: not sent anywhere else.
    expect(await codeOf(client.request({ method: 'GET', path: '/fail' }))).toBe('INTERNAL');
    expect(served).toBe(2);
    // Every replica refusing: CONFIG naming them all.
    client.close();
    client = new HttpClient({ url: dead, fallbackUrls: [dead.replace('127.0.0.1', 'localhost')] });
    const error = (await client.request({ method: 'GET', path: '/x' }).catch((e: unknown) => e)) as BerthError;
    expect(error).toMatchObject({ code: 'CONFIG', details: { unreachable: true } });
    expect(error.message).toContain('cannot reach the berth API');
  });
});

const OPERATION_DONE: Operation = {
  id: '2c9d8e7f-1a2b-4c3d-9e8f-7a6b5c4d3e21',
  kind: 'attach',
  state: 'succeeded',
  volumeId: VOLUME_FIXTURE.id,
  serverId: null,
  attachmentId: null,
  hostId: null,
  idempotencyKey: null,
  owner: '1@h',
  deadlineAt: '2026-01-01T00:01:00.000Z',
  startedAt: '2026-01-01T00:00:00.000Z',
  endedAt: '2026-01-01T00:00:01.000Z',
  error: null,
  result: null,
  steps: [],
};

/** Short limits: a silent replica is given up in 200 ms, a long-poll 200 ms after its wait. */
const QUICK = { answerTimeoutMs: 200, longPollMarginMs: 200, timeoutMs: 1_000 };

/** A healthy replica that records each request's method, path and key, and answers `{served: n}`. */
async function healthy(): Promise<{ url: string; seen: string[] }> {
  const seen: string[] = [];
  const { url } = await serve((request, response) => {
    seen.push(`${request.method} ${request.url} ${request.headers['idempotency-key'] ?? '-'}`);
    json(response, 200, { served: seen.length });
  });
  return { url, seen };
}

describe('HttpClient with a replica that accepts connections and never answers (frozen)', () => {
  it('sends a GET to the next replica once the frozen one is silent past answerTimeoutMs, and stays with the one that answered', async () => {
    const frozen = await silent();
    const live = await healthy();
    client = new HttpClient({ url: frozen.url, fallbackUrls: [live.url], ...QUICK });
    const started = Date.now();
    expect((await client.request({ method: 'GET', path: '/v1/volumes' })).body).toEqual({ served: 1 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(QUICK.answerTimeoutMs - 10);
    expect(client.url).toBe(`${live.url}/`);
    expect((await client.request({ method: 'GET', path: '/v1/servers' })).body).toEqual({ served: 2 });
    expect(frozen.connections()).toBe(1);
    expect(live.seen).toEqual(['GET /v1/volumes -', 'GET /v1/servers -']);
  });

  it('sends a POST with an Idempotency-Key on, with its key; one without a key is not sent again: TIMEOUT, maybe applied', async () => {
    const frozen = await silent();
    const live = await healthy();
    client = new HttpClient({ url: frozen.url, fallbackUrls: [live.url], ...QUICK });
    const keyed = { method: 'POST', path: '/v1/volumes/d1/attach', body: { server: 'web1' }, idempotencyKey: 'k-1' } as const;
    expect((await client.request(keyed)).body).toEqual({ served: 1 });
    expect(live.seen).toEqual(['POST /v1/volumes/d1/attach k-1']);

    client.close();
    client = new HttpClient({ url: frozen.url, fallbackUrls: [live.url], ...QUICK });
    const unkeyed = client.request({ method: 'POST', path: '/v1/volumes', body: { name: 'd2', sizeBytes: 1048576 } }).catch((e: unknown) => e);
    await frozen.received(2);
    const error = (await unkeyed) as BerthError;
    // It waited the whole timeoutMs (a slow create that worked must not read as failed), then gave up there.
    expect(error).toMatchObject({ code: 'TIMEOUT' });
    expect(error.message).toContain(frozen.url);
    expect(error.message).toContain('may or may not have been applied');
    expect(error.hint).toContain('not sent to another replica');
    expect(live.seen).toHaveLength(1);
  });

  it('every replica silent: TIMEOUT naming them all; a signal still gives the request up as CANCELLED', async () => {
    const [a, b] = [await silent(), await silent()];
    client = new HttpClient({ url: a.url, fallbackUrls: [b.url], ...QUICK });
    const error = (await client.request({ method: 'GET', path: '/v1/hosts' }).catch((e: unknown) => e)) as BerthError;
    expect(error).toMatchObject({ code: 'TIMEOUT' });
    expect(error.message).toBe(`the berth API at ${a.url} (nor at ${b.url}) did not answer GET /v1/hosts in time`);

    const stop = new AbortController();
    const given = client.request({ method: 'GET', path: '/v1/hosts', signal: stop.signal });
    await a.received(2);
    stop.abort();
    expect(await codeOf(given)).toBe('CANCELLED');
  });

  it('a long-poll is given its wait + longPollMarginMs, not answerTimeoutMs; a request with extra time is never taken for silent sooner', async () => {
    const frozen = await silent();
    // A real long-poll: the answer comes when the wait it asked for ends.
    const { url } = await serve((request, response) => {
      const wait = Number(new URL(request.url ?? '/', 'http://x').searchParams.get('wait') ?? 0);
      setTimeout(() => json(response, 200, { waited: wait }), wait);
    });
    client = new HttpClient({ url, fallbackUrls: [frozen.url], ...QUICK });
    expect((await client.request({ method: 'GET', path: '/v1/agent/work', query: { wait: '400' }, waitMs: 400 })).body).toEqual({ waited: 400 });
    expect((await client.request({ method: 'GET', path: '/v1/doctor', query: { wait: '400' }, extraTimeoutMs: 0 })).body).toEqual({ waited: 400 });
    expect(frozen.connections()).toBe(0);

    // The frozen replica first: the long-poll moves on once its wait and the margin passed.
    client.close();
    client = new HttpClient({ url: frozen.url, fallbackUrls: [url], ...QUICK });
    const started = Date.now();
    expect((await client.request({ method: 'GET', path: '/v1/agent/work', query: { wait: '0' }, waitMs: 300 })).body).toEqual({ waited: 0 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(300 + QUICK.longPollMarginMs - 10);
  });

  it('a client that was itself frozen keeps the answer that came meanwhile, its deadline overdue', async () => {
    const { url } = await serve((_request, response) => {
      json(response, 200, { ok: true });
      // Once the answer is written: this whole process stops for 3 answer limits (SIGSTOP as
      // the event loop sees it), and wakes with the client's timer overdue and the answer unread.
      setImmediate(() => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3 * QUICK.answerTimeoutMs));
    });
    const frozen = await silent();
    client = new HttpClient({ url, fallbackUrls: [frozen.url], ...QUICK });
    expect((await client.request({ method: 'GET', path: '/v1/volumes' })).body).toEqual({ ok: true });
    expect(frozen.connections()).toBe(0);
  });

  it('over `fetch` too: a client that was itself frozen keeps the answer that came meanwhile, its deadline overdue', async () => {
    let freeze = false;
    const { url } = await serve((_request, response) => {
      json(response, 200, { ok: true });
      if (freeze) setImmediate(() => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3 * QUICK.answerTimeoutMs));
    });
    // `fetch` loaded and its first connection made first: on a busy machine that alone can take
    // longer than the answer limit.
    await (await fetch(url)).text();
    freeze = true;
    const frozen = await silent();
    client = new HttpClient({ url, fallbackUrls: [frozen.url], ...QUICK, fetch });
    expect((await client.request({ method: 'GET', path: '/v1/volumes' })).body).toEqual({ ok: true });
    expect(frozen.connections()).toBe(0);
  });

  it('over `fetch`, a replica that stays silent is still passed over at its answer limit', async () => {
    const frozen = await silent();
    const { url } = await serve((_request, response) => json(response, 200, { ok: true }));
    client = new HttpClient({ url: frozen.url, fallbackUrls: [url], ...QUICK, fetch });
    const started = Date.now();
    expect((await client.request({ method: 'GET', path: '/v1/volumes' })).body).toEqual({ ok: true });
    expect(Date.now() - started).toBeGreaterThanOrEqual(QUICK.answerTimeoutMs - 10);
    await frozen.received(1);
  });

  it('RemoteBerthService (berth --api A,B): an attach start a frozen A took goes to B under the same key of its own', async () => {
    const frozen = await silent();
    const keys: Array<string | undefined> = [];
    const { url } = await serve((request, response) => {
      keys.push(request.headers['idempotency-key'] as string | undefined);
      json(response, 200, { operation: { ...OPERATION_DONE }, volume: VOLUME_FIXTURE, attachment: null });
    });
    const remote = new RemoteBerthService({ url: frozen.url, fallbackUrls: [url], ...QUICK, pollWaitSeconds: 1 });
    try {
      const started = Date.now();
      expect((await remote.attach({ volume: 'data1' })).operation).toEqual(OPERATION_DONE);
      // Its wait (1 s) + longPollMarginMs on A, then B at once.
      expect(Date.now() - started).toBeGreaterThanOrEqual(1_000 + QUICK.longPollMarginMs - 10);
      await frozen.received(1);
      expect(keys).toHaveLength(1);
      expect(keys[0]).toMatch(/^berth-client:[0-9a-f-]{36}$/);
      expect(remote.url).toBe(`${url}/`);
    } finally {
      await remote.close();
    }
  });

  it('RemoteBerthService (berth --api A,B): a volume list goes to B while A is frozen', async () => {
    const frozen = await silent();
    const { url } = await serve((_request, response) => json(response, 200, { volumes: [] }));
    const remote = new RemoteBerthService({ url: frozen.url, fallbackUrls: [url], ...QUICK });
    try {
      expect(await remote.listVolumes()).toEqual([]);
      expect(remote.url).toBe(`${url}/`);
    } finally {
      await remote.close();
    }
  });
});

describe('a replica killed while it handles a request (the connection reset before an answer)', () => {
  it('a write it took reads "may or may not have been applied", not only "is berth serve running?"; a refused connection stays "cannot reach"', async () => {
    const { url } = await serve((request) => {
      // Read the request, then die without a word (kill -9 of berth serve mid-request).
      request.resume();
      request.on('end', () => request.socket.destroy());
    });
    client = new HttpClient({ url });
    const lost = (await client.request({ method: 'POST', path: '/v1/volumes/d1/attach', body: {} }).catch((e: unknown) => e)) as BerthError;
    expect(lost).toMatchObject({ code: 'CONFIG', details: { unreachable: true, outcomeUnknown: true } });
    expect(lost.message).toBe(`the berth API at ${new URL(url).origin} lost the connection before it answered POST /v1/volumes/d1/attach: it may or may not have been applied`);
    expect(lost.hint).toMatch(/check whether it took effect before trying again/);
    const refused = new HttpClient({ url: 'http://127.0.0.1:1' });
    try {
      const error = (await refused.request({ method: 'POST', path: '/v1/volumes', body: {} }).catch((e: unknown) => e)) as BerthError;
      expect(error.message).toContain('cannot reach the berth API');
      expect(error.details.outcomeUnknown).toBeUndefined();
    } finally {
      refused.close();
    }
  });

  it("RemoteBerthService: an attach whose outcome wait loses the API names the started operation and how to see it; the operation's own failure stays as the API answered it", async () => {
    const running = { ...OPERATION_DONE, state: 'running' as const, endedAt: null, deadlineAt: new Date(Date.now() + 60_000).toISOString() };
    let outcome: 'reset' | 'timeout-problem' = 'reset';
    const { url } = await serve((request, response) => {
      if (request.method === 'POST') return void json(response, 202, running);
      if (outcome === 'reset') return void request.socket.destroy();
      json(response, 504, { code: 'TIMEOUT', detail: "host h1's agent did not pick up step connect", status: 504 });
    });
    const remote = new RemoteBerthService({ url, ...QUICK, pollWaitSeconds: 1 });
    try {
      const lost = (await remote.attach({ volume: 'data1' }).catch((e: unknown) => e)) as BerthError;
      expect(lost.code).toBe('CONFIG');
      expect(lost.message).toMatch(new RegExp(`^attach ${running.id} was started, and then cannot reach the berth API`));
      expect(lost.hint).toContain(`berth operation show ${running.id}`);
      expect(lost.details).toMatchObject({ operationId: running.id, outcomeUnknown: true });
      outcome = 'timeout-problem';
      const failed = (await remote.attach({ volume: 'data1' }).catch((e: unknown) => e)) as BerthError;
      expect(failed).toMatchObject({ code: 'TIMEOUT', message: "host h1's agent did not pick up step connect" });
    } finally {
      await remote.close();
    }
  });
});
