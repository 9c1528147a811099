import { mkdtemp, open, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createHostServices, type HostServices } from '@berth/host';
import { silentLogger, type ConnectionInfo, type PluginContext, type TransportDriver } from '@berth/core';
import { createLoopDriver, type LoopDriverOptions } from './loop-driver.js';
import { parseLosetupList, type LoopDevice } from './losetup.js';

/** A temp dir for volume files and a loop driver on the real host; `dispose` detaches and removes. */
export interface LoopTestEnv {
  dir: string;
  host: HostServices;
  driver: TransportDriver;
  /** A driver with other options, on the real host or on `host`. */
  driverWith(options: Partial<LoopDriverOptions>, host?: HostServices): TransportDriver;
  /** A sparse file of `sizeBytes` in the temp dir and its `file` connection. */
  makeFile(name: string, sizeBytes?: number, accessMode?: 'rw' | 'ro'): Promise<ConnectionInfo & { data: { device_path: string } }>;
  /** Every loop device now backing a file under the temp dir. */
  devicesUnderDir(): Promise<LoopDevice[]>;
  /** Every loop device now backing `file`. */
  devicesBacking(file: string): Promise<LoopDevice[]>;
  /** Detach whatever is left under the temp dir, then remove it. */
  dispose(): Promise<void>;
}

/** Make a loop test environment (the caller must `dispose` it in `finally`/`afterEach`). */
export async function createLoopTestEnv(): Promise<LoopTestEnv> {
  // realpath: the kernel reports real paths, and /tmp may be a link on some machines.
  const dir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-loop-')));
  const host = createHostServices();
  const context = (
    options: Partial<LoopDriverOptions>,
    on: HostServices = host,
  ): PluginContext<Partial<LoopDriverOptions>> => ({
    host: on,
    dataDir: dir,
    options,
    logger: silentLogger,
  });

  async function list(): Promise<LoopDevice[]> {
    const result = await host.runner.run('losetup', ['--json', '--list'], { timeoutMs: 10_000 });
    return parseLosetupList(result.stdout);
  }

  async function devicesUnderDir(): Promise<LoopDevice[]> {
    return (await list()).filter((d) => d.backingFile?.startsWith(`${dir}/`));
  }

  return {
    dir,
    host,
    driver: createLoopDriver(context({})),
    driverWith: (options, on) => createLoopDriver(context(options, on)),
    async makeFile(name, sizeBytes = 16 * 1024 * 1024, accessMode = 'rw') {
      const file = path.join(dir, name);
      const handle = await open(file, 'wx', 0o600);
      await handle.truncate(sizeBytes);
      await handle.close();
      return { driver_volume_type: 'file', data: { device_path: file, access_mode: accessMode } };
    },
    devicesUnderDir,
    async devicesBacking(file) {
      return (await list()).filter((d) => d.backingFile === file);
    },
    async dispose() {
      const failures: string[] = [];
      for (const device of await devicesUnderDir()) {
        const result = await host.runner.run('losetup', ['--detach', device.name], { timeoutMs: 10_000, reject: false });
        if (result.exitCode !== 0) failures.push(`${device.name}: ${result.stderr.trim()}`);
      }
      await rm(dir, { recursive: true, force: true });
      if (failures.length > 0) throw new Error(`could not detach test loop devices: ${failures.join('; ')}`);
    },
  };
}

/**
 * `host` with a runner that records the name of every command it runs (and calls `onRun` with
 * it after the run), and may rewrite a command line first (`rewrite`).
 */
export function tappedHost(
  host: HostServices,
  options: { onRun?: (name: string) => void; rewrite?: (command: string, args: readonly string[]) => [string, string[]] } = {},
): { host: HostServices; commands: string[] } {
  const commands: string[] = [];
  const runner = new Proxy(host.runner, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (prop !== 'run' || typeof value !== 'function') return value;
      return async (command: string, args: readonly string[], ...rest: unknown[]) => {
        const name = command.split('/').pop() ?? command;
        commands.push(name);
        const [file, argv] = options.rewrite?.(command, args) ?? [command, [...args]];
        const result: unknown = await (value as (...a: unknown[]) => Promise<unknown>).call(target, file, argv, ...rest);
        options.onRun?.(name);
        return result;
      };
    },
  });
  return { host: { ...host, runner }, commands };
}

/** A call context for a driver call, with a deadline. */
export function call(): { signal: AbortSignal } {
  return { signal: AbortSignal.timeout(20_000) };
}

/** What `promise` rejects with (`undefined` when it resolves). */
export async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (error: unknown) => error,
  );
}
