import { parentPort, workerData } from 'node:worker_threads';
import { startApiServer, type ApiServer } from '@berth/api';
import { silentLogger } from '@berth/core';
import { postgresTransactionAttempts } from '@berth/store';
import { fastPlugin, type ReplicaMessage, type ReplicaStart } from './fleet-parts.js';

// One API replica of the `fleet` benchmark in a worker thread: its own event loop (and core, when
// one is free), as a replica on its own machine would have. It starts, posts its URL, and on
// 'attempts' posts its store's transaction attempts so far (the main thread's trace adds them up);
// on 'close' it closes (requests and operations in flight finish), posts them once more and ends.

const port = parentPort;
if (!port) throw new Error('fleet-replica runs as a worker thread');
const post = (message: ReplicaMessage): void => port.postMessage(message);
const start = workerData as ReplicaStart;
let server: ApiServer | undefined;
port.on('message', (message: unknown) => {
  if (message === 'attempts') post({ kind: 'attempts', attempts: [...postgresTransactionAttempts] });
  if (message !== 'close') return;
  void (async () => {
    await server?.close();
    post({ kind: 'closed', attempts: [...postgresTransactionAttempts] });
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
