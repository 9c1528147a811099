import { createServer, type Server, type Socket } from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import type { QmpExchange } from '@berth/testkit/fixtures';

/** A fake QMP server that replays recorded exchanges in order over a Unix socket. */
export interface FakeQmpServer {
  /** Every request received, as parsed JSON (with the client's id). */
  readonly requests: Array<Record<string, unknown>>;
  /** Requests that did not match the recorded one (the test should expect none). */
  readonly mismatches: string[];
  close(): Promise<void>;
}

/** Options of the fake server. */
export interface FakeQmpOptions {
  /** The greeting line sent on connect (the recorded `qmp-greeting.txt` reply). */
  greeting: string;
  /** Answer nothing to requests after this many exchanges (to test timeouts). */
  silentAfter?: number;
  /** Hold replies until this many requests are waiting, then answer them last-first (to test ids). */
  reverseBatch?: number;
}

function withoutId(value: Record<string, unknown>): Record<string, unknown> {
  const { id: _id, ...rest } = value;
  return rest;
}

/**
 * Listen on `socketPath`; each request must equal the next recorded request (ignoring the client's
 * `id`). The recorded events are sent first, as qemu sent them, then the reply carrying the id.
 * After a `quit` reply the connection is closed, as qemu does.
 */
export async function startFakeQmpServer(socketPath: string, script: readonly QmpExchange[], options: FakeQmpOptions): Promise<FakeQmpServer> {
  const requests: Array<Record<string, unknown>> = [];
  const mismatches: string[] = [];
  const sockets = new Set<Socket>();
  let next = 0;

  function answer(socket: Socket, request: Record<string, unknown>): void {
    const exchange = script[next++];
    const expected = exchange?.request === undefined ? undefined : (JSON.parse(exchange.request) as Record<string, unknown>);
    if (!exchange || !expected || !isDeepStrictEqual(withoutId(request), expected)) {
      mismatches.push(`request ${next}: got ${JSON.stringify(withoutId(request))}, recorded ${exchange?.request ?? '(nothing)'}`);
      socket.write(`${JSON.stringify({ error: { class: 'GenericError', desc: 'unexpected request' }, id: request.id })}\n`);
      return;
    }
    for (const event of exchange.events) socket.write(`${event}\n`);
    const reply = JSON.parse(exchange.reply) as Record<string, unknown>;
    socket.write(`${JSON.stringify({ ...reply, ...(request.id === undefined ? {} : { id: request.id }) })}\n`);
    if (expected.execute === 'quit') socket.end();
  }

  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.setEncoding('utf8');
    socket.write(`${options.greeting}\n`);
    let buffer = '';
    let held: Array<Record<string, unknown>> = [];
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        const request = JSON.parse(line) as Record<string, unknown>;
        requests.push(request);
        if (options.silentAfter !== undefined && requests.length > options.silentAfter) continue;
        if (options.reverseBatch !== undefined && request.execute !== 'qmp_capabilities') {
          held.push(request);
          if (held.length < options.reverseBatch) continue;
          // Answer in recorded order but write the later replies first.
          const batch = held;
          held = [];
          const replies: Array<{ request: Record<string, unknown>; exchange: QmpExchange | undefined }> = batch.map((r) => ({ request: r, exchange: script[next++] }));
          for (const { request: r, exchange } of replies.reverse()) {
            const reply = JSON.parse(exchange?.reply ?? '{"return": {}}') as Record<string, unknown>;
            socket.write(`${JSON.stringify({ ...reply, id: r.id })}\n`);
          }
          continue;
        }
        answer(socket, request);
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  return {
    requests,
    mismatches,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
