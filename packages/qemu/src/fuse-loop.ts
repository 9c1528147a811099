import { BerthError } from '@berth/core';
import { WaitTimeoutError, type CommandRunner, type DeviceWaiter, type HostFs } from '@berth/host';

/** Deadline and cancellation of one loop-device step. */
export interface LoopStepOptions {
  timeoutMs: number;
  signal?: AbortSignal;
}

/** What sysfs says about a loop device. */
export interface LoopInfo {
  /** `/dev/loopN`. */
  device: string;
  /** The device number, `7:N`. */
  rdev: string;
  /** The file it is attached to (without the ` (deleted)` the kernel appends), or undefined when free. */
  backingFile: string | undefined;
  /** Set when a detach waits for the last opener to close it. */
  autoclear: boolean;
  readOnly: boolean;
  /** 1 when the loop device does direct I/O on its file (must never be, on a FUSE export). */
  directIo: boolean;
  sizeBytes: number;
}

const DEVICE = /^\/dev\/loop(\d+)$/;

/** `loopN` of `/dev/loopN` (VALIDATION for anything else). */
export function loopName(device: string): string {
  const match = DEVICE.exec(device);
  if (!match) throw new BerthError('VALIDATION', `${device} is not a loop device node`);
  return `loop${match[1]}`;
}

/** Read a loop device's state from sysfs; undefined when the device does not exist. */
export async function loopInfo(fs: HostFs, device: string): Promise<LoopInfo | undefined> {
  const dir = `/sys/block/${loopName(device)}`;
  const read = async (file: string): Promise<string | undefined> => {
    try {
      return (await fs.readFileIfExists(`${dir}/${file}`))?.trim();
    } catch (error) {
      // ENODEV/ENXIO: the device is being torn down between the lookup and the read.
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENODEV' || code === 'ENXIO') return undefined;
      throw error;
    }
  };
  const rdev = await read('dev');
  if (rdev === undefined) return undefined;
  const backing = await read('loop/backing_file');
  return {
    device,
    rdev,
    backingFile: backing === undefined || backing === '' ? undefined : backing.replace(/ \(deleted\)$/, ''),
    autoclear: (await read('loop/autoclear')) === '1',
    readOnly: (await read('ro')) === '1',
    directIo: (await read('loop/dio')) === '1',
    sizeBytes: Number((await read('size')) ?? '0') * 512,
  };
}

/**
 * Attach `file` (a FUSE export) to a loop device and return `/dev/loopN`: the free one losetup
 * finds, or `device` when given (then it must be free). Always `--direct-io=off`: qemu 7.2's FUSE
 * export puts concurrent direct writes at the wrong offsets (HOST-FACTS; the recorded
 * `integrity-iscsi-loop-dio-*` runs), so a loop device must never do direct I/O on it.
 */
export async function attachFuseLoop(
  runner: CommandRunner,
  file: string,
  options: LoopStepOptions & { readOnly: boolean; device?: string },
): Promise<string> {
  const flags = ['--direct-io=off', ...(options.readOnly ? ['--read-only'] : [])];
  const args = options.device === undefined ? ['--find', '--show', ...flags, '--', file] : [...flags, '--', options.device, file];
  const result = await runner.run('losetup', args, { timeoutMs: options.timeoutMs, ...(options.signal ? { signal: options.signal } : {}) });
  if (options.device !== undefined) return options.device;
  const device = result.stdout.trim();
  if (!DEVICE.test(device)) throw new BerthError('DRIVER_ERROR', `losetup --find --show ${file} printed ${JSON.stringify(device.slice(0, 100))}, not a loop device`);
  return device;
}

/** Make `device` take its backing file's current size (`losetup --set-capacity`), after the export grew. */
export async function setLoopCapacity(runner: CommandRunner, device: string, options: LoopStepOptions): Promise<void> {
  loopName(device);
  await runner.run('losetup', ['--set-capacity', device], { timeoutMs: options.timeoutMs, ...(options.signal ? { signal: options.signal } : {}) });
}

/** The loop devices whose backing file passes `match` (read from sysfs, so no losetup output to parse). */
export async function loopsBacking(fs: HostFs, match: (backingFile: string) => boolean): Promise<LoopInfo[]> {
  const found: LoopInfo[] = [];
  for (const name of await fs.readdir('/sys/block')) {
    if (!/^loop\d+$/.test(name)) continue;
    const info = await loopInfo(fs, `/dev/${name}`);
    if (info?.backingFile !== undefined && match(info.backingFile)) found.push(info);
  }
  return found;
}

/** Flush the loop device's buffers down to the FUSE file, and through QEMU to the target. */
export async function flushLoop(runner: CommandRunner, device: string, options: LoopStepOptions): Promise<void> {
  loopName(device);
  await runner.run('blockdev', ['--flushbufs', device], { timeoutMs: options.timeoutMs, ...(options.signal ? { signal: options.signal } : {}) });
}

/**
 * Detach `device` if it is attached to `file`, and wait until the kernel has let the file go.
 * Resolves `detached`, or `held-open` when someone still has the device open at the deadline (the
 * kernel then detaches it at the last close: `autoclear`); a device attached to another file is
 * left alone (`not-attached`).
 */
export async function detachFuseLoop(
  deps: { runner: CommandRunner; waiter: DeviceWaiter; fs: HostFs },
  device: string,
  file: string,
  options: LoopStepOptions,
): Promise<'detached' | 'held-open' | 'not-attached'> {
  const attached = async (): Promise<LoopInfo | undefined> => {
    const info = await loopInfo(deps.fs, device);
    return info?.backingFile === file ? info : undefined;
  };
  if ((await attached()) === undefined) return 'not-attached';
  const result = await deps.runner.run('losetup', ['--detach', device], {
    timeoutMs: options.timeoutMs,
    reject: false,
    ...(options.signal ? { signal: options.signal } : {}),
  });
  if (result.exitCode !== 0 && !/No such device/.test(result.stderr)) {
    throw new BerthError('DRIVER_ERROR', `losetup --detach ${device} failed: ${result.stderr.trim() || `exit ${result.exitCode}`}`, {
      details: { device, exitCode: result.exitCode },
    });
  }
  // LOOP_CLR_FD tears the device down at once unless another opener holds it; then it only sets
  // autoclear, and the device goes at the last close: no need to wait for that.
  if ((await attached())?.autoclear) return 'held-open';
  try {
    await deps.waiter.waitUntil(`/sys/block/${loopName(device)}`, async () => ((await attached()) === undefined ? true : undefined), {
      timeoutMs: options.timeoutMs,
      what: `${device} to let go of ${file}`,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return 'detached';
  } catch (error) {
    if (error instanceof WaitTimeoutError && (await attached())?.autoclear) return 'held-open';
    throw error;
  }
}
