import { parentPort, workerData } from 'node:worker_threads';
import { startApiServer, type ApiServer } from '@berth/api';
import { silentLogger } from '@berth/core';
import { postgresTransactionAttempts } from '@berth/store';
import pg from 'pg';
import { fastPlugin, statementKind, type ReplicaMessage, type ReplicaStart } from './fleet-parts.js';

// One API replica of the `fleet` benchmark in a worker thread: its own event loop (and core, when
// one is free), as a replica on its own machine would have. It starts, posts its URL, and on
// 'attempts' posts its store's transaction attempts so far (the main thread's trace adds them up);
// on 'close' it closes (requests and operations in flight finish), posts them once more and ends.

const port = parentPort;
if (!port) throw new Error('fleet-replica runs as a worker thread');
const post = (message: ReplicaMessage): void => port.postMessage(message);
const start = workerData as ReplicaStart;
// With the trace on, count this replica's PostgreSQL statements by kind (the pg client's query,
// which Kysely and the notification listener both go through).
const statements = new Map<string, number>();
if (start.countStatements) {
  const query = pg.Client.prototype.query as (...args: unknown[]) => unknown;
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const first = args[0];
    const text = typeof first === 'string' ? first : typeof first === 'object' && first !== null && 'text' in first ? String(first.text) : '';
    const kind = statementKind(text);
    statements.set(kind, (statements.get(kind) ?? 0) + 1);
    return query.apply(this, args);
  } as typeof pg.Client.prototype.query;
}
let server: ApiServer | undefined;
port.on('message', (message: unknown) => {
  if (message === 'attempts') post({ kind: 'attempts', attempts: [...postgresTransactionAttempts], statements: Object.fromEntries(statements) });
  if (message !== 'close') return;
  void (async () => {
    await server?.close();
    post({ kind: 'closed', attempts: [...postgresTransactionAttempts], statements: Object.fromEntries(statements) });
    port.close();
  })();
});
try {
  server = await startApiServer({ dataDir: start.dataDir, storeUrl: start.storeUrl, env: start.env, logger: silentLogger, logLevel: 'error', extraPlugins: [fastPlugin] });
  post({ kind: 'listening', url: server.url });
} catch (error) {
  post({ kind: 'failed', message: error instanceof Error ? error.message : String(error) });
  port.close();
}
