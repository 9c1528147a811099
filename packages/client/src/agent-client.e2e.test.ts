import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import type { ClaimedWork } from '@berth/core';
import { AgentClient, AGENT_WORKER_HEADER } from './agent-client.js';
import { codeOf, sendJson, testHttpServer, testSilentServer } from './test-support.js';

// The agent client against a real HTTP server on 127.0.0.1: the routes, the worker header, the
// long-poll's wait, giving a long-poll up, and fencing answers becoming CONFLICT.

let client: AgentClient | undefined;
const listen = testHttpServer();
const silent = testSilentServer();
const json = sendJson;

afterEach(() => {
  client?.close();
  client = undefined;
});

interface Seen {
  method: string;
  url: string;
  worker: string | undefined;
  authorization: string | undefined;
  body: unknown;
}

async function serve(answer: (seen: Seen, response: http.ServerResponse) => void): Promise<{ url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const { url } = await listen((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const entry: Seen = {
        method: request.method ?? '',
        url: request.url ?? '',
        worker: request.headers[AGENT_WORKER_HEADER.toLowerCase()] as string | undefined,
        authorization: request.headers.authorization,
        body: text === '' ? undefined : JSON.parse(text),
      };
      seen.push(entry);
      answer(entry, response);
    });
  });
  return { url, seen };
}

const ITEM_ID = '00000000-0000-4000-8000-000000000001';
const CLAIMED: ClaimedWork = {
  item: {
    id: ITEM_ID,
    operationId: '00000000-0000-4000-8000-000000000002',
    hostId: '00000000-0000-4000-8000-000000000003',
    step: 'connect',
    state: 'claimed',
    payload: {},
    result: null,
    error: null,
    attempts: 1,
    leaseOwner: 'w-1',
    leaseExpiresAt: '2026-12-03T10:00:00.000Z',
    createdAt: '2026-12-03T09:59:00.000Z',
    updatedAt: '2026-12-03T09:59:00.000Z',
  },
  payload: { volumeId: 'v1' },
};

describe('AgentClient', () => {
  it('registers, claims with the worker header and the wait, renews and reports', async () => {
    const { url, seen } = await serve((request, response) => {
      if (request.url === '/v1/agent/register') json(response, 200, { hostId: 'h-id', hostName: 'h1', worker: 'w-1', leaseMs: 15000, pollWaitMs: 25000 });
      else if (request.url.startsWith('/v1/agent/work?')) json(response, 200, { items: [CLAIMED] });
      else if (request.url.endsWith('/renew')) json(response, 200, { leaseExpiresAt: '2026-12-03T10:00:15.000Z' });
      else json(response, 200, {});
    });
    client = new AgentClient({ url, token: 'agent-token' });
    const registration = { instance: 'i-1', version: '0.1.0', connector: { host: 'h1' }, transports: ['loop'], consumers: ['host'] };
    expect(await client.register(registration)).toEqual({ hostId: 'h-id', hostName: 'h1', worker: 'w-1', leaseMs: 15000, pollWaitMs: 25000 });
    expect(await client.claim('w-1', { waitMs: 25000, limit: 3 })).toEqual([CLAIMED]);
    expect(await client.renew('w-1', ITEM_ID)).toEqual({ leaseExpiresAt: '2026-12-03T10:00:15.000Z' });
    await client.report('w-1', ITEM_ID, { state: 'done', result: { device: { path: '/dev/loop1', type: 'block' } } });

    expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual([
      'POST /v1/agent/register',
      'GET /v1/agent/work?wait=25000ms&limit=3',
      `POST /v1/agent/work/${ITEM_ID}/renew`,
      `POST /v1/agent/work/${ITEM_ID}/result`,
    ]);
    expect(seen.map((s) => s.worker)).toEqual([undefined, 'w-1', 'w-1', 'w-1']);
    expect(seen.every((s) => s.authorization === 'Bearer agent-token')).toBe(true);
    expect(seen[0]?.body).toEqual(registration);
    expect(seen[3]?.body).toEqual({ state: 'done', result: { device: { path: '/dev/loop1', type: 'block' } } });
  });

  it('a fenced renew or report is CONFLICT; another host\'s item is NOT_FOUND', async () => {
    const { url } = await serve((request, response) => {
      const problem = (status: number, code: string) =>
        json(response, status, { type: 'about:blank', title: code, status, code, detail: code, requestId: 'r' });
      if (request.url.endsWith('/renew')) problem(409, 'CONFLICT');
      else problem(404, 'NOT_FOUND');
    });
    client = new AgentClient({ url, token: 't' });
    expect(await codeOf(client.renew('w-1', ITEM_ID))).toBe('CONFLICT');
    expect(await codeOf(client.report('w-1', ITEM_ID, { state: 'failed', error: { code: 'TIMEOUT', message: 'late' } }))).toBe('NOT_FOUND');
  });

  it('a long-poll given up with its signal ends at once as CANCELLED', async () => {
    const { url } = await serve(() => undefined);
    client = new AgentClient({ url, token: 't' });
    const stop = new AbortController();
    const claim = client.claim('w-1', { waitMs: 60_000, limit: 1, signal: stop.signal });
    stop.abort();
    expect(await codeOf(claim)).toBe('CANCELLED');
  });

  it('goes on with the next replica when the one in use is unreachable or shutting down, and never for an answer', async () => {
    const stopping = await serve((_request, response) =>
      json(response, 503, { type: 'about:blank', title: 'CANCELLED', status: 503, code: 'CANCELLED', detail: 'the server is shutting down', requestId: 'r', details: { retryAfterSeconds: 5 } }),
    );
    const live = await serve((request, response) => {
      if (request.url.endsWith('/renew')) json(response, 409, { type: 'about:blank', title: 'CONFLICT', status: 409, code: 'CONFLICT', detail: 'fenced', requestId: 'r' });
      else json(response, 200, { items: [] });
    });
    // Port 1 of the loopback: nothing listens there, the connection is refused.
    const unused = 'http://127.0.0.1:1';
    client = new AgentClient({ url: unused, fallbackUrls: [stopping.url, live.url], token: 't' });
    expect(await codeOf(client.claim('w-1', { waitMs: 0, limit: 1 }))).toBe('CONFIG');
    expect(client.url).toBe(`${stopping.url}/`);
    expect(await codeOf(client.claim('w-1', { waitMs: 0, limit: 1 }))).toBe('CANCELLED');
    expect(client.url).toBe(`${live.url}/`);
    expect(await client.claim('w-1', { waitMs: 0, limit: 1 })).toEqual([]);
    // An answer (a fenced renew) is the replica's word: the client stays with it.
    expect(await codeOf(client.renew('w-1', ITEM_ID))).toBe('CONFLICT');
    expect(client.url).toBe(`${live.url}/`);
    expect(live.seen.map((s) => s.url)).toEqual(['/v1/agent/work?wait=0ms&limit=1', `/v1/agent/work/${ITEM_ID}/renew`]);
  });

  it('a long-poll on a frozen replica (connections accepted, never answered) ends at its wait + longPollMarginMs; the next claim goes to the other', async () => {
    const frozen = await silent();
    const live = await serve((_request, response) => json(response, 200, { items: [] }));
    client = new AgentClient({ url: frozen.url, fallbackUrls: [live.url], token: 't', longPollMarginMs: 200 });
    const started = Date.now();
    expect(await codeOf(client.claim('w-1', { waitMs: 300, limit: 1 }))).toBe('TIMEOUT');
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(490);
    expect(took).toBeLessThan(3_000);
    expect(client.url).toBe(`${live.url}/`);
    expect(await client.claim('w-1', { waitMs: 300, limit: 1 })).toEqual([]);
    expect(live.seen.map((s) => s.url)).toEqual(['/v1/agent/work?wait=300ms&limit=1']);
  });

  it('a renew or report a frozen replica took goes on to the next one at once (safe to send twice): the renew within its limitMs, the report within answerTimeoutMs', async () => {
    const frozen = await silent();
    const live = await serve((request, response) => {
      if (request.url.endsWith('/renew')) json(response, 200, { leaseExpiresAt: '2026-12-03T10:00:15.000Z' });
      else json(response, 200, { accepted: true });
    });
    // The report's limit (the client's answerTimeoutMs) far above the renew's, to tell them apart.
    client = new AgentClient({ url: frozen.url, fallbackUrls: [live.url], token: 't', answerTimeoutMs: 1_500 });
    let started = Date.now();
    expect(await client.renew('w-1', ITEM_ID, { limitMs: 300 })).toEqual({ leaseExpiresAt: '2026-12-03T10:00:15.000Z' });
    let took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(1_400);
    await frozen.received(1);
    expect(client.url).toBe(`${live.url}/`);
    // The report: the live replica is in use now; a second client starts on the frozen one again.
    client.close();
    client = new AgentClient({ url: frozen.url, fallbackUrls: [live.url], token: 't', answerTimeoutMs: 1_500 });
    started = Date.now();
    await client.report('w-1', ITEM_ID, { state: 'done', result: { ok: true } });
    took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(1_490);
    expect(took).toBeLessThan(5_000);
    await frozen.received(2);
    expect(live.seen.map((s) => [s.method, s.url, s.worker, s.body])).toEqual([
      ['POST', `/v1/agent/work/${ITEM_ID}/renew`, 'w-1', undefined],
      ['POST', `/v1/agent/work/${ITEM_ID}/result`, 'w-1', { state: 'done', result: { ok: true } }],
    ]);
    // A renew limit that is not a positive whole number of ms is refused before anything is sent.
    expect(await codeOf(client.renew('w-1', ITEM_ID, { limitMs: -1 }))).toBe('VALIDATION');
  });

  it('with no other replica, a renewal is not given up at its limitMs: a slow one that lands is waited for', async () => {
    // A replica slower than the renewal's limit (one waiting on a database lock), not frozen.
    const slow = await serve((_request, response) => {
      setTimeout(() => json(response, 200, { leaseExpiresAt: '2026-12-03T10:00:15.000Z' }), 300);
    });
    client = new AgentClient({ url: slow.url, token: 't' });
    expect(await client.renew('w-1', ITEM_ID, { limitMs: 50 })).toEqual({ leaseExpiresAt: '2026-12-03T10:00:15.000Z' });
    expect(slow.seen).toHaveLength(1);
  });

  it('an answer that is not a work list is INTERNAL naming the version hint', async () => {
    const { url } = await serve((_request, response) => json(response, 200, { items: [{ nope: true }] }));
    client = new AgentClient({ url, token: 't' });
    expect(await codeOf(client.claim('w-1', { waitMs: 0, limit: 1 }))).toBe('INTERNAL');
  });
});
