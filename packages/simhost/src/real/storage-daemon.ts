/**
 * qemu-storage-daemon as a long-running child of the simulator process. The simulated host stands
 * in for the kernel, and the kernel's iSCSI initiator is what this daemon replaces, so it is spawned
 * here with node:child_process instead of through @berth/host's CommandRunner (which runs one-shot
 * commands to completion). It is driven over QMP only; its stdout/stderr go to a log file in its
 * directory, and `stop()` ends it (QMP `quit`, then SIGKILL at the deadline).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { open, readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BerthError } from '@berth/core';
import type { CommandRunner, DeviceWaiter } from '@berth/host';
import { mountsMatching } from './proc-mounts.js';
import { QmpClient, QmpError } from './qmp-client.js';

/** The executable, found on PATH. */
export const QSD_BINARY = 'qemu-storage-daemon';

/** Options of `StorageDaemon.start`. */
export interface StorageDaemonOptions {
  /** An existing directory, owned by the caller, for the QMP socket, the log, secrets and FUSE mount points. */
  dir: string;
  runner: CommandRunner;
  waiter: DeviceWaiter;
  /** Deadline of start-up and of each stop, in ms (default 10 000). */
  startTimeoutMs?: number;
  /** Deadline of one QMP command, in ms (default 10 000). */
  qmpTimeoutMs?: number;
  binary?: string;
}

/** One iSCSI LUN to export as a FUSE file. */
export interface IscsiExportSpec {
  /** Names the QMP objects (`node-<id>`, `exp-<id>`, `sec-<id>`): letters, digits and dashes. */
  id: string;
  portal: string;
  iqn: string;
  /** The LUN as it goes on the wire (tgtd's flat addressing already applied). */
  wireLun: number;
  initiator: string;
  /** Initiator CHAP (qemu's iscsi driver has no mutual CHAP; the target does not insist on it). */
  chap?: { username: string; password: string };
  /** The FUSE mount point: created here as an empty regular file. */
  mountpoint: string;
}

const DEFAULT_TIMEOUT_MS = 10_000;

function isQmpError(error: unknown, pattern: RegExp): boolean {
  return error instanceof QmpError && pattern.test(error.desc);
}

/** A running qemu-storage-daemon and its QMP connection. */
export class StorageDaemon {
  private exitCode: number | null | undefined;
  private readonly exited: Promise<void>;
  private stopping: Promise<void> | undefined;

  private constructor(
    private readonly child: ChildProcess,
    private readonly options: StorageDaemonOptions,
    /** Path of the QMP socket. */
    readonly socketPath: string,
    /** Path of the daemon's stdout/stderr log. */
    readonly logPath: string,
    private qmp: QmpClient | undefined,
  ) {
    this.exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        this.exitCode = child.exitCode;
        resolve();
        return;
      }
      child.once('exit', (code) => {
        this.exitCode = code;
        resolve();
      });
    });
  }

  /** Start a daemon with a QMP socket in `options.dir`, wait for it and negotiate QMP. */
  static async start(options: StorageDaemonOptions): Promise<StorageDaemon> {
    const timeoutMs = options.startTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    const socketPath = path.join(options.dir, 'qmp.sock');
    const logPath = path.join(options.dir, 'qemu-storage-daemon.log');
    if (Buffer.byteLength(socketPath) > 107) {
      throw new BerthError('CONFIG', `the QMP socket path ${socketPath} is too long for a Unix socket`, { hint: 'use a shorter workDir' });
    }
    const log = await open(logPath, 'a', 0o600);
    let child: ChildProcess;
    let spawnError: Error | undefined;
    try {
      // `--chardev` must come before the `--monitor` that names it.
      child = spawn(
        options.binary ?? QSD_BINARY,
        ['--chardev', `socket,id=qmp0,path=${socketPath},server=on,wait=off`, '--monitor', 'chardev=qmp0'],
        { stdio: ['ignore', log.fd, log.fd] },
      );
      // Attached before any await: a spawn failure is emitted on the next tick.
      child.once('error', (error) => {
        spawnError = error;
      });
    } finally {
      await log.close();
    }
    const daemon = new StorageDaemon(child, options, socketPath, logPath, undefined);
    try {
      await options.waiter.waitUntil(
        options.dir,
        async () => {
          if (spawnError) {
            throw new BerthError('HOST_UNSUPPORTED', `cannot run ${options.binary ?? QSD_BINARY}: ${spawnError.message}`, {
              hint: 'install qemu-storage-daemon (apt-get install qemu-system-common qemu-block-extra)',
              cause: spawnError,
            });
          }
          if (daemon.exitCode !== undefined) throw await daemon.failure(`qemu-storage-daemon exited (code ${daemon.exitCode}) before its QMP socket appeared`);
          return existsSync(socketPath) ? true : undefined;
        },
        { timeoutMs, what: `the QMP socket ${socketPath}` },
      );
      // The socket file exists from bind(); until listen() a connect is refused, so try again.
      daemon.qmp = await options.waiter.waitUntil(
        options.dir,
        async () => {
          if (daemon.exitCode !== undefined) throw await daemon.failure(`qemu-storage-daemon exited (code ${daemon.exitCode}) during start-up`);
          try {
            return await QmpClient.connect(socketPath, { timeoutMs });
          } catch (error) {
            if ((error as NodeJS.ErrnoException).code === 'ECONNREFUSED') return undefined;
            throw error;
          }
        },
        { timeoutMs, what: `QMP on ${socketPath} to accept connections` },
      );
      return daemon;
    } catch (error) {
      await daemon.stop();
      throw error;
    }
  }

  /** The daemon's process id. */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** True while the process runs and no stop was asked for. */
  get running(): boolean {
    return this.exitCode === undefined && this.stopping === undefined;
  }

  /** Run a QMP command on the daemon. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (!this.qmp || this.exitCode !== undefined) {
      return Promise.reject(new BerthError('DRIVER_ERROR', `qemu-storage-daemon (pid ${this.pid}) is not running`));
    }
    return this.qmp.execute<T>(command, args, { timeoutMs: this.options.qmpTimeoutMs ?? DEFAULT_TIMEOUT_MS });
  }

  /**
   * Log in to the LUN (`blockdev-add` driver iscsi) and export it writable through FUSE on
   * `spec.mountpoint`. The CHAP secret goes in through a 0600 file named in `object-add` (qemu
   * echoes URLs and filenames, never secret contents), and the file is removed at once. On failure
   * everything made so far is removed again.
   */
  async addIscsiExport(spec: IscsiExportSpec): Promise<void> {
    const undo: Array<() => Promise<void>> = [];
    try {
      if (spec.chap) {
        const secretFile = path.join(this.options.dir, `sec-${spec.id}.secret`);
        await writeFile(secretFile, spec.chap.password, { mode: 0o600, flag: 'wx' });
        try {
          await this.execute('object-add', { 'qom-type': 'secret', id: `sec-${spec.id}`, file: secretFile });
        } finally {
          await unlink(secretFile).catch(() => undefined);
        }
        undo.push(() => this.execute('object-del', { id: `sec-${spec.id}` }).then(() => undefined));
      }
      await this.execute('blockdev-add', {
        driver: 'iscsi',
        'node-name': `node-${spec.id}`,
        transport: 'tcp',
        portal: spec.portal,
        target: spec.iqn,
        lun: spec.wireLun,
        'initiator-name': spec.initiator,
        ...(spec.chap ? { user: spec.chap.username, 'password-secret': `sec-${spec.id}` } : {}),
        cache: { direct: true },
      });
      undo.push(() => this.execute('blockdev-del', { 'node-name': `node-${spec.id}` }).then(() => undefined));
      await writeFile(spec.mountpoint, '', { mode: 0o600, flag: 'wx' });
      undo.push(() => unlink(spec.mountpoint).catch(() => undefined));
      await this.execute('block-export-add', { type: 'fuse', id: `exp-${spec.id}`, 'node-name': `node-${spec.id}`, mountpoint: spec.mountpoint, writable: true });
    } catch (error) {
      for (const step of undo.reverse()) await step().catch(() => undefined);
      throw error;
    }
  }

  /**
   * Remove an export made by `addIscsiExport`: `block-export-del` (and wait for the FUSE mount to
   * go), `blockdev-del` (ends the iSCSI session), `object-del` of the secret, and the mount point
   * file. Parts already gone are skipped, so it can be repeated.
   */
  async removeIscsiExport(id: string, mountpoint: string): Promise<void> {
    const timeoutMs = this.options.qmpTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (this.exitCode === undefined) {
      await this.execute('block-export-del', { id: `exp-${id}` }).catch((error: unknown) => {
        if (!isQmpError(error, /is not found/)) throw error;
      });
    } else if ((await mountsMatching((t) => t === mountpoint)).length > 0) {
      // A dead daemon cannot unmount its export ("Transport endpoint is not connected").
      await this.options.runner.run('umount', ['-l', mountpoint], { timeoutMs, reject: false });
    }
    await this.options.waiter.waitUntil(path.dirname(mountpoint), async () => ((await mountsMatching((t) => t === mountpoint)).length === 0 ? true : undefined), {
      timeoutMs,
      what: `the FUSE export on ${mountpoint} to unmount`,
    });
    if (this.exitCode === undefined) {
      // The export lets go of the node asynchronously: "Node ... is in use" until it has.
      await this.options.waiter.waitUntil(
        this.options.dir,
        async () => {
          try {
            await this.execute('blockdev-del', { 'node-name': `node-${id}` });
            return true;
          } catch (error) {
            if (isQmpError(error, /Failed to find node/)) return true;
            if (isQmpError(error, /is in use/)) return undefined;
            throw error;
          }
        },
        { timeoutMs, what: `block node node-${id} to be released` },
      );
      // There is no secret object when the login had no CHAP: any QMP error here means "none".
      await this.execute('object-del', { id: `sec-${id}` }).catch((error: unknown) => {
        if (!(error instanceof QmpError)) throw error;
      });
    }
    await unlink(mountpoint).catch(() => undefined);
  }

  /** Make a block node re-read the LUN's capacity and take `sizeBytes` (`block_resize`). */
  async resizeNode(id: string, sizeBytes: number): Promise<void> {
    await this.execute('block_resize', { 'node-name': `node-${id}`, size: sizeBytes });
  }

  /** The last lines of the daemon's log, for error messages. */
  async logTail(lines = 20): Promise<string> {
    const text = await readFile(this.logPath, 'utf8').catch(() => '');
    return text.split('\n').slice(-lines - 1).join('\n').trim();
  }

  private async failure(message: string): Promise<BerthError> {
    const tail = await this.logTail();
    return new BerthError('DRIVER_ERROR', tail ? `${message}: ${tail}` : message, { details: { log: this.logPath } });
  }

  /**
   * Stop the daemon: QMP `quit` (which unmounts its FUSE exports), SIGKILL if it has not exited by
   * the deadline, then unmount any FUSE mount it left under its directory and remove the socket.
   * Idempotent; concurrent calls share one stop.
   */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    const timeoutMs = this.options.startTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    const waitExit = (ms: number): Promise<boolean> =>
      new Promise((resolve) => {
        const timer = setTimeout(() => resolve(false), ms);
        void this.exited.then(() => {
          clearTimeout(timer);
          resolve(true);
        });
      });
    if (this.exitCode === undefined && this.child.pid !== undefined) {
      if (this.qmp && !this.qmp.closed) await this.qmp.execute('quit', undefined, { timeoutMs }).catch(() => undefined);
      else this.child.kill('SIGTERM');
      if (!(await waitExit(timeoutMs))) {
        this.child.kill('SIGKILL');
        await waitExit(timeoutMs);
      }
    }
    this.qmp?.close();
    // A killed daemon leaves its FUSE mounts behind ("Transport endpoint is not connected").
    const prefix = `${this.options.dir}/`;
    for (const mount of await mountsMatching((t) => t.startsWith(prefix))) {
      await this.options.runner.run('umount', ['-l', mount.target], { timeoutMs, reject: false });
    }
    await unlink(this.socketPath).catch(() => undefined);
  }
}
