import { existsSync } from 'node:fs';
import { appendFile, mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { BerthError, type Logger } from '@berth/core';
import { DaemonError, daemonStatus, startDaemon, stopDaemon, WaitTimeoutError, type DaemonStatus, type DeviceWaiter, type StopDaemonResult } from '@berth/host';
import { QmpClient, type QmpCallOptions } from './qmp-client.js';

/** The executable, looked up on PATH. */
export const QSD_BINARY = 'qemu-storage-daemon';

/** What installs qemu-storage-daemon with its iSCSI driver on Debian and Ubuntu. */
export const QSD_INSTALL_HINT = 'apt-get install -y --no-install-recommends qemu-system-common qemu-block-extra';

// How long one throwaway first connection may take (settleMonitor); under load a hand-over that
// went wrong shows as no answer at all.
const SETTLE_ATTEMPT_MS = 2_000;

// A Unix socket path lives in a 108-byte buffer with its final NUL.
const MAX_SOCKET_PATH = 107;

/** Options of a `StorageDaemon`. */
export interface StorageDaemonOptions {
  /** The daemon's own directory (created 0700): pid file, log and QMP socket live here. */
  dir: string;
  waiter: DeviceWaiter;
  logger?: Logger;
  /** The executable (default `qemu-storage-daemon` on PATH). */
  binary?: string;
  /** How long a start may take until QMP answers, in ms (default 10 000). */
  startTimeoutMs?: number;
  /** How long a stop may take before SIGKILL, in ms (default 10 000). */
  stopTimeoutMs?: number;
}

/** Paths of a storage daemon under its directory. */
export function storageDaemonPaths(dir: string): { pidFile: string; logFile: string; socket: string } {
  return { pidFile: path.join(dir, 'qsd.pid'), logFile: path.join(dir, 'qsd.log'), socket: path.join(dir, 'qmp.sock') };
}

/** QEMU's option syntax: a comma inside a value is written twice. */
function optionValue(text: string): string {
  return text.replaceAll(',', ',,');
}

/**
 * A supervised qemu-storage-daemon: started detached through `@berth/host` (own session, output in
 * `qsd.log`, pid file `{pid, file, startTicks}` that a recycled pid cannot fool) with one QMP
 * monitor on `qmp.sock` (`--chardev` before the `--monitor` that names it), so it outlives the
 * short-lived process that started it. It holds no state of its own across restarts: whoever uses
 * it re-creates its block nodes and exports. Callers serialise `start`/`stop` between processes
 * (a file lock), because a second daemon would take over the socket path.
 */
export class StorageDaemon {
  readonly pidFile: string;
  readonly logFile: string;
  readonly socket: string;
  private readonly binary: string;

  constructor(private readonly options: StorageDaemonOptions) {
    const paths = storageDaemonPaths(options.dir);
    this.pidFile = paths.pidFile;
    this.logFile = paths.logFile;
    this.socket = paths.socket;
    this.binary = options.binary ?? QSD_BINARY;
    if (Buffer.byteLength(this.socket) > MAX_SOCKET_PATH) {
      throw new BerthError('CONFIG', `the QMP socket path ${this.socket} is longer than a Unix socket allows (${MAX_SOCKET_PATH} bytes)`, {
        hint: 'use a shorter data directory',
      });
    }
  }

  /** Whether the daemon recorded in the pid file runs (and its pid). */
  status(): Promise<DaemonStatus> {
    return daemonStatus(this.pidFile);
  }

  /** Start it unless it runs; `started` tells which. Resolves once its QMP socket accepts. */
  async ensureRunning(signal?: AbortSignal): Promise<{ pid: number; started: boolean }> {
    const status = await this.status();
    if (status.running && status.pid !== undefined) return { pid: status.pid, started: false };
    return { pid: await this.start(signal), started: true };
  }

  /**
   * Make sure it runs (starting it unless it does) and connect to its monitor. qemu 7.2 can die on
   * its own right after a start — a segfault with nothing in its log, seen once in CI (likely the
   * start-up race `settleMonitor` absorbs, two threads watching one socket) — so one found dead by
   * the start's checks or at the connect is started again, up to `starts` starts (not when it is not
   * installed). `started`: whether a start happened (the caller's exports are to be rebuilt on it).
   * `afterStart` runs after each start (a fault point for tests).
   */
  async ensureConnected(
    options: QmpCallOptions & { starts?: number; afterStart?: () => Promise<void> } = {},
  ): Promise<{ started: boolean; pid: number; qmp: QmpClient }> {
    const { signal } = options;
    const starts = options.starts ?? 3;
    let started = false;
    for (let start = 1; ; start += 1) {
      try {
        const ensured = await this.ensureRunning(signal);
        started ||= ensured.started;
        if (ensured.started) await options.afterStart?.();
        const qmp = await this.connect({ ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }), ...(signal ? { signal } : {}) });
        return { started, pid: ensured.pid, qmp };
      } catch (error) {
        const notInstalled = BerthError.is(error) && error.code === 'HOST_UNSUPPORTED';
        if (signal?.aborted === true || notInstalled || start >= starts || (await this.status()).running) throw error;
        this.options.logger?.warn({ start, err: error instanceof Error ? error.message : String(error) }, 'qemu-storage-daemon died as it started or was connected to; starting it again');
      }
    }
  }

  /** Start a new daemon (there must be none running) and wait until its QMP socket exists. */
  async start(signal?: AbortSignal): Promise<number> {
    await mkdir(this.options.dir, { recursive: true, mode: 0o700 });
    // A socket left by a killed daemon would look like a live one.
    await rm(this.socket, { force: true });
    // wait=on: the daemon accepts its first client (settleMonitor's) before its monitor starts, so
    // no listener is left in the main thread's loop when the monitor's I/O thread takes the socket
    // over — qemu 7.2's start-up race (see settleMonitor) has no window to happen in.
    const args = ['--chardev', `socket,id=qmp0,path=${optionValue(this.socket)},server=on,wait=on`, '--monitor', 'chardev=qmp0,mode=control'];
    await appendFile(this.logFile, `--- berth: starting ${this.binary} at ${new Date().toISOString()}\n`, { mode: 0o600 });
    let pid: number;
    try {
      ({ pid } = await startDaemon({ file: this.binary, args, logFile: this.logFile, pidFile: this.pidFile }));
    } catch (error) {
      if (error instanceof DaemonError && error.reason === 'not-found') {
        throw new BerthError('HOST_UNSUPPORTED', `${this.binary} is not installed`, { hint: QSD_INSTALL_HINT, cause: error });
      }
      throw new BerthError('DRIVER_ERROR', `cannot start ${this.binary}: ${error instanceof Error ? error.message : String(error)}`, {
        hint: `see ${this.logFile}`,
        cause: error,
      });
    }
    const timeoutMs = this.options.startTimeoutMs ?? 10_000;
    const startedAt = Date.now();
    try {
      await this.options.waiter.waitUntil(
        this.options.dir,
        async () => {
          if (existsSync(this.socket)) return true;
          if (!(await this.status()).running) throw await this.failure(`${this.binary} (pid ${pid}) exited before its QMP socket appeared`);
          return undefined;
        },
        { timeoutMs, what: `the QMP socket ${this.socket}`, ...(signal ? { signal } : {}) },
      );
      await this.settleMonitor(Math.max(1, timeoutMs - (Date.now() - startedAt)), signal);
    } catch (error) {
      await stopDaemon(this.pidFile, { timeoutMs: 0, signal: 'SIGKILL' }).catch(() => undefined);
      throw BerthError.is(error) ? error : await this.failure(`${this.binary} (pid ${pid}) did not open its QMP socket within ${timeoutMs} ms`);
    }
    this.options.logger?.info({ pid, socket: this.socket }, 'qemu-storage-daemon started');
    return pid;
  }

  /**
   * The first QMP client of a new daemon is a throwaway, so that no real command meets QEMU's
   * start-up race (qemu 7.2; fixed upstream in January 2026 by "monitor/qmp: cleanup SocketChardev
   * listener sources early to avoid fd handling race"). The monitor's I/O thread takes the socket
   * over from the main thread in a bottom half; under load that runs late, and until then both
   * threads watch the socket, so both may read one client's bytes into one JSON parser. Seen here
   * as `JSON parse error, stray '-ad'` on the `object-add` right after a start, and as a
   * `blockdev-add` whose secret object was never made. The answer to `qmp_capabilities` proves the
   * hand-over done (QEMU runs commands only for monitors the bottom half registered), and closing
   * this connection resets the parser, so whatever the race did to it is gone. Reproduced with the
   * daemon under `strace -f` (which widens the window): ~1 start in 100 greeted the first client
   * twice or never answered it (`scripts/start-race.mjs`). That throwaway alone did not close the
   * window: CI met `JSON parse error, stray '_capa'` on the handshake of the connection after it.
   * The daemon now starts with `wait=on` (its chardev accepts this first client before the monitor
   * exists, which is what the upstream fix does by hand), and `QmpClient.connect` takes a garbled
   * handshake for the race and connects again.
   */
  private async settleMonitor(timeoutMs: number, signal: AbortSignal | undefined): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let attempt = 0;
    let lastError = '';
    try {
      await this.options.waiter.waitUntil(
        this.options.dir,
        async () => {
          attempt += 1;
          try {
            // Its own deadline: one that hangs is closed by QmpClient.connect, and the next is tried.
            (await QmpClient.connect(this.socket, { timeoutMs: Math.max(1, Math.min(SETTLE_ATTEMPT_MS, deadline - Date.now())), ...(signal ? { signal } : {}) })).close();
            return true;
          } catch (error) {
            if (signal?.aborted) throw error;
            if (!(await this.status()).running) throw await this.failure(`${this.binary} exited while its QMP monitor started`);
            // What the race did to this connection (a second greeting, a garbled answer, none) is
            // why it is thrown away; the next one is tried at the waiter's next poll.
            lastError = error instanceof Error ? error.message : String(error);
            if (!isRefused(error)) this.options.logger?.warn({ socket: this.socket, attempt, err: lastError }, 'qemu-storage-daemon: a first QMP connection met the start-up race; thrown away');
            return undefined;
          }
        },
        { timeoutMs: Math.max(1, deadline - Date.now()), what: `the QMP monitor on ${this.socket}`, pollMs: 5, ...(signal ? { signal } : {}) },
      );
    } catch (error) {
      if (!(error instanceof WaitTimeoutError)) throw error;
      throw new BerthError('TIMEOUT', `${this.binary} opened ${this.socket}, but its QMP monitor did not answer within ${this.options.startTimeoutMs ?? 10_000} ms of its start (${attempt} connection(s)${lastError ? `; the last: ${lastError}` : ''})`, {
        hint: `see ${this.logFile}; a machine this loaded may need a longer start timeout`,
        cause: error,
      });
    }
  }

  /**
   * Connect to its QMP monitor. The socket exists from bind() a moment before listen(), so a
   * refused connect is tried again until the deadline; the monitor serves one client at a time, so
   * the greeting waits while another client is connected.
   */
  async connect(options: QmpCallOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    // A client whose connect finishes after the wait gave up is closed: it would hold the monitor.
    let gaveUp = false;
    return this.options.waiter
      .waitUntil(
        this.options.dir,
        async () => {
          try {
            const client = await QmpClient.connect(this.socket, { timeoutMs: Math.max(1, deadline - Date.now()), ...(options.signal ? { signal: options.signal } : {}) });
            if (gaveUp) client.close();
            return client;
          } catch (error) {
            if (!isRefused(error)) throw error;
            if (!(await this.status()).running) throw await this.failure(`${this.binary} is not running`);
            return undefined;
          }
        },
        { timeoutMs, what: `QMP on ${this.socket}`, pollMs: 5, ...(options.signal ? { signal: options.signal } : {}) },
      )
      .catch((error: unknown) => {
        gaveUp = true;
        throw error;
      });
  }

  /**
   * Stop it: QMP `quit` when its monitor answers, else SIGTERM; SIGKILL after the deadline. The
   * FUSE mounts of a daemon that did not quit stay behind dead: the caller unmounts them.
   */
  async stop(): Promise<StopDaemonResult> {
    const timeoutMs = this.options.stopTimeoutMs ?? 10_000;
    const status = await this.status();
    let asked = false;
    if (status.running) {
      const qmp = await this.connect({ timeoutMs: Math.min(timeoutMs, 2_000) }).catch(() => undefined);
      if (qmp) {
        asked = await qmp.execute('quit', undefined, { timeoutMs: 2_000 }).then(
          () => true,
          () => false,
        );
        qmp.close();
      }
    }
    const stopped = await stopDaemon(this.pidFile, { timeoutMs: asked ? timeoutMs : Math.min(timeoutMs, 2_000), signal: asked ? null : 'SIGTERM' });
    // A daemon that left at `quit` before the pid-file check is gone by then, but it was running.
    const result = { ...stopped, wasRunning: status.running || stopped.wasRunning, ...(status.pid === undefined ? {} : { pid: status.pid }) };
    await rm(this.socket, { force: true });
    if (result.wasRunning) this.options.logger?.info({ pid: result.pid, killed: result.killed }, 'qemu-storage-daemon stopped');
    return result;
  }

  /** The last lines of its log (berth's own start markers left out). */
  async logTail(lines = 5): Promise<string> {
    const text = await readFile(this.logFile, 'utf8').catch(() => '');
    return text
      .split('\n')
      .filter((line) => line.trim() !== '' && !line.startsWith('--- berth:'))
      .slice(-lines)
      .join(' | ');
  }

  private async failure(message: string): Promise<BerthError> {
    const tail = await this.logTail();
    return new BerthError('DRIVER_ERROR', tail ? `${message}: ${tail}` : message, {
      hint: `see ${this.logFile}`,
      details: { logFile: this.logFile },
    });
  }
}

function isRefused(error: unknown): boolean {
  if (!BerthError.is(error) || error.details.qmpClosed !== true) return false;
  const code = (error.cause as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'EAGAIN';
}
