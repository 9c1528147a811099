import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, openSync, closeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { BerthError } from '@berth/core';
import { acquireFileLock, createHostServices, type HostServices, type HostServicesOptions } from '@berth/host';
import type { FaultMatch, FaultSpec, HeldLoginMatch, HeldScanMatch, ToolFailure } from './faults.js';
import { KernelDaemon, daemonMainPath } from './kernel-daemon.js';
import type { ChapAccount, ModelLunInfo, ModelLunSpec, ModelTargetInfo, ModelTargetSpec } from './model-target-access.js';
import type { SimState } from './sim-state.js';
import type { TargetAccess } from './target-access.js';
import { PIDFILE_RELATIVE, SOCKET_RELATIVE, sendRequest, type ControlResponse } from './tool-protocol.js';

/**
 * A module the detached daemon imports to make its `TargetAccess`: a function export is called
 * with `options`, a class export is constructed (`{ module: '@berth/simhost/real',
 * exportName: 'RealTargetAccess', options }`).
 */
export interface TargetAccessFactoryRef {
  /** Module specifier or absolute path the daemon can import. */
  module: string;
  /** The export to call (default `default`). */
  exportName?: string;
  /** JSON options passed to it. */
  options?: unknown;
}

/** Options of `SimulatedHost.start`. */
export interface SimulatedHostOptions {
  /** The root directory (default: a new dir under `BERTH_SIMHOST_TMPDIR` or the OS temp dir, removed by `stop()`). */
  root?: string;
  /** Delay between a scan finding a disk and its /dev node appearing, ms (default 20). */
  deviceDelayMs?: number;
  /** Initiator IQN for `/etc/iscsi/initiatorname.iscsi` (default: a random one). */
  initiatorName?: string;
  /** What stands behind sessions (in-process only; default: `ModelTargetAccess`). */
  targetAccess?: TargetAccess;
  /** Detached only: how the daemon makes its `TargetAccess` (default: the model). */
  targetAccessFactory?: TargetAccessFactoryRef;
  /** Run the kernel daemon as its own process (it outlives this one until `stop()`). */
  detached?: boolean;
  /** Faults set from the start. */
  faults?: FaultSpec;
  /** Targets the model SAN starts with. */
  san?: { targets: ModelTargetSpec[] };
}

/** What a detached daemon reads from its config file. */
export interface DetachedConfig {
  root: string;
  deviceDelayMs?: number;
  initiatorName?: string;
  targetAccessFactory?: TargetAccessFactoryRef;
  faults?: FaultSpec;
  san?: { targets: ModelTargetSpec[] };
}

type Call = (method: string, params?: unknown[]) => Promise<unknown>;

/** The model SAN of a simulated host (async: it may live in the detached daemon). */
export class SimSan {
  constructor(private readonly call: Call) {}
  /** Add a target with its LUNs (sparse files). */
  async addTarget(spec: ModelTargetSpec): Promise<ModelTargetInfo> {
    return (await this.call('san.addTarget', [spec])) as ModelTargetInfo;
  }
  /** Remove a target (live sessions go on). */
  async removeTarget(iqn: string): Promise<void> {
    await this.call('san.removeTarget', [iqn]);
  }
  /** Set or clear incoming CHAP. */
  async setChap(iqn: string, chap: ChapAccount | undefined): Promise<void> {
    await this.call('san.setChap', [iqn, chap ?? null]);
  }
  /** Set or clear outgoing (mutual) CHAP. */
  async setMutualChap(iqn: string, chap: ChapAccount | undefined): Promise<void> {
    await this.call('san.setMutualChap', [iqn, chap ?? null]);
  }
  /** Set the allowed initiators, or `undefined` for all. */
  async setAcl(iqn: string, acl: string[] | undefined): Promise<void> {
    await this.call('san.setAcl', [iqn, acl ?? null]);
  }
  /** Add a LUN. */
  async addLun(iqn: string, lun: number, spec: ModelLunSpec): Promise<ModelLunInfo> {
    return (await this.call('san.addLun', [iqn, lun, spec])) as ModelLunInfo;
  }
  /** Remove a LUN. */
  async removeLun(iqn: string, lun: number): Promise<void> {
    await this.call('san.removeLun', [iqn, lun]);
  }
  /** Grow a LUN (seen by the kernel after a rescan). */
  async growLun(iqn: string, lun: number, sizeBytes: number): Promise<void> {
    await this.call('san.growLun', [iqn, lun, sizeBytes]);
  }
  /** Require discovery CHAP, or `undefined` for none. */
  async setDiscoveryChap(chap: ChapAccount | undefined): Promise<void> {
    await this.call('san.setDiscoveryChap', [chap ?? null]);
  }
  /** Every target as it is now. */
  async targets(): Promise<ModelTargetInfo[]> {
    return (await this.call('san.targets')) as ModelTargetInfo[];
  }
}

/** The fault switches of a simulated host (async: they may live in the detached daemon). */
export class SimFaults {
  constructor(private readonly call: Call) {}
  /** Logins matching `match` fail with `exitCode` (`times` times, default always). */
  async failLogin(fault: FaultMatch & { exitCode: number; times?: number }): Promise<void> {
    await this.call('faults.failLogin', [fault]);
  }
  /** Logins to `portal` hang `connectTimeoutMs` (default 200) then fail with 8. */
  async unreachablePortal(portal: string, connectTimeoutMs?: number): Promise<void> {
    await this.call('faults.unreachablePortal', connectTimeoutMs === undefined ? [portal] : [portal, connectTimeoutMs]);
  }
  /** Matching devices appear `extraDelayMs` later. */
  async slowDevice(fault: FaultMatch & { extraDelayMs: number }): Promise<void> {
    await this.call('faults.slowDevice', [fault]);
  }
  /** Matching devices appear in sysfs but never in /dev. */
  async deviceNeverAppears(fault: FaultMatch): Promise<void> {
    await this.call('faults.deviceNeverAppears', [fault]);
  }
  /** The connection of session `sid` is lost: FAILED, devices blocked. */
  async loseSession(sid: number): Promise<void> {
    await this.call('faults.loseSession', [sid]);
  }
  /** The connection of `sid` is back. */
  async restoreSession(sid: number): Promise<void> {
    await this.call('faults.restoreSession', [sid]);
  }
  /** recovery_tmo passed: FREE, devices transport-offline. */
  async expireSession(sid: number): Promise<void> {
    await this.call('faults.expireSession', [sid]);
  }
  /** Matching fake tool runs fail with `exitCode` (and `stdout`/`stderr`) without doing anything. */
  async failTool(failure: ToolFailure): Promise<void> {
    await this.call('faults.failTool', [failure]);
  }
  /** Stop multipathd: `multipathd` gets no answer (rc 1), maps stay, nothing reloads or flushes them. */
  async stopMultipathd(): Promise<void> {
    await this.call('faults.setMultipathd', [false]);
  }
  /** Start multipathd: it takes in every disk and map, as on `reconfigure`. */
  async startMultipathd(): Promise<void> {
    await this.call('faults.setMultipathd', [true]);
  }
  /** multipathd misses new disks: a map forms only on `multipathd add path` or `reconfigure`. */
  async multipathdMissesNewPaths(on = true): Promise<void> {
    await this.call('faults.multipathdMissesNewPaths', [on]);
  }
  /** Park the scans of matching LUNs before the kernel finds anything (see `FaultSpec.heldScans`). */
  async holdScans(match: HeldScanMatch): Promise<void> {
    await this.call('faults.holdScans', [match]);
  }
  /** Hold the logins to matching portals, alive, until released (see `FaultSpec.heldLogins`). */
  async holdLogins(match: HeldLoginMatch): Promise<void> {
    await this.call('faults.holdLogins', [match]);
  }
  /** Let every held login go on (each logs in as usual). */
  async releaseLogins(): Promise<void> {
    await this.call('faults.releaseLogins');
  }
  /** Hold a multipath map open (by name or `dm-N`), as a mounted filesystem would: it cannot be flushed. */
  async holdMapOpen(map: string): Promise<void> {
    await this.call('faults.holdMapOpen', [map, true]);
  }
  /** Let go of a map held open. */
  async releaseMap(map: string): Promise<void> {
    await this.call('faults.holdMapOpen', [map, false]);
  }
  /** Replace every fault with a spec (what `faults.json` holds). */
  async load(spec: FaultSpec): Promise<void> {
    await this.call('faults.load', [spec]);
  }
  /** The faults now set. */
  async current(): Promise<FaultSpec> {
    return (await this.call('faults.get')) as FaultSpec;
  }
  /** Remove every fault. */
  async clear(): Promise<void> {
    await this.call('faults.clear');
  }
}

const TEMP_PREFIX = 'berth-simhost-';

/**
 * Where temp roots are made: `BERTH_SIMHOST_TMPDIR` when set (a tmpfs makes device creation about
 * ten times faster on a slow disk: every sysfs attribute is a file), else the OS temp dir.
 */
function tempParent(): string {
  return process.env.BERTH_SIMHOST_TMPDIR || os.tmpdir();
}

/** How long a start waits for another process's start of the same root (a daemon starts in seconds). */
const START_LOCK_TIMEOUT_MS = 60_000;

/**
 * A simulated Linux host for iSCSI: a root directory with the kernel's view (`sys/`, `dev/`,
 * `etc/iscsi/`, `etc/multipath/`) and fake `iscsiadm`, `blockdev`, `multipath` and `multipathd`
 * in `bin/`, driven by a kernel daemon in this process or detached. Drivers run against it
 * unchanged through `hostServices()`.
 */
export class SimulatedHost {
  /** The root directory everything lives under. */
  readonly root: string;
  /** Where the fake tools are (put first on PATH). */
  readonly binDir: string;
  /** The model SAN (calls fail when the host runs another TargetAccess). */
  readonly san: SimSan;
  /** Fault switches. */
  readonly faults: SimFaults;
  /** The in-process daemon, when the kernel runs in this process. */
  readonly daemon: KernelDaemon | undefined;
  private readonly ownsRoot: boolean;
  private readonly child: ChildProcess | undefined;
  private stopped: Promise<void> | undefined;

  private constructor(root: string, daemon: KernelDaemon | undefined, ownsRoot: boolean, child?: ChildProcess) {
    this.root = root;
    this.binDir = path.join(root, 'bin');
    this.daemon = daemon;
    this.ownsRoot = ownsRoot;
    this.child = child;
    const call: Call = daemon ? async (method, params) => daemon.control(method, params) : (method, params) => controlCall(root, method, params);
    this.san = new SimSan(call);
    this.faults = new SimFaults(call);
  }

  /** Start a simulated host (a temp root unless `root` is given). */
  static async start(options: SimulatedHostOptions = {}): Promise<SimulatedHost> {
    const ownsRoot = options.root === undefined;
    const root = options.root ? path.resolve(options.root) : await fsp.mkdtemp(path.join(tempParent(), TEMP_PREFIX));
    try {
      if (options.detached) {
        if (options.targetAccess) {
          throw new BerthError('VALIDATION', 'a detached simulated host cannot take a TargetAccess object', {
            hint: 'pass targetAccessFactory (a module the daemon imports) instead',
          });
        }
        const child = await spawnDaemon(root, options);
        return new SimulatedHost(root, undefined, ownsRoot, child);
      }
      const daemon = await KernelDaemon.start({
        root,
        ...(options.deviceDelayMs === undefined ? {} : { deviceDelayMs: options.deviceDelayMs }),
        ...(options.initiatorName === undefined ? {} : { initiatorName: options.initiatorName }),
        ...(options.targetAccess ? { targetAccess: options.targetAccess } : {}),
        ...(options.faults ? { faults: options.faults } : {}),
        ...(options.san ? { san: options.san } : {}),
      });
      return new SimulatedHost(root, daemon, ownsRoot);
    } catch (error) {
      if (ownsRoot) await fsp.rm(root, { recursive: true, force: true });
      throw error;
    }
  }

  /** Attach to the detached daemon already serving `root`; throws NOT_FOUND when none answers. */
  static async connect(root: string): Promise<SimulatedHost> {
    const resolved = path.resolve(root);
    try {
      await controlCall(resolved, 'ping');
    } catch (error) {
      throw new BerthError('NOT_FOUND', `no simulated host is running at ${resolved}`, {
        hint: 'start one with SimulatedHost.ensureRunning(root)',
        cause: error,
      });
    }
    return new SimulatedHost(resolved, undefined, false);
  }

  /**
   * The detached daemon at `root`: the running one, or a new one started with `options`. Processes
   * asking at once (two `berth --simulate` commands) start one daemon between them: the start is
   * taken in turns under a lock file in the root, each looking again once it holds it (before,
   * each started its own, and all but one were left running, unreachable).
   */
  static async ensureRunning(root: string, options: Omit<SimulatedHostOptions, 'root' | 'detached'> = {}): Promise<SimulatedHost> {
    const resolved = path.resolve(root);
    const running = await SimulatedHost.connectIfRunning(resolved);
    if (running) return running;
    const runDir = path.join(resolved, path.dirname(SOCKET_RELATIVE));
    await fsp.mkdir(runDir, { recursive: true });
    const release = await acquireFileLock(path.join(runDir, 'start.lock'), { timeoutMs: START_LOCK_TIMEOUT_MS, what: `the start of the simulated host at ${resolved}` });
    try {
      return (await SimulatedHost.connectIfRunning(resolved)) ?? (await SimulatedHost.start({ ...options, root: resolved, detached: true }));
    } finally {
      await release();
    }
  }

  /** The daemon serving `root`, or undefined when none answers. */
  private static async connectIfRunning(root: string): Promise<SimulatedHost | undefined> {
    try {
      return await SimulatedHost.connect(root);
    } catch (error) {
      if (error instanceof BerthError && error.code === 'NOT_FOUND') return undefined;
      throw error;
    }
  }

  /** `@berth/host` services pointed at this host: rooted filesystem, fake tools first on PATH. */
  hostServices(options: Omit<HostServicesOptions, 'root' | 'pathPrepend'> = {}): HostServices {
    return createHostServices({ ...options, root: this.root, pathPrepend: [this.binDir] });
  }

  /** Sessions, devices, login counters, multipath maps and multipathd, as they are now. */
  async state(): Promise<SimState> {
    if (this.daemon) return this.daemon.state();
    return (await controlCall(this.root, 'state')) as SimState;
  }

  /**
   * Log everything out, close the target side, stop the daemon (a detached one too), and remove
   * the root when `start()` made it. Idempotent.
   */
  stop(): Promise<void> {
    this.stopped ??= (async () => {
      if (this.daemon) {
        await this.daemon.stop();
      } else {
        await stopDetached(this.root, this.child);
      }
      if (this.ownsRoot) await fsp.rm(this.root, { recursive: true, force: true });
    })();
    return this.stopped;
  }
}

async function controlCall(root: string, method: string, params?: unknown[]): Promise<unknown> {
  const reply = await sendRequest<ControlResponse>(path.join(root, SOCKET_RELATIVE), { type: 'control', method, ...(params ? { params } : {}) });
  if (!reply.ok) throw new BerthError('INTERNAL', `simulated host call ${method} failed: ${reply.error}`);
  return reply.result;
}

async function spawnDaemon(root: string, options: SimulatedHostOptions): Promise<ChildProcess> {
  const runDir = path.join(root, 'run/simhost');
  await fsp.mkdir(runDir, { recursive: true });
  const config: DetachedConfig = {
    root,
    ...(options.deviceDelayMs === undefined ? {} : { deviceDelayMs: options.deviceDelayMs }),
    ...(options.initiatorName === undefined ? {} : { initiatorName: options.initiatorName }),
    ...(options.targetAccessFactory ? { targetAccessFactory: options.targetAccessFactory } : {}),
    ...(options.faults ? { faults: options.faults } : {}),
    ...(options.san ? { san: options.san } : {}),
  };
  const configPath = path.join(runDir, 'config.json');
  await fsp.writeFile(configPath, JSON.stringify(config), { mode: 0o600 });
  const logFd = openSync(path.join(runDir, 'kernel.log'), 'a');
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [daemonMainPath(), configPath], { detached: true, stdio: ['ignore', logFd, logFd, 'pipe'] });
  } finally {
    closeSync(logFd);
  }
  const ready = child.stdio[3] as Readable;
  await new Promise<void>((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => fail(new Error('the simulated kernel daemon did not start within 20 s')), 20_000);
    const fail = (error: Error): void => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new BerthError('INTERNAL', `${error.message} (see ${path.join(runDir, 'kernel.log')})`, { cause: error }));
    };
    ready.setEncoding('utf8');
    ready.on('data', (chunk: string) => {
      text += chunk;
      if (text.includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => fail(new Error(`the simulated kernel daemon exited with ${code}`)));
    child.once('error', (error) => fail(error));
  });
  child.removeAllListeners('exit');
  ready.destroy();
  child.unref();
  return child;
}

async function stopDetached(root: string, child: ChildProcess | undefined): Promise<void> {
  const pidText = await fsp.readFile(path.join(root, PIDFILE_RELATIVE), 'utf8').catch(() => undefined);
  const pid = child?.pid ?? (pidText ? Number(pidText.trim()) : undefined);
  try {
    await controlCall(root, 'shutdown');
  } catch {
    if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGTERM');
  }
  if (pid === undefined) return;
  const deadline = Date.now() + 20_000;
  if (child && child.exitCode === null && child.signalCode === null) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 20_000);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  } else {
    // Not our child: no exit event to wait on, so check until the process is gone.
    while (alive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 25));
  }
  if (alive(pid)) process.kill(pid, 'SIGKILL');
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
