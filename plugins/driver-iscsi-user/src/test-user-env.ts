import { randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, fsyncSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';
import { BerthError, silentLogger, type BackendVolume, type ConnectionInfo, type FaultPoints, type TransportDriver, type VolumeBackend } from '@berth/core';
import { createHostServices, daemonStatus, stopDaemon, type HostServices } from '@berth/host';
import { createTgtBackend, stopManagedTgtd, type TgtBackendOptions } from '@berth/backend-tgt';
import { fuseMountsUnder, StorageDaemon, unmountFuseUnder } from '@berth/qemu';
import { freeControlPort, freePort } from '@berth/simhost/real';
import { userPaths } from './export-records.js';
import { createIscsiUserDriver } from './iscsi-user-driver.js';
import type { IscsiUserOptions } from './options.js';
import { watcherFiles } from './watch-start.js';

/** A volume of the test env: the backend's record and its connection for this driver's initiator. */
export interface TestVolume {
  volume: BackendVolume;
  connection: ConnectionInfo;
  /** tgtd's backing file of the LUN. */
  lunFile: string;
}

/** A private tgtd (through the real tgt backend) and the iscsi-user transport, in a temp data dir. */
export interface UserTestEnv {
  dataDir: string;
  host: HostServices;
  port: number;
  controlPort: number;
  driver: TransportDriver;
  initiator: string;
  /** Another driver on the same data dir (a second berth process, or one with fault points). */
  driverWith(options?: Partial<IscsiUserOptions>, faults?: FaultPoints): TransportDriver;
  /** A new volume on the backend (CHAP by default), exported to this driver's initiator. */
  makeVolume(sizeBytes?: number, backendOptions?: Partial<TgtBackendOptions>): Promise<TestVolume>;
  /** The daemon's pid, when it runs. */
  daemonPid(): Promise<number | undefined>;
  /** What is left of this env on the machine: loop devices on its files, FUSE mounts, a daemon. */
  leftovers(): Promise<{ loops: string[]; mounts: string[]; daemon: boolean; records: string[] }>;
  dispose(): Promise<void>;
}

/** Loop devices whose backing file lies under `dir`. */
export function loopsUnder(dir: string): string[] {
  const out = execFileSync('losetup', ['--json', '--list'], { encoding: 'utf8' }).trim();
  if (!out) return [];
  const parsed = JSON.parse(out) as { loopdevices: Array<{ name: string; 'back-file'?: string | null }> };
  return parsed.loopdevices.filter((d) => (d['back-file'] ?? '').startsWith(dir + path.sep)).map((d) => d.name);
}

/** Make an env; `dispose` it in afterAll/finally. */
export async function createUserTestEnv(options: Partial<IscsiUserOptions> = {}): Promise<UserTestEnv> {
  const dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-iu-')));
  const host = createHostServices();
  const port = await freePort(['127.0.0.1']);
  const controlPort = await freeControlPort();
  const backends = new Map<string, VolumeBackend>();
  const backendWith = (extra: Partial<TgtBackendOptions> = {}): VolumeBackend => {
    const key = JSON.stringify(extra);
    let backend = backends.get(key);
    if (!backend) {
      backend = createTgtBackend({ host, dataDir, options: { portals: [`127.0.0.1:${port}`], controlPort, ...extra }, logger: silentLogger });
      backends.set(key, backend);
    }
    return backend;
  };
  const driverWith = (extra: Partial<IscsiUserOptions> = {}, faults?: FaultPoints): TransportDriver =>
    createIscsiUserDriver({ host, dataDir, options: { ...options, ...extra }, logger: silentLogger, ...(faults ? { faults } : {}) });
  const driver = driverWith();
  const initiator = (await driver.connectorProperties()).initiator ?? '';
  const made: Array<{ volume: BackendVolume; backend: VolumeBackend }> = [];
  const paths = userPaths(dataDir);
  const env: UserTestEnv = {
    dataDir,
    host,
    port,
    controlPort,
    driver,
    initiator,
    driverWith,
    async makeVolume(sizeBytes = 16 * 1024 * 1024, backendOptions = {}) {
      const backend = backendWith(backendOptions);
      const volume: BackendVolume = { id: randomUUID(), name: 'iu', sizeBytes, providerLocation: null };
      const signal = AbortSignal.timeout(30_000);
      volume.providerLocation = (await backend.create(volume, signal)).providerLocation;
      made.push({ volume, backend });
      const connection = await backend.initializeConnection(volume, { host: os.hostname(), initiator }, signal);
      return { volume, connection, lunFile: path.join(dataDir, 'backend-tgt', 'luns', `${volume.id}.img`) };
    },
    async daemonPid() {
      const status = await daemonStatus(path.join(paths.daemon, 'qsd.pid'));
      return status.running ? status.pid : undefined;
    },
    async leftovers() {
      const records = (await host.fs.readdir(paths.records)).filter((f) => f.endsWith('.json'));
      return { loops: loopsUnder(dataDir), mounts: (await fuseMountsUnder(host.fs, dataDir)).map((m) => m.target), daemon: (await env.daemonPid()) !== undefined, records };
    },
    async dispose() {
      try {
        // The data dir's watcher (started at the first connect) goes first: it would outlive the dir.
        await stopDaemon(watcherFiles(paths).pidFile, { timeoutMs: 5_000 }).catch(() => undefined);
        for (const device of loopsUnder(dataDir)) execFileSync('losetup', ['--detach', device]);
        await new StorageDaemon({ dir: paths.daemon, waiter: host.waiter }).stop().catch(() => undefined);
        await unmountFuseUnder(host, dataDir, 10_000);
        for (const { volume, backend } of made) await backend.delete(volume, AbortSignal.timeout(30_000)).catch(() => undefined);
        await stopManagedTgtd(dataDir, controlPort, { runner: host.runner });
        await rm(`/run/tgtd/socket.${controlPort}`, { force: true });
        await rm(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
      } finally {
        await rm(dataDir, { recursive: true, force: true });
      }
    },
  };
  return env;
}

/** Write `data` at `offset` of `file` and fsync (buffered I/O). */
export function writeAt(file: string, data: Buffer, offset: number): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Read `length` bytes at `offset` of `file`. */
export function readAt(file: string, length: number, offset: number): Buffer {
  const out = Buffer.alloc(length);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, out, 0, length, offset);
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Write `data` to `device` at `offset` with O_DIRECT (`dd oflag=direct`); `data` and `offset` aligned to `blockSize`. */
export function writeDirect(device: string, data: Buffer, offset: number, blockSize: number, scratchDir: string): void {
  const source = path.join(scratchDir, `direct-${randomUUID()}.bin`);
  execFileSync('dd', [`of=${source}`, 'status=none'], { input: data });
  try {
    execFileSync('dd', [`if=${source}`, `of=${device}`, `bs=${blockSize}`, `seek=${offset / blockSize}`, 'oflag=direct', 'conv=notrunc,fsync', 'status=none']);
  } finally {
    execFileSync('rm', ['-f', source]);
  }
}

/** The whole file (for small LUNs). */
export function fileBytes(file: string): Buffer {
  return readFileSync(file);
}

/** A call context with its own deadline. */
export function call(ms = 60_000): { signal: AbortSignal } {
  return { signal: AbortSignal.timeout(ms) };
}

/** The BerthError `promise` rejects with (anything else fails the test). */
export async function rejection(promise: Promise<unknown>): Promise<BerthError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!BerthError.is(error)) throw new Error(`expected a BerthError, got ${String(error)}`);
  return error;
}

/** Nothing of the transport's is left: no loop device, mount, daemon, record or secret file. */
export async function expectNothingLeft(env: UserTestEnv): Promise<void> {
  expect(await env.leftovers()).toEqual({ loops: [], mounts: [], daemon: false, records: [] });
  expect(await env.host.fs.readdir(userPaths(env.dataDir).secrets)).toEqual([]);
}
