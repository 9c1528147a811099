import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import path from 'node:path';
import { tmpdir } from 'node:os';
import { readQmpFixture, type QmpExchange } from '@berth/testkit/fixtures';
import { afterEach, beforeEach } from 'vitest';
import { QmpClient } from './qmp-client.js';

/** One recorded exchange (from `@berth/testkit/fixtures`, qemu-storage-daemon 7.2.22): request line, reply, events. */
export type RecordedExchange = QmpExchange;

/** Read the recorded `qmp-*.txt` fixture `name` (`# request:`, `# reply:`, `# events:` sections). */
export function recordedExchange(name: string): RecordedExchange {
  return readQmpFixture(name);
}

/** A fake QMP server on a Unix socket: sends `greeting`, then answers each request with `answer`. */
export interface FakeQmp {
  readonly requests: Array<Record<string, unknown>>;
  /** Every connected client, to close one from the server side. */
  readonly sockets: Set<Socket>;
  close(): Promise<void>;
}

/** What the fake server sends for one request: lines in order (`{id}` is replaced by the request's id). */
export type Answer = (request: Record<string, unknown>) => string[];

/** Start a fake QMP server at `socketPath`. */
export async function startFakeQmp(socketPath: string, greeting: string, answer: Answer): Promise<FakeQmp> {
  const requests: Array<Record<string, unknown>> = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.setEncoding('utf8');
    socket.write(`${greeting}\r\n`);
    let buffer = '';
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        const request = JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>;
        buffer = buffer.slice(nl + 1);
        requests.push(request);
        for (const line of answer(request)) socket.write(`${line.replace('"{id}"', JSON.stringify(request.id))}\r\n`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    requests,
    sockets,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** The recorded reply of `name` as the answer line, carrying the request's id. */
export function replyWithId(exchange: RecordedExchange): string {
  const reply = JSON.parse(exchange.reply) as Record<string, unknown>;
  return JSON.stringify({ ...reply, id: '{id}' });
}

/** One test's fake server and client, made by `connect` and closed after the test. */
export interface FakeQmpFixture {
  /** The test's temp directory (removed after it). */
  readonly dir: string;
  readonly server: FakeQmp | undefined;
  readonly client: QmpClient | undefined;
  /** Start a fake server answering with `answer` in the test's directory and connect a client to it. */
  connect(greeting: string, answer: Answer): Promise<QmpClient>;
}

/** Register hooks giving every test of the file its own temp directory, fake server and client. */
export function useFakeQmp(prefix: string): FakeQmpFixture {
  let dir = '';
  let server: FakeQmp | undefined;
  let client: QmpClient | undefined;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), prefix));
  });
  afterEach(async () => {
    client?.close();
    client = undefined;
    await server?.close();
    server = undefined;
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    get dir() {
      return dir;
    },
    get server() {
      return server;
    },
    get client() {
      return client;
    },
    async connect(greeting, answer) {
      const socket = path.join(dir, 'qmp.sock');
      server = await startFakeQmp(socket, greeting, answer);
      client = await QmpClient.connect(socket, { timeoutMs: 2_000 });
      return client;
    },
  };
}
