import { randomInt } from 'node:crypto';
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger, VolumeBackend } from '@berth/core';
import { createHostServices, freeTcpPort, type CommandResult, type CommandRunner, type HostServices } from '@berth/host';
import { createTgtBackend } from './backend-tgt.js';
import { stopManagedTgtd } from './managed-tgtd.js';
import type { TgtBackendOptions } from './options.js';

/** One captured log line (backend logger and command runner alike). */
export interface LogLine {
  level: string;
  bindings: Record<string, unknown>;
  obj: Record<string, unknown>;
  msg?: string;
}

/** A logger that keeps every line, for tests that look for leaked secrets. */
export function collectingLogger(lines: LogLine[], bindings: Record<string, unknown> = {}): Logger {
  const at =
    (level: string) =>
    (obj: Record<string, unknown>, msg?: string): void => {
      lines.push({ level, bindings, obj, ...(msg === undefined ? {} : { msg }) });
    };
  return {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (more) => collectingLogger(lines, { ...bindings, ...more }),
  };
}

/** A tgt backend on a temp data dir, its own port and its own tgtd control port. */
export interface TgtTestEnv {
  dataDir: string;
  controlPort: number;
  /** The TCP port every portal of this env uses. */
  port: number;
  portals: string[];
  host: HostServices;
  runner: CommandRunner;
  /** Every log line of the backends and of the command runner. */
  logs: LogLine[];
  backend: VolumeBackend;
  /** Another backend on the same data dir and tgtd, with other options. */
  backendWith(options: Partial<TgtBackendOptions>): VolumeBackend;
  /** Stop the env's tgtd and remove the data dir (call in afterAll/finally). */
  dispose(): Promise<void>;
}

/** Options of `createTgtTestEnv`. */
export interface TgtTestEnvOptions {
  /** Loopback addresses to listen on (default ['127.0.0.1']); all get the same free port. */
  addresses?: string[];
  options?: Partial<TgtBackendOptions>;
}

/** Make an env; the caller must `dispose` it. */
export async function createTgtTestEnv(envOptions: TgtTestEnvOptions = {}): Promise<TgtTestEnv> {
  const addresses = envOptions.addresses ?? ['127.0.0.1'];
  const dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-tgt-')));
  const logs: LogLine[] = [];
  const host = createHostServices({ logger: collectingLogger(logs, { component: 'runner' }) });
  const controlPort = await freeControlPort(host.runner);
  const port = await freePort(addresses);
  const portals = addresses.map((address) => `${address}:${port}`);
  const base: Partial<TgtBackendOptions> = { portals, controlPort, ...envOptions.options };
  const backendWith = (options: Partial<TgtBackendOptions>): VolumeBackend =>
    createTgtBackend({ host, dataDir, options: { ...base, ...options }, logger: collectingLogger(logs) });
  return {
    dataDir,
    controlPort,
    port,
    portals,
    host,
    runner: host.runner,
    logs,
    backend: backendWith({}),
    backendWith,
    async dispose() {
      try {
        await stopManagedTgtd(dataDir, controlPort, { runner: host.runner });
        // tgtd leaves its control socket and lock file behind when it exits; this env's port is its own.
        if ((await host.runner.run('tgtadm', ['-C', String(controlPort), '--op', 'show', '--mode', 'sys'], { reject: false })).exitCode === 107) {
          await rm(`/run/tgtd/socket.${controlPort}`, { force: true });
          await rm(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
        }
      } finally {
        await rm(dataDir, { recursive: true, force: true });
      }
    },
  };
}

/** A TCP port nothing listens on at any of `addresses`. */
export function freePort(addresses: readonly string[]): Promise<number> {
  return freeTcpPort(addresses);
}

/** A tgtd control port no tgtd answers on (random, so parallel test files do not collide). */
export async function freeControlPort(runner: CommandRunner): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const candidate = randomInt(20_000, 60_000);
    const probe = await runner.run('tgtadm', ['-C', String(candidate), '--lld', 'iscsi', '--op', 'show', '--mode', 'sys'], {
      reject: false,
      timeoutMs: 5_000,
    });
    if (probe.exitCode === 107) return candidate;
  }
  throw new Error('no free tgtd control port found');
}

/** What a libiscsi login saw. */
export interface LoginResult {
  exitCode: number;
  /** The LUN's size from READ CAPACITY(16), when the login worked. */
  sizeBytes?: number;
  output: string;
}

/** CHAP for a libiscsi login. */
export interface LoginAuth {
  username: string;
  password: string;
  /** Mutual CHAP: what the target must answer with. */
  targetUsername?: string;
  targetPassword?: string;
}

/**
 * A real iSCSI login with libiscsi (`iscsi-readcapacity16 -s`), CHAP from the LIBISCSI_CHAP_*
 * environment (never the URL, which tools echo). rc 10 is a refused login.
 */
export async function loginAndReadCapacity(
  runner: CommandRunner,
  target: { portal: string; iqn: string; lun: number; initiator: string; auth?: LoginAuth },
): Promise<LoginResult> {
  const env: Record<string, string> = {};
  const secrets: string[] = [];
  if (target.auth) {
    env.LIBISCSI_CHAP_USERNAME = target.auth.username;
    env.LIBISCSI_CHAP_PASSWORD = target.auth.password;
    secrets.push(target.auth.password);
    if (target.auth.targetUsername !== undefined && target.auth.targetPassword !== undefined) {
      env.LIBISCSI_CHAP_TARGET_USERNAME = target.auth.targetUsername;
      env.LIBISCSI_CHAP_TARGET_PASSWORD = target.auth.targetPassword;
      secrets.push(target.auth.targetPassword);
    }
  }
  const result: CommandResult = await runner.run(
    'iscsi-readcapacity16',
    ['-s', '-i', target.initiator, `iscsi://${target.portal}/${target.iqn}/${target.lun}`],
    { reject: false, timeoutMs: 20_000, env, secrets },
  );
  const output = `${result.stdout}${result.stderr}`;
  const size = /^(\d+)\s*$/m.exec(result.stdout)?.[1];
  return { exitCode: result.exitCode, output, ...(result.exitCode === 0 && size !== undefined ? { sizeBytes: Number(size) } : {}) };
}
