import { BerthError, type BerthService } from '@berth/core';
import { loadConfig, openBerth, type OpenBerthOptions } from '@berth/runtime';
import { createApiApp, type ApiApp } from './app.js';
import { TokenTable } from './auth.js';
import { parseListenAddress } from './listen-address.js';

/** Environment variable naming where `node apps/api` listens when no option does. */
export const API_LISTEN_ENV = 'BERTH_API_LISTEN';

/** Options of `startApiServer`: where berth's state is (as for `openBerth`) and where to listen. */
export interface StartApiServerOptions extends OpenBerthOptions {
  /** `host:port`; else BERTH_API_LISTEN, else the config's `api.listen` (127.0.0.1:8776). */
  listen?: string;
  /** Request log level; else the config's `logLevel`. Logs are JSON lines on stderr. */
  logLevel?: string;
}

/** A running API server. */
export interface ApiServer {
  /** Its base URL, e.g. http://127.0.0.1:8776. */
  url: string;
  app: ApiApp;
  service: BerthService;
  /** Stop accepting, finish requests and operations in flight, close the service. Idempotent. */
  close(): Promise<void>;
}

/**
 * Start the HTTP app: the config (tokens are checked first, so a server with none never opens),
 * the same `openBerth` service the CLI uses, then listen. Used by `berth serve` and `node apps/api`.
 */
export async function startApiServer(options: StartApiServerOptions = {}): Promise<ApiServer> {
  const env = options.env ?? process.env;
  const config = await loadConfig(options);
  const tokens = TokenTable.fromConfig(config.api.tokens, env);
  const { host, port } = parseListenAddress(options.listen ?? env[API_LISTEN_ENV] ?? config.api.listen);
  // Recovery waits until the app listens (below): an interrupted operation's undo may be a host
  // step on an agent's host, and agents reach berth only through this API. Run first, a restarted
  // single replica blocked its own start on agents that could not reach it until each undo timed
  // out, and left the volume in error with the device still on the host.
  const service = await openBerth({ ...options, recover: false });
  let app: ApiApp | undefined;
  try {
    app = await createApiApp({
      service,
      tokens,
      defaultProject: config.defaultProject,
      logger: { level: options.logLevel ?? config.logLevel, stream: process.stderr },
      agent: { pollWaitMs: config.agent.pollWaitMs, offlineAfterMs: config.agent.offlineAfterMs },
    });
    const url = await app.listen(host, port).catch((error: unknown) => {
      const code = (error as { code?: unknown }).code;
      throw new BerthError('CONFIG', `cannot listen on ${host}:${port}${typeof code === 'string' ? ` (${code})` : ''}`, {
        cause: error,
        hint: code === 'EADDRINUSE' ? 'another process listens there: pick another --listen' : 'check --listen or api.listen in the config',
      });
    });
    const running = app;
    // One of several replicas on a shared store: heart-beat our operations, take over dead ones'.
    const stopReplica = service.startReplica?.();
    // Upkeep: a tgtd that died is back with its targets within a round, not at the next request; a
    // killed iscsi-user watcher is started again (transports, while this host has no agent); the journal is pruned.
    const stopUpkeep = service.startUpkeep?.();
    // What a process that died left half done, resumed or rolled back now that agents can reach
    // this replica. Requests are served meanwhile: one on a volume being recovered is refused
    // (CONFLICT, the volume is still attaching or detaching) until recovery has finished it.
    const recovering = recoverInBackground(service, running);
    let closing: Promise<void> | undefined;
    return {
      url,
      app: running,
      service,
      close() {
        closing ??= (async () => {
          try {
            // Recovery first, while the app still serves agents: an undo may be a host step an
            // agent reports through it (a second signal exits at once, as always).
            await recovering;
            await running.close();
            await stopReplica?.();
            await stopUpkeep?.();
          } finally {
            await service.close();
          }
        })();
        return closing;
      },
    };
  } catch (error) {
    await app?.close().catch(() => undefined);
    await service.close().catch(() => undefined);
    throw error;
  }
}

/** Run the service's recovery without blocking the caller; failures are logged, never thrown (the next start retries). */
function recoverInBackground(service: BerthService, app: ApiApp): Promise<void> {
  const recover = service.recover?.bind(service);
  if (recover === undefined) return Promise.resolve();
  return recover().then(
    (outcomes) => {
      if (outcomes.length > 0) app.fastify.log.info({ recovered: outcomes.length }, 'recovered interrupted operations');
    },
    (error: unknown) => {
      // A store that cannot be written (a full disk): what is left stays `running`, and the next
      // start, `berth reconcile` or the replica loop finishes it.
      app.fastify.log.warn({ err: error instanceof Error ? error.message : String(error) }, 'could not recover interrupted operations now');
    },
  );
}

/**
 * Close `server` gracefully on the first SIGTERM or SIGINT; resolves once it is closed. A second
 * signal while closing exits at once (code 130): an operator who insists gets the prompt back.
 */
export function closeOnSignal(server: ApiServer, onSignal?: (signal: NodeJS.Signals) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let received = false;
    const handler = (signal: NodeJS.Signals): void => {
      if (received) {
        process.exit(130);
      }
      received = true;
      onSignal?.(signal);
      server.close().then(
        () => {
          process.off('SIGTERM', handler);
          process.off('SIGINT', handler);
          resolve();
        },
        (error: unknown) => {
          process.off('SIGTERM', handler);
          process.off('SIGINT', handler);
          reject(error instanceof Error ? error : new Error(String(error)));
        },
      );
    };
    process.on('SIGTERM', handler);
    process.on('SIGINT', handler);
  });
}
