import { randomBytes } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { BerthError } from '@berth/core';
import { createCommandRunner, type CommandRunner } from '@berth/host';
import { runBlockdev } from './blockdev.js';
import { DmMultipath } from './dm-multipath.js';
import { FaultSet, type FaultSpec, type HeldLoginMatch, type HeldScanMatch, type ToolFailure } from './faults.js';
import { runIscsiadm } from './iscsiadm/index.js';
import { runMultipath } from './multipath-tool.js';
import { runMultipathd } from './multipathd-tool.js';
import { ModelTargetAccess, type ModelTargetSpec } from './model-target-access.js';
import { NodeDb } from './node-db.js';
import { SimKernel } from './sim-kernel.js';
import type { SimState } from './sim-state.js';
import type { TargetAccess } from './target-access.js';
import { runTee } from './tee-tool.js';
import { SOCKET_RELATIVE, type ControlRequest, type ControlResponse, type ToolResult } from './tool-protocol.js';
import { decodeToolCall, encodeToolResult, isToolCall, type ToolCall } from './tool-wire.js';

/** A fake tool: argv (and what it read on stdin: tee only) in, what it prints and its exit code out. */
export type ToolHandler = (argv: string[], daemon: KernelDaemon, stdin: Buffer) => Promise<ToolResult>;

/** The default delay between a device in sysfs and its /dev node (udev lagging the kernel), ms. */
export const DEFAULT_DEVICE_DELAY_MS = 20;

/** Options of the kernel daemon. */
export interface KernelDaemonOptions {
  /** The simulated root (made when missing). */
  root: string;
  deviceDelayMs?: number;
  /** The initiator IQN written to `/etc/iscsi/initiatorname.iscsi` (default: a random Debian-style one). */
  initiatorName?: string;
  /** What stands behind sessions (default: a `ModelTargetAccess` with its disks under the root). */
  targetAccess?: TargetAccess;
  /** Faults set from the start. */
  faults?: FaultSpec;
  /** Targets the model SAN starts with (model only). */
  san?: { targets: ModelTargetSpec[] };
}

/**
 * The simulated host's kernel daemon: the kernel model, the node database, the faults and the
 * target side, serving the fake tools and control calls on `<root>/run/simhost/kernel.sock`.
 * It runs in the test's process or detached (see `daemon-main.ts`).
 */
export class KernelDaemon {
  readonly root: string;
  readonly binDir: string;
  readonly socketPath: string;
  readonly kernel: SimKernel;
  /** device-mapper multipath and multipathd. */
  readonly multipath: DmMultipath;
  readonly db: NodeDb;
  readonly faults: FaultSet;
  readonly targetAccess: TargetAccess;
  /** The model SAN when the daemon made its own `ModelTargetAccess`. */
  readonly model: ModelTargetAccess | undefined;
  readonly runner: CommandRunner;
  private readonly tools = new Map<string, ToolHandler>();
  private server: net.Server | undefined;
  private readonly connections = new Set<net.Socket>();
  private stopping: Promise<void> | undefined;

  private constructor(options: KernelDaemonOptions) {
    this.root = path.resolve(options.root);
    this.binDir = path.join(this.root, 'bin');
    this.socketPath = path.join(this.root, SOCKET_RELATIVE);
    if (Buffer.byteLength(this.socketPath) > 107) {
      throw new BerthError('VALIDATION', `the simulated root ${this.root} is too long for its Unix socket path (${this.socketPath})`, {
        hint: 'use a shorter root directory',
      });
    }
    this.runner = createCommandRunner({ defaultTimeoutMs: 30_000 });
    this.faults = new FaultSet();
    if (options.faults) this.faults.load(options.faults);
    this.model = options.targetAccess ? undefined : new ModelTargetAccess({ workDir: path.join(this.root, 'var/lib/simhost/san') });
    this.targetAccess = options.targetAccess ?? this.model!;
    this.db = new NodeDb(path.join(this.root, 'etc/iscsi'));
    this.kernel = new SimKernel({
      root: this.root,
      targetAccess: this.targetAccess,
      runner: this.runner,
      deviceDelayMs: options.deviceDelayMs ?? DEFAULT_DEVICE_DELAY_MS,
      faults: this.faults,
    });
    this.multipath = new DmMultipath({
      root: this.root,
      kernel: this.kernel,
      faults: this.faults,
      runner: this.runner,
      deviceDelayMs: options.deviceDelayMs ?? DEFAULT_DEVICE_DELAY_MS,
    });
    this.tools.set('iscsiadm', (argv) =>
      runIscsiadm(argv, { kernel: this.kernel, db: this.db, targetAccess: this.targetAccess, initiatorName: () => this.initiatorName() }),
    );
    this.tools.set('blockdev', (argv) => runBlockdev(argv, this.kernel, this.runner, this.multipath));
    this.tools.set('multipath', (argv) => runMultipath(argv, { dm: this.multipath, kernel: this.kernel, root: this.root }));
    this.tools.set('multipathd', (argv) => runMultipathd(argv, { dm: this.multipath, faults: this.faults }));
    this.tools.set('tee', (argv, _daemon, stdin) => runTee(argv, stdin, { root: this.root, kernel: this.kernel }));
  }

  /** Lay out the root, boot the kernel model and listen. */
  static async start(options: KernelDaemonOptions): Promise<KernelDaemon> {
    const daemon = new KernelDaemon(options);
    try {
      await daemon.setup(options);
    } catch (error) {
      await daemon.stop().catch(() => undefined);
      throw error;
    }
    return daemon;
  }

  /** Add (or replace) a fake tool and write its executable into `<root>/bin`. */
  async registerTool(name: string, handler: ToolHandler): Promise<void> {
    this.tools.set(name, handler);
    await this.writeBin(name);
  }

  /** Sessions, devices, login counters, multipath maps and multipathd, for assertions. */
  async state(): Promise<SimState> {
    await this.multipath.idle();
    return { ...this.kernel.state(), ...this.multipath.state() };
  }

  /** The initiator IQN from `/etc/iscsi/initiatorname.iscsi`. */
  async initiatorName(): Promise<string> {
    const text = await fsp.readFile(path.join(this.root, 'etc/iscsi/initiatorname.iscsi'), 'utf8').catch(() => '');
    const match = /^InitiatorName=(.+)$/m.exec(text);
    return match?.[1]?.trim() ?? '';
  }

  /** Run one control call (the same calls the detached daemon answers on its socket). */
  async control(method: string, params: unknown): Promise<unknown> {
    const args = Array.isArray(params) ? (params as unknown[]) : params === undefined ? [] : [params];
    const model = (): ModelTargetAccess => {
      if (!this.model) throw new BerthError('INVALID_STATE', 'this simulated host has no model SAN: it runs with another TargetAccess');
      return this.model;
    };
    const f = this.faults;
    const k = this.kernel;
    // A fault that starts or stops multipathd is done when the call returns.
    const settled = async (fn: () => unknown): Promise<void> => {
      await fn();
      await this.multipath.idle();
    };
    const table: Record<string, (...a: never[]) => unknown> = {
      ping: () => ({ pid: process.pid, root: this.root }),
      state: () => this.state(),
      'faults.get': () => f.current(),
      'faults.load': (spec: FaultSpec) => settled(() => f.load(spec)),
      'faults.clear': () => settled(() => f.clear()),
      'faults.failTool': (failure: ToolFailure) => f.failTool(failure),
      'faults.setMultipathd': (running: boolean) => settled(() => f.setMultipathd(running)),
      'faults.multipathdMissesNewPaths': (on: boolean) => settled(() => f.setMultipathdMissesNewPaths(on)),
      'faults.holdMapOpen': (map: string, open: boolean) => settled(() => f.holdMapOpen(map, open)),
      'faults.holdScans': (match: HeldScanMatch) => f.holdScans(match),
      'faults.holdLogins': (match: HeldLoginMatch) => f.holdLogins(match),
      'faults.releaseLogins': () => f.releaseLogins(),
      'faults.failLogin': (fault: Parameters<FaultSet['failLogin']>[0]) => f.failLogin(fault),
      'faults.unreachablePortal': (portal: string, ms?: number) => f.unreachablePortal(portal, ms),
      'faults.slowDevice': (fault: Parameters<FaultSet['slowDevice']>[0]) => f.slowDevice(fault),
      'faults.deviceNeverAppears': (fault: Parameters<FaultSet['deviceNeverAppears']>[0]) => f.deviceNeverAppears(fault),
      'faults.loseSession': (sid: number) => settled(() => k.loseSession(sid)),
      'faults.restoreSession': (sid: number) => settled(() => k.restoreSession(sid)),
      'faults.expireSession': (sid: number) => settled(() => k.expireSession(sid)),
      'san.addTarget': (spec: ModelTargetSpec) => model().addTarget(spec),
      'san.removeTarget': (iqn: string) => model().removeTarget(iqn),
      'san.setChap': (iqn: string, chap: never) => model().setChap(iqn, chap ?? undefined),
      'san.setMutualChap': (iqn: string, chap: never) => model().setMutualChap(iqn, chap ?? undefined),
      'san.setAcl': (iqn: string, acl: string[] | null) => model().setAcl(iqn, acl ?? undefined),
      'san.addLun': (iqn: string, lun: number, spec: never) => model().addLun(iqn, lun, spec),
      'san.removeLun': (iqn: string, lun: number) => model().removeLun(iqn, lun),
      'san.growLun': (iqn: string, lun: number, size: number) => model().growLun(iqn, lun, size),
      'san.setDiscoveryChap': (chap: never) => model().setDiscoveryChap(chap ?? undefined),
      'san.targets': () => model().targets(),
    };
    const fn = table[method];
    if (!fn) throw new BerthError('VALIDATION', `unknown simulated host call ${method}`);
    return (fn as (...a: unknown[]) => unknown)(...args);
  }

  /** Log everything out, release the target side, stop listening. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const server = this.server;
      this.server = undefined;
      if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of this.connections) c.destroy();
      await this.kernel.close().catch(() => undefined);
      await this.multipath.close().catch(() => undefined);
      // A real-backed disk still held open is left to the kernel and reported here (the daemon's log).
      await this.targetAccess.close().catch((error: unknown) => {
        console.error(`simhost: closing the target side: ${error instanceof Error ? error.message : String(error)}`);
      });
      await fsp.rm(this.socketPath, { force: true });
    })();
    return this.stopping;
  }

  private async setup(options: KernelDaemonOptions): Promise<void> {
    for (const dir of ['bin', 'run/simhost', 'dev', 'etc/iscsi', 'var/lib/simhost/san']) {
      await fsp.mkdir(path.join(this.root, dir), { recursive: true });
    }
    await this.writeEtc(options.initiatorName);
    await this.db.init();
    await this.kernel.init();
    await this.multipath.init();
    if (options.san && this.model) for (const t of options.san.targets) await this.model.addTarget(t);
    await fsp.rm(this.socketPath, { force: true });
    const server = net.createServer((socket) => this.serve(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    for (const name of this.tools.keys()) await this.writeBin(name);
  }

  private async writeEtc(initiatorName: string | undefined): Promise<void> {
    const etc = path.join(this.root, 'etc/iscsi');
    const file = path.join(etc, 'initiatorname.iscsi');
    const current = await this.initiatorName();
    if (initiatorName !== undefined || current === '') {
      const name = initiatorName ?? `iqn.1993-08.org.debian:01:${randomBytes(6).toString('hex')}`;
      const text = [
        '## DO NOT EDIT OR REMOVE THIS FILE!',
        '## If you remove this file, the iSCSI daemon will not start.',
        '## If you change the InitiatorName, existing access control lists',
        '## may reject this initiator.  The InitiatorName must be unique',
        '## for each iSCSI initiator.  Do NOT duplicate iSCSI Initiator Names.',
        `InitiatorName=${name}`,
        '',
      ].join('\n');
      await fsp.writeFile(file, text, { mode: 0o600 });
    }
    const conf = path.join(etc, 'iscsid.conf');
    if (!existsSync(conf)) {
      const text = [
        '# iscsid.conf of the simulated host (open-iscsi 2.1.8 defaults that matter here)',
        'iscsid.startup = /bin/systemctl start iscsid.socket',
        'node.startup = manual',
        'node.leading_login = No',
        'node.session.timeo.replacement_timeout = 120',
        'node.conn[0].timeo.login_timeout = 15',
        'node.conn[0].timeo.logout_timeout = 15',
        'node.session.initial_login_retry_max = 8',
        'node.session.nr_sessions = 1',
        'node.session.scan = auto',
        '',
      ].join('\n');
      await fsp.writeFile(conf, text, { mode: 0o644 });
    }
  }

  private async writeBin(name: string): Promise<void> {
    const file = path.join(this.binDir, name);
    const temp = `${file}.tmp-${randomBytes(4).toString('hex')}`;
    const compiled = compiledToolClientPath();
    if (compiled) {
      // A copy, not a link: the client finds its tool name and root from /proc/self/exe.
      await fsp.copyFile(compiled, temp);
      await fsp.chmod(temp, 0o755);
    } else {
      const script = [
        `#!${process.execPath}`,
        `import(${JSON.stringify(pathToFileURL(toolClientPath()).href)}).then((m) => m.runTool(${JSON.stringify(name)}, ${JSON.stringify(this.socketPath)}));`,
        '',
      ].join('\n');
      await fsp.writeFile(temp, script, { mode: 0o755 });
    }
    await fsp.rename(temp, file);
  }

  private serve(socket: net.Socket): void {
    this.connections.add(socket);
    socket.on('close', () => this.connections.delete(socket));
    socket.on('error', () => socket.destroy());
    let received = Buffer.alloc(0);
    let answered = false;
    socket.on('data', (chunk: Buffer) => {
      if (answered) return;
      received = Buffer.concat([received, chunk]);
      // A fake tool's binary call, or a control call's JSON line.
      let reply: Promise<Buffer> | undefined;
      if (isToolCall(received)) {
        const call = decodeToolCall(received);
        if (call) reply = this.runToolCall(call).then(encodeToolResult);
      } else {
        const nl = received.indexOf(0x0a);
        if (nl >= 0) reply = this.answerControl(received.subarray(0, nl).toString('utf8')).then((r) => Buffer.from(`${JSON.stringify(r)}\n`));
      }
      if (!reply) return;
      answered = true;
      received = Buffer.alloc(0);
      void reply.then((bytes) => {
        if (!socket.destroyed) socket.end(bytes);
      });
    });
  }

  private async runToolCall(call: ToolCall): Promise<ToolResult> {
    const tool = this.tools.get(call.tool);
    if (!tool) return { stdout: '', stderr: `${call.tool}: not simulated\n`, exitCode: 127 };
    const injected = this.faults.takeToolFailure(call.tool, call.argv);
    if (injected) {
      if (injected.delayMs) await new Promise((resolve) => setTimeout(resolve, injected.delayMs));
      return { stdout: injected.stdout ?? '', stderr: injected.stderr ?? '', exitCode: injected.exitCode };
    }
    try {
      return await tool(call.argv, this, call.stdin);
    } catch (error) {
      return { stdout: '', stderr: `${call.tool}: simulated host error: ${(error as Error).message}\n`, exitCode: 1 };
    }
  }

  private async answerControl(line: string): Promise<ControlResponse> {
    let request: ControlRequest;
    try {
      request = JSON.parse(line) as ControlRequest;
    } catch {
      return { ok: false, error: 'the request is not JSON' };
    }
    try {
      if (request.method === 'shutdown') {
        setImmediate(() => this.onShutdown?.());
        return { ok: true };
      }
      return { ok: true, result: await this.control(request.method, request.params) };
    } catch (error) {
      const e = error as Error & { code?: string };
      return { ok: false, error: e.message, ...(typeof e.code === 'string' ? { code: e.code } : {}) };
    }
  }

  /** Called on a `shutdown` control call (the detached daemon exits). */
  onShutdown: (() => void) | undefined;
}

/** The built Node tool client the bin scripts import when no C client was compiled (dist, also when this code runs from src). */
export function toolClientPath(): string {
  return builtSibling('tool-client.js');
}

/** The compiled C tool client (`dist/simhost-tool`, made by the build with the machine's cc), if there is one. */
export function compiledToolClientPath(): string | undefined {
  const target = path.join(packageRoot(), 'dist', 'simhost-tool');
  return existsSync(target) ? target : undefined;
}

/** The built daemon entry a detached daemon runs. */
export function daemonMainPath(): string {
  return builtSibling('daemon-main.js');
}

function packageRoot(): string {
  // This file is `<package>/src/kernel-daemon.ts` (tests) or `<package>/dist/kernel-daemon.js`.
  return path.dirname(path.dirname(fileURLToPath(import.meta.url)));
}

function builtSibling(file: string): string {
  const target = path.join(packageRoot(), 'dist', file);
  if (!existsSync(target)) {
    throw new BerthError('CONFIG', `${target} is missing: the simulated host's tools run the built code`, {
      hint: 'build @berth/simhost first: npm run build -w @berth/simhost',
    });
  }
  return target;
}
