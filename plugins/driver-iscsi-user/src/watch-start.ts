import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { daemonStatus, DaemonError, startDaemon, type HostServices } from '@berth/host';
import type { UserPaths } from './export-records.js';
import type { IscsiUserOptions } from './options.js';

/** The watcher's files: its pid file (pid + start time) beside the records, its log beside the daemon's. */
export function watcherFiles(paths: UserPaths): { pidFile: string; logFile: string } {
  return { pidFile: path.join(paths.root, 'watch.pid'), logFile: path.join(paths.daemon, 'watch.log') };
}

/**
 * The watcher's entry point, built (`dist/watch-main.js`): beside this module (dist/), from src/
 * (tests run the sources), or — in the CLI's bundle, where this module's URL is the bundle's — in
 * this package as Node resolves it. Undefined when none is there (not built).
 */
export function watchMain(): string | undefined {
  const candidates = [new URL('./watch-main.js', import.meta.url), new URL('../dist/watch-main.js', import.meta.url)].map((url) => fileURLToPath(url));
  try {
    candidates.push(path.join(path.dirname(createRequire(import.meta.url).resolve('@berth/driver-iscsi-user')), 'watch-main.js'));
  } catch {
    // Not resolvable from here (the sources in a checkout): the two above.
  }
  return candidates.find((file) => existsSync(file));
}

/**
 * Make sure the data dir's watcher runs (`noopIntervalS` 0: none): started detached through
 * `@berth/host` (own session, output in its log, not holding this process open) with the data
 * dir, the host root and the options as arguments — no secret among them. The caller holds the
 * daemon lock, so two processes never start two. `started`: whether it was started now.
 */
export async function ensureWatcher(host: HostServices, dataDir: string, paths: UserPaths, options: IscsiUserOptions): Promise<{ pid: number; started: boolean } | undefined> {
  if (options.noopIntervalS === 0) return undefined;
  const { pidFile, logFile } = watcherFiles(paths);
  const status = await daemonStatus(pidFile);
  if (status.running && status.pid !== undefined) return { pid: status.pid, started: false };
  const main = watchMain();
  if (main === undefined) throw new Error('the iscsi-user watcher is not built (dist/watch-main.js): npm run build');
  await mkdir(paths.daemon, { recursive: true, mode: 0o700 });
  try {
    const { pid } = await startDaemon({
      file: process.execPath,
      args: [main, '--data-dir', dataDir, '--host-root', host.fs.root, '--options', JSON.stringify(options)],
      logFile,
      pidFile,
    });
    return { pid, started: true };
  } catch (error) {
    if (error instanceof DaemonError && error.reason === 'already-running') return { pid: (await daemonStatus(pidFile)).pid ?? 0, started: false };
    throw error;
  }
}

/** The first wait before `upkeep` starts a watcher again that died since its last restart (doubled each time, up to the cap). */
export const WATCHER_RESTART_BACKOFF_MS = 10_000;
/** The longest wait between two restarts of a watcher that keeps dying. */
export const WATCHER_RESTART_BACKOFF_MAX_MS = 10 * 60_000;

/**
 * When `upkeep` may start the watcher again. The first restart is at once (a watcher the OOM
 * killer or an admin ended); a watcher found dead again before any round saw it running — one that
 * dies at start (a bad option, a missing file) — waits 10 s, then 20 s, 40 s… up to 10 minutes,
 * instead of being started (and logged) every round. A round that finds it running ends the wait.
 */
export class WatcherRestarts {
  #waitMs = 0;
  #notBeforeMs = -Infinity;

  /** Whether a restart may happen at `nowMs`. */
  due(nowMs: number): boolean {
    return nowMs >= this.#notBeforeMs;
  }

  /** A restart happened at `nowMs`: the next one, if it dies before a round sees it running, waits longer. */
  restarted(nowMs: number): void {
    this.#waitMs = this.#waitMs === 0 ? WATCHER_RESTART_BACKOFF_MS : Math.min(this.#waitMs * 2, WATCHER_RESTART_BACKOFF_MAX_MS);
    this.#notBeforeMs = nowMs + this.#waitMs;
  }

  /** A round found the watcher running: the next death is restarted at once. */
  running(): void {
    this.#waitMs = 0;
    this.#notBeforeMs = -Infinity;
  }

  /** How long after the last restart the next may come, should the watcher die before a round sees it running (logs). */
  get nextWaitMs(): number {
    return this.#waitMs;
  }
}
