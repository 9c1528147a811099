import { once } from 'node:events';
import http from 'node:http';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { HttpClient } from './http-client.js';
import { codeOf, sendJson, testHttpServer } from './test-support.js';

// A real HTTP server on 127.0.0.1: what the client's own transport does with connections.

let client: HttpClient | undefined;
const serve = testHttpServer();
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
