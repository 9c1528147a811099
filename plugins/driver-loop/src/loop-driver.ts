import { realpath, statfs } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { CommandError, WaitTimeoutError, hostFacts, type CommandResult } from '@berth/host';
import {
  BerthError,
  parseWith,
  toBerthError,
  type CheckResult,
  type ConnectedDevice,
  type ConnectionInfo,
  type Connector,
  type Device,
  type DisconnectOptions,
  type PluginContext,
  type TransportCallContext,
  type TransportDriver,
} from '@berth/core';
import { KeyedLock } from './keyed-lock.js';
import {
  classifyLosetupError,
  findShowArgs,
  loopName,
  parseBackFile,
  parseFindShow,
  parseGetSize64,
  parseLosetupList,
  type LoopDevice,
} from './losetup.js';
import { installHint, ROOT_HINT, toLoopError, type LoopTool } from './loop-errors.js';

/** The transport's registered name. */
export const NAME = 'loop';

/** The `driver_volume_type` values the loop transport connects. */
export const PROTOCOLS = ['file', 'local'] as const;

/** Options of the `loop` transport (from the config's plugin options). */
export const zLoopDriverOptions = z.object({
  /**
   * Attach with `--direct-io=on` (no double caching). `auto`: on, except for files on FUSE, where
   * qemu-storage-daemon 7.2's export corrupts parallel direct writes.
   */
  directIo: z.union([z.boolean(), z.literal('auto')]).default('auto'),
  /** How long to wait for a loop device node to appear, or to stop backing its file. */
  deviceTimeoutMs: z.number().int().positive().default(10_000),
  /** Timeout of one losetup/blockdev run. */
  commandTimeoutMs: z.number().int().positive().default(15_000),
});

/** Parsed options of the `loop` transport. */
export type LoopDriverOptions = z.output<typeof zLoopDriverOptions>;

const zAbsolutePath = z
  .string()
  .min(1)
  .refine((p) => path.isAbsolute(p), 'must be an absolute path')
  .refine((p) => !p.includes('\0'), 'must not contain NUL');

/** The part of a connection_info the loop transport reads. */
const zLoopConnection = z.object({
  driver_volume_type: z.enum(PROTOCOLS),
  data: z.looseObject({
    device_path: zAbsolutePath,
    access_mode: z.enum(['rw', 'ro']).optional(),
  }),
});

type LoopConnection = z.output<typeof zLoopConnection>;

const FUSE_SUPER_MAGIC = 0x65735546;
const SYS_BLOCK = '/sys/block';

/**
 * The `loop` transport: connects `file` connections by attaching the file to a loop device with
 * losetup, and `local` connections (already a block device) by checking the device exists.
 */
export function createLoopDriver(context: PluginContext<Partial<LoopDriverOptions>>): TransportDriver {
  const options = parseWith(zLoopDriverOptions, context.options ?? {}, 'loop transport options');
  const { runner, fs, waiter } = context.host;
  const logger = context.logger.child({ transport: NAME });
  const faults = context.faults;
  // One queue per backing file: two connects of one file must never make two loop devices.
  const fileLocks = new KeyedLock();

  async function run(tool: LoopTool, args: readonly string[], what: string, signal?: AbortSignal): Promise<CommandResult> {
    try {
      return await runner.run(tool, args, { timeoutMs: options.commandTimeoutMs, ...(signal ? { signal } : {}) });
    } catch (error) {
      throw toLoopError(error, tool, what);
    }
  }

  async function listLoopDevices(signal?: AbortSignal): Promise<LoopDevice[]> {
    const result = await run('losetup', ['--json', '--list'], 'listing loop devices', signal);
    try {
      return parseLosetupList(result.stdout);
    } catch (error) {
      throw new BerthError('DRIVER_ERROR', error instanceof Error ? error.message : String(error), { cause: error });
    }
  }

  async function waitForNode(device: string, signal: AbortSignal): Promise<void> {
    try {
      await waiter.waitForPath(device, { timeoutMs: options.deviceTimeoutMs, signal });
    } catch (error) {
      throw toLoopError(error, 'losetup', `waiting for ${device}`);
    }
  }

  /** The file a loop device backs now, read from sysfs (`undefined` when it backs none). */
  async function backingFileNow(device: string): Promise<{ backingFile: string | null; deleted: boolean } | undefined> {
    let text: string | undefined;
    try {
      text = await fs.readFileIfExists(`${SYS_BLOCK}/${loopName(device)}/loop/backing_file`);
    } catch (error) {
      // The kernel answers ENODEV (or ENXIO) for the attribute of a loop device that is being
      // torn down between the lookup and the read: it backs nothing any more.
      if (errnoOf(error) === 'ENODEV' || errnoOf(error) === 'ENXIO') return undefined;
      throw error;
    }
    if (text === undefined) return undefined;
    return parseBackFile(text.replace(/\n$/, ''));
  }

  async function useDirectIo(file: string): Promise<boolean> {
    if (options.directIo !== 'auto') return options.directIo;
    try {
      return (await statfs(file)).type !== FUSE_SUPER_MAGIC;
    } catch {
      return true;
    }
  }

  async function connectFile(target: LoopConnection, file: string, signal: AbortSignal): Promise<Device> {
    throwIfAborted(signal);
    const readOnly = target.data.access_mode === 'ro';
    const before = await listLoopDevices(signal);
    const existing = before.find((d) => !d.deleted && attachesWholeFile(d, [file]));
    if (existing) {
      if (existing.autoclear) {
        // berth never sets autoclear: it is a detach still waiting for the last holder to close.
        throw new BerthError('CONFLICT', `${file} is being detached from ${existing.name}, which something still holds open`, {
          hint: `find what holds ${existing.name} open (fuser -v ${existing.name}, lsof ${existing.name}), close it, then connect again`,
          details: { device: existing.name },
        });
      }
      if (existing.readOnly !== readOnly) {
        throw new BerthError(
          'CONFLICT',
          `${file} is already attached to ${existing.name} ${existing.readOnly ? 'read-only' : 'read-write'}, not ${readOnly ? 'read-only' : 'read-write'}`,
          { hint: `detach it first (berth detach, or losetup --detach ${existing.name} when nothing uses it)`, details: { device: existing.name } },
        );
      }
      await waitForNode(existing.name, signal);
      logger.debug({ device: existing.name, file }, 'file already attached; reusing its loop device');
      return deviceOf(existing.name, file);
    }
    let attached: string | undefined;
    try {
      const directIo = await useDirectIo(file);
      const result = await run('losetup', findShowArgs(file, { directIo, readOnly }), `attaching ${file}`, signal);
      attached = parseFindShow(result.stdout);
      await faults?.hit('loop.connect.after-losetup');
      await waitForNode(attached, signal);
      throwIfAborted(signal);
      logger.info({ device: attached, file, directIo, readOnly }, 'file attached to loop device');
      return deviceOf(attached, file);
    } catch (error) {
      // An abort or a timeout can land after the kernel attached the file: leave nothing behind.
      await undoAttach(file, before, attached);
      throw toLoopError(error, 'losetup', `attaching ${file}`);
    }
  }

  async function undoAttach(file: string, before: LoopDevice[], attached: string | undefined): Promise<void> {
    try {
      const earlier = new Set(before.filter((d) => attachesWholeFile(d, [file])).map((d) => d.name));
      const now = await listLoopDevices();
      for (const d of now) {
        if (d.deleted || !attachesWholeFile(d, [file]) || earlier.has(d.name)) continue;
        await detachDevice(d.name, [file], { force: true, errors: [] });
      }
    } catch (error) {
      logger.warn({ file, device: attached, error: messageOf(error) }, 'could not undo a failed attach');
    }
  }

  interface DetachRun {
    force: boolean;
    errors: BerthError[];
    signal?: AbortSignal;
  }

  /** Record an error, or throw it when not forcing. */
  function fail(runState: DetachRun, error: unknown, tool: LoopTool, what: string): void {
    const berthError = toLoopError(error, tool, what);
    if (!runState.force) throw berthError;
    runState.errors.push(berthError);
  }

  /** Flush, detach, then wait until `device` no longer backs any of `files`. */
  async function detachDevice(device: string, files: readonly string[], state: DetachRun): Promise<void> {
    try {
      await run('blockdev', ['--flushbufs', device], `flushing ${device}`, state.signal);
    } catch (error) {
      fail(state, error, 'blockdev', `flushing ${device}`);
    }
    await faults?.hit('loop.disconnect.after-flush');
    let result: CommandResult;
    try {
      result = await runner.run('losetup', ['--detach', device], {
        timeoutMs: options.commandTimeoutMs,
        reject: false,
        ...(state.signal ? { signal: state.signal } : {}),
      });
    } catch (error) {
      fail(state, error, 'losetup', `detaching ${device}`);
      return;
    }
    if (result.exitCode !== 0) {
      const kind = result.notFound || result.timedOut || result.aborted ? 'other' : classifyLosetupError(result.stderr);
      // Already detached, or the node is gone: the goal is reached.
      if (kind !== 'not-attached' && kind !== 'no-device') {
        fail(state, new CommandError(result, { notFound: result.notFound ?? false }), 'losetup', `detaching ${device}`);
        return;
      }
    }
    try {
      await waiter.waitUntil(
        `${SYS_BLOCK}/${loopName(device)}/loop`,
        async () => {
          const now = await backingFileNow(device);
          return now === undefined || now.backingFile === null || !files.includes(now.backingFile) ? true : undefined;
        },
        {
          timeoutMs: options.deviceTimeoutMs,
          what: `${device} to stop backing ${files[0] ?? 'its file'}`,
          ...(state.signal ? { signal: state.signal } : {}),
        },
      );
      logger.info({ device, file: files[0] }, 'loop device detached');
    } catch (error) {
      if (!(error instanceof WaitTimeoutError)) {
        fail(state, error, 'losetup', `detaching ${device}`);
        return;
      }
      const busy = new BerthError('CONFLICT', `${device} still backs ${files[0] ?? 'its file'}: something holds it open`, {
        cause: error,
        hint: `find what holds ${device} open (fuser -v ${device}, lsof ${device}) and close it; the kernel detaches it at the last close`,
        details: { device },
      });
      fail(state, busy, 'losetup', `detaching ${device}`);
    }
  }

  return {
    name: NAME,
    protocols: PROTOCOLS,

    async connectorProperties(): Promise<Partial<Connector>> {
      // A file or local device needs nothing from the connector; core fills host and ip.
      return {};
    },

    async connect(connection: ConnectionInfo, call: TransportCallContext): Promise<Device> {
      const target = parseWith(zLoopConnection, connection, 'loop connection_info');
      throwIfAborted(call.signal);
      if (target.driver_volume_type === 'local') return connectLocal(target.data.device_path);
      const file = await backingFileOf(target.data.device_path);
      return fileLocks.run(file, () => connectFile(target, file, call.signal));
    },

    async disconnect(connection: ConnectionInfo, device: Device | undefined, opts: DisconnectOptions): Promise<void> {
      const target = parseWith(zLoopConnection, connection, 'loop connection_info');
      // A local device was there before berth and stays after it.
      if (target.driver_volume_type === 'local') return;
      const files = await candidatePaths(target.data.device_path);
      const key = files[0] ?? target.data.device_path;
      await fileLocks.run(key, async () => {
        const state: DetachRun = { force: opts.force, errors: [], signal: opts.signal };
        let devices: LoopDevice[];
        try {
          devices = await listLoopDevices(opts.signal);
        } catch (error) {
          throw toLoopError(error, 'losetup', `disconnecting ${key}`);
        }
        const named = device?.path;
        const mine = devices.filter(
          (d) => attachesWholeFile(d, files) && (!d.deleted || d.name === named),
        );
        if (named !== undefined && !mine.some((d) => d.name === named)) {
          const other = devices.find((d) => d.name === named);
          if (other) {
            // The loop number was reused for another file (a reboot, a manual detach): not ours to touch.
            logger.warn({ device: named, backingFile: other.backingFile, file: key }, 'not detaching: the device backs another file');
          }
        }
        for (const d of mine) await detachDevice(d.name, files, state);
        if (state.errors.length > 0) {
          throw new BerthError(
            'DRIVER_ERROR',
            `disconnecting ${key} finished with ${state.errors.length} error(s): ${state.errors.map((e) => e.message).join('; ')}`,
            {
              cause: state.errors[0],
              hint: state.errors.find((e) => e.hint !== undefined)?.hint,
              details: { errors: state.errors.map((e) => e.toJSON()) },
            },
          );
        }
      });
    },

    async extend(connection: ConnectionInfo, device: Device, call: TransportCallContext): Promise<number> {
      const target = parseWith(zLoopConnection, connection, 'loop connection_info');
      throwIfAborted(call.signal);
      if (target.driver_volume_type === 'local') {
        const size = await run('blockdev', ['--getsize64', target.data.device_path], `sizing ${target.data.device_path}`, call.signal);
        return parseSize(size.stdout);
      }
      const files = await candidatePaths(target.data.device_path);
      const key = files[0] ?? target.data.device_path;
      return fileLocks.run(key, async () => {
        const devices = await listLoopDevices(call.signal);
        const mine = devices.filter((d) => !d.deleted && attachesWholeFile(d, files));
        const chosen = mine.find((d) => d.name === device.path) ?? mine[0];
        if (!chosen) {
          throw new BerthError('NOT_FOUND', `${key} is not attached to any loop device`, {
            hint: 'attach the volume first; a detached volume needs no extend on the host',
          });
        }
        await run('losetup', ['--set-capacity', chosen.name], `resizing ${chosen.name}`, call.signal);
        const size = await run('blockdev', ['--getsize64', chosen.name], `sizing ${chosen.name}`, call.signal);
        const bytes = parseSize(size.stdout);
        logger.info({ device: chosen.name, file: key, bytes }, 'loop device resized');
        return bytes;
      });
    },

    async connected(): Promise<ConnectedDevice[]> {
      const devices = await listLoopDevices();
      return devices
        .filter((d) => d.backingFile !== null)
        .map((d) => ({
          device: deviceOf(d.name, d.backingFile ?? ''),
          source: { device_path: d.backingFile, ...(d.deleted ? { deleted: true } : {}) },
        }));
    },

    async check(): Promise<CheckResult> {
      const checks: NonNullable<CheckResult['checks']> = [];
      const fixes: string[] = [];
      try {
        const version = await runner.run('losetup', ['--version'], { timeoutMs: options.commandTimeoutMs });
        checks.push({ name: 'losetup present', ok: true, detail: version.stdout.trim() });
      } catch (error) {
        const mapped = toLoopError(error, 'losetup', 'running losetup --version');
        checks.push({ name: 'losetup present', ok: false, detail: mapped.message });
        fixes.push(mapped.code === 'HOST_UNSUPPORTED' ? installHint('losetup') : (mapped.hint ?? mapped.message));
      }
      const isRoot = hostFacts().isRoot;
      checks.push({ name: 'running as root', ok: isRoot, ...(isRoot ? {} : { detail: 'loop devices need CAP_SYS_ADMIN' }) });
      if (!isRoot) fixes.push(ROOT_HINT);
      const control = await fs.exists('/dev/loop-control');
      checks.push({ name: '/dev/loop-control present', ok: control });
      if (!control) fixes.push('load the loop module (modprobe loop) or give the container /dev/loop-control');
      const failed = checks.filter((c) => !c.ok).map((c) => c.name);
      return failed.length === 0
        ? { ok: true, summary: 'loop: losetup works and loop devices are available', checks }
        : { ok: false, summary: `loop: not usable here (${failed.join(', ')} failed)`, checks, fix: fixes.join('; ') };
    },
  };

  async function connectLocal(devicePath: string): Promise<Device> {
    // stat does not follow links, and a local device is often a /dev/disk/by-* link.
    const info = (await fs.exists(devicePath)) ? await fs.stat(await fs.realpath(devicePath)) : undefined;
    if (!info) {
      throw new BerthError('NOT_FOUND', `local device ${devicePath} does not exist`, {
        hint: 'check the connection_info\'s device_path: a local connection names a block device already on this host',
      });
    }
    if (!info.isBlockDevice) {
      throw new BerthError('UNPROCESSABLE', `${devicePath} is not a block device`, {
        hint: 'use driver_volume_type "file" for a regular file; "local" is for an existing block device',
      });
    }
    return { path: devicePath, type: 'block', meta: {} };
  }
}

/**
 * Whether `device` is an attachment of one of `files` as a whole volume, the only kind this
 * transport makes: a device with an offset or size limit was set up by someone else for a part.
 */
function attachesWholeFile(device: LoopDevice, files: readonly string[]): boolean {
  return device.backingFile !== null && files.includes(device.backingFile) && device.offset === 0 && device.sizeLimit === 0;
}

function deviceOf(device: string, backingFile: string): Device {
  return { path: device, type: 'block', meta: { backingFile } };
}

/** The real path of a volume file (the kernel reports real paths as back-file). */
async function backingFileOf(devicePath: string): Promise<string> {
  try {
    return await realpath(devicePath);
  } catch (error) {
    if (error instanceof Error && 'code' in error && (error.code === 'ENOENT' || error.code === 'ENOTDIR')) {
      throw new BerthError('NOT_FOUND', `volume file ${devicePath} does not exist`, {
        hint: 'the backend has no file for this volume: check it with `berth volume show`',
      });
    }
    throw toBerthError(error, 'DRIVER_ERROR');
  }
}

/** Paths a loop device may report for this file: its real path when it exists, and the given path. */
async function candidatePaths(devicePath: string): Promise<string[]> {
  const given = path.resolve(devicePath);
  try {
    const real = await realpath(devicePath);
    return real === given ? [real] : [real, given];
  } catch {
    return [given];
  }
}

function parseSize(stdout: string): number {
  try {
    return parseGetSize64(stdout);
  } catch (error) {
    throw new BerthError('DRIVER_ERROR', error instanceof Error ? error.message : String(error), { cause: error });
  }
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw toBerthError(signal.reason ?? new DOMException('aborted', 'AbortError'), 'CANCELLED');
}

function errnoOf(error: unknown): string | undefined {
  return error instanceof Error && 'code' in error && typeof error.code === 'string' ? error.code : undefined;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
