import { readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The recorded QMP exchanges copied into this package (`fixtures/`, from qemu-storage-daemon 7.2.22). */
export const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');

/** One recorded exchange: the request line (none for the greeting), the reply and the events. */
export interface RecordedExchange {
  request: string | undefined;
  reply: string;
  events: string[];
}

/** Read `fixtures/<name>` (`# request:`, `# reply:`, `# events:` sections). */
export function recordedExchange(name: string): RecordedExchange {
  const lines = readFileSync(path.join(FIXTURES, name), 'utf8').split('\n');
  const section = (header: string, next: string | undefined): string[] => {
    const from = lines.indexOf(header) + 1;
    const to = next === undefined ? lines.length : lines.indexOf(next);
    return lines.slice(from, to).filter((l) => l.trim() !== '');
  };
  const request = section('# request:', '# reply:')[0];
  return {
    request: request === undefined || request.startsWith('(none') ? undefined : request,
    reply: section('# reply:', '# events:')[0] ?? '',
    events: section('# events:', undefined),
  };
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
