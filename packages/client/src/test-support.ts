import { EventEmitter, once } from 'node:events';
import http from 'node:http';
import net, { type Socket } from 'node:net';
import { afterEach } from 'vitest';
import { BerthError, type Volume } from '@berth/core';

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
 * A real HTTP server on 127.0.0.1 for each call (`serve(handler)`), closed with its connections
 * after the test. Call once at the top of a test file.
 */
export function testHttpServer(): (handler: http.RequestListener) => Promise<{ url: string; sockets: Socket[] }> {
  const servers: http.Server[] = [];
  afterEach(async () => {
    for (const server of servers.splice(0)) {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
  return async (handler) => {
    const sockets: Socket[] = [];
    const server = http.createServer(handler);
    servers.push(server);
    server.on('connection', (socket) => sockets.push(socket));
    return { url: await listening(server), sockets };
  };
}

/** A frozen replica as a client sees it: a server that accepts connections (the kernel does) and never answers. */
export interface SilentServer {
  url: string;
  /** Resolves when the `n`th request's bytes have arrived (the client sent it here). */
  received(n?: number): Promise<void>;
  /** How many connections it accepted. */
  connections(): number;
}

/**
 * Servers on 127.0.0.1 that take every connection and read what is sent, but never answer (a
 * SIGSTOPped `berth serve`), closed after the test. Call once at the top of a test file.
 */
export function testSilentServer(): () => Promise<SilentServer> {
  const servers: Array<{ server: net.Server; sockets: Socket[] }> = [];
  afterEach(async () => {
    for (const { server, sockets } of servers.splice(0)) {
      // Its connections never end on their own: close() would wait for them.
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
  return async () => {
    const sockets: Socket[] = [];
    const arrived = new EventEmitter();
    let requests = 0;
    const server = net.createServer((socket) => {
      sockets.push(socket);
      // A request line starts each request (these tests' requests are small: one chunk each).
      socket.on('data', (chunk: Buffer) => {
        requests += (chunk.toString('latin1').match(/^[A-Z]+ \/\S* HTTP\/1\.1\r$/gm) ?? []).length;
        arrived.emit('request');
      });
    });
    servers.push({ server, sockets });
    return {
      url: await listening(server),
      received: async (n = 1) => {
        while (requests < n) await once(arrived, 'request');
      },
      connections: () => sockets.length,
    };
  };
}

async function listening(server: net.Server): Promise<string> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no address');
  return `http://127.0.0.1:${address.port}`;
}

/** Answer `body` as JSON with `status`. */
export function sendJson(response: http.ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

/** A volume as the API answers one, for tests that need a body to send. */
export const VOLUME_FIXTURE: Volume = {
  id: '0b9f7c1e-4f7e-4d43-9a55-3f1c2d7a8e10',
  name: 'data1',
  projectId: 'default',
  sizeBytes: 1048576,
  status: 'in-use',
  backend: 'file',
  multiattach: false,
  providerLocation: '/var/lib/berth/volumes/x.img',
  createdAt: '2026-01-01T00:00:00.000Z',
  updatedAt: '2026-01-01T00:00:00.000Z',
};
