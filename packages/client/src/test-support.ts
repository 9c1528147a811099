import { once } from 'node:events';
import http from 'node:http';
import type { Socket } from 'node:net';
import { afterEach } from 'vitest';
import { BerthError } from '@berth/core';

/** The code of the BerthError `promise` rejects with, or `no error`. */
export async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (BerthError.is(error)) return error.code;
    throw error;
  }
  return 'no error';
}

/**
 * A real HTTP server on 127.0.0.1 for each test that asks (`serve(handler)`), closed with its
 * connections after the test. Call once at the top of a test file.
 */
export function testHttpServer(): (handler: http.RequestListener) => Promise<{ url: string; sockets: Socket[] }> {
  let server: http.Server | undefined;
  afterEach(async () => {
    if (server === undefined) return;
    server.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
    server = undefined;
  });
  return async (handler) => {
    const sockets: Socket[] = [];
    server = http.createServer(handler);
    server.on('connection', (socket) => sockets.push(socket));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('no address');
    return { url: `http://127.0.0.1:${address.port}`, sockets };
  };
}

/** Answer `body` as JSON with `status`. */
export function sendJson(response: http.ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}
