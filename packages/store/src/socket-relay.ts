import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { join } from 'node:path';

// SQLite has no NOTIFY: processes that share one database file (a `berth serve` its agents report
// to, a `berth attach` run on the same data dir) would learn of each other's work only by reading
// again. The relay carries the store's notifications between them over Unix sockets in a directory
// beside the database: each listening process binds one socket there; a notification, once its
// transaction has committed, is written to every other socket. A socket whose process died refuses
// the connection and is removed by the sender that finds it.

/** The longest Unix socket path Linux takes (`sun_path` is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

/** How long one delivery to another process may take before it is given up (a notification is a hint). */
const DELIVERY_TIMEOUT_MS = 2_000;

/** Carries a store's notifications to the other processes listening on the same database. */
export interface NotificationRelay {
  /** Send to every other listening process (best effort: never throws; `close` waits for what is under way). */
  publish(channel: string, payload: string): void;
  /**
   * Receive the other processes' notifications into `deliver` from now on (idempotent); false when
   * this process cannot be reached (its socket path would be too long), and it then learns only
   * of its own notifications.
   */
  start(deliver: (channel: string, payload: string) => void): Promise<boolean>;
  /** Stop receiving, remove this process's socket, and wait for deliveries under way. */
  close(): Promise<void>;
}

/** The relay of the processes sharing `dir` (created 0700 when needed). */
export function createSocketRelay(dir: string): NotificationRelay {
  let server: Server | undefined;
  let own: string | undefined;
  let starting: Promise<boolean> | undefined;
  const sending = new Set<Promise<void>>();

  const deliverTo = (socketPath: string, line: string): Promise<void> =>
    new Promise<void>((resolve) => {
      // Not unref'd: a process that commits and exits delivers first (bounded by the timeout).
      const socket = createConnection(socketPath);
      socket.setTimeout(DELIVERY_TIMEOUT_MS, () => socket.destroy());
      socket.on('connect', () => socket.end(line));
      socket.on('error', (error: NodeJS.ErrnoException) => {
        // Nobody listens there any more: its process died without removing it.
        if (error.code === 'ECONNREFUSED') removeQuietly(socketPath);
      });
      socket.on('close', () => resolve());
    });

  return {
    publish(channel, payload) {
      let names: string[];
      try {
        names = readdirSync(dir);
      } catch {
        return; // nobody has ever listened
      }
      const line = `${JSON.stringify({ c: channel, p: payload })}\n`;
      for (const name of names) {
        if (!name.endsWith('.sock')) continue;
        const socketPath = join(dir, name);
        if (socketPath === own) continue;
        const delivery = deliverTo(socketPath, line);
        sending.add(delivery);
        void delivery.finally(() => sending.delete(delivery));
      }
    },

    start(deliver) {
      starting ??= (async () => {
        const socketPath = join(dir, `${process.pid}-${randomBytes(6).toString('hex')}.sock`);
        if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) return false;
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        const listening = createServer((socket) => {
          let buffered = '';
          socket.setEncoding('utf8');
          socket.on('data', (text: string) => {
            buffered += text;
            for (let end = buffered.indexOf('\n'); end >= 0; end = buffered.indexOf('\n')) {
              const line = buffered.slice(0, end);
              buffered = buffered.slice(end + 1);
              const message = parseLine(line);
              if (message) deliver(message.c, message.p);
            }
          });
          socket.on('error', () => socket.destroy());
        });
        await new Promise<void>((resolve, reject) => {
          listening.once('error', reject);
          listening.listen(socketPath, () => {
            listening.off('error', reject);
            resolve();
          });
        });
        // A listening relay must not keep a CLI process alive.
        listening.unref();
        server = listening;
        own = socketPath;
        return true;
      })();
      return starting;
    },

    async close() {
      await starting?.catch(() => false);
      const listening = server;
      server = undefined;
      if (listening) await new Promise<void>((resolve) => listening.close(() => resolve()));
      if (own) removeQuietly(own);
      own = undefined;
      await Promise.allSettled([...sending]);
    },
  };
}

function parseLine(line: string): { c: string; p: string } | undefined {
  try {
    const value: unknown = JSON.parse(line);
    if (typeof value === 'object' && value !== null && typeof (value as { c?: unknown }).c === 'string' && typeof (value as { p?: unknown }).p === 'string') {
      return value as { c: string; p: string };
    }
  } catch {
    // Not one of ours: ignore it.
  }
  return undefined;
}

function removeQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // Gone already.
  }
}
