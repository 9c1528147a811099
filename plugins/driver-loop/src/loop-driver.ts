import { accessSync, constants as fsConstants } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { realpath, stat, statfs } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { z } from '@berth/core/zod';
import { CommandError, LOOP_DETACH_PROGRAM, WaitTimeoutError, errnoOf, holderOf, hostFacts, lastingHolderOf as sharedLastingHolderOf, nativeProgram, type CommandResult, type HolderCheckOptions } from '@berth/host';
import {
  BerthError,
  identityMismatch,
  KeyedLock,
  lazySchema,
  parseWith,
  sameIdentity,
  storageGoneError,
  toBerthError,
  type CheckResult,
  type ConnectedDevice,
  type ConnectionInfo,
  type Connector,
  type Device,
  type DisconnectOptions,
  type PluginContext,
  type StorageGone,
  type TransportCallContext,
  type TransportDriver,
} from '@berth/core';
import {
  classifyLosetupError,
  findShowArgs,
  LIST_COLUMNS,
  loopIdentity,
  loopName,
  majorMinor,
  parseBackFile,
  parseFindShow,
  parseGetSize64,
  parseAttachAnswer,
  parseLosetupList,
  type LoopDevice,
} from './losetup.js';
import { installHint, ROOT_HINT, toLoopError, type LoopTool } from './loop-errors.js';

/** The transport's registered name. */
export const NAME = 'loop';

/** The `driver_volume_type` values the loop transport connects. */
export const PROTOCOLS = ['file', 'local'] as const;
/** The `connected()` source key that names the volume: the backing file. */
export const SOURCE_KEYS: readonly string[] = ['device_path'];

/** Options of the `loop` transport (from the config's plugin options). */
export const zLoopDriverOptions = lazySchema(() => z.object({
  /**
   * Attach with `--direct-io=on` (no double caching). `auto`: on, except for files on FUSE, where
   * qemu-storage-daemon 7.2's export corrupts parallel direct writes.
   */
  directIo: z.union([z.boolean(), z.literal('auto')]).default('auto'),
  /** How long to wait for a loop device node to appear, or to stop backing its file. */
  deviceTimeoutMs: z.number().int().positive().default(10_000),
  /** Timeout of one losetup/blockdev run. */
  commandTimeoutMs: z.number().int().positive().default(15_000),
  /**
   * How long a process holding the device may take to close it before a disconnect refuses: udev's
   * probe and another losetup's search for a free device open loop devices for a moment.
   */
  holderGraceMs: z.number().int().nonnegative().default(3_000),
  /**
   * How a disconnect tells a busy device from a free one. `auto`: with `berth-loop-detach` (built
   * with the package when a C compiler is there; see the README), which asks the kernel itself in
   * the detach; `off`, or without it: `fuser` first, then `losetup --detach`.
   */
  nativeDetach: z.enum(['auto', 'off']).default('auto'),
  /**
   * How a connect attaches a file. `auto`: with `berth-loop-attach` (built with the package when a
   * C compiler is there; see the README), one process that finds or makes the device and reads its
   * identity on the descriptor that configured it; `off`, or without it: `losetup --list`,
   * `losetup --find --show`, `losetup --list` again.
   */
  nativeAttach: z.enum(['auto', 'off']).default('auto'),
}));

/** Parsed options of the `loop` transport. */
export type LoopDriverOptions = z.output<typeof zLoopDriverOptions>;

const zAbsolutePath = lazySchema(() => z
  .string()
  .min(1)
  .refine((p) => path.isAbsolute(p), 'must be an absolute path')
  .refine((p) => !p.includes('\0'), 'must not contain NUL'));

/** The part of a connection_info the loop transport reads. */
const zLoopConnection = lazySchema(() => z.object({
  driver_volume_type: z.enum(PROTOCOLS),
  data: z.looseObject({
    device_path: zAbsolutePath,
    access_mode: z.enum(['rw', 'ro']).optional(),
  }),
}));

type LoopConnection = z.output<typeof zLoopConnection>;

/** berth-loop-detach (`@berth/host`'s: `@berth/qemu` detaches its FUSE loop devices with it too). */
const DETACH_HELPER = LOOP_DETACH_PROGRAM;
// A C program of this package (src/native/*.c), built into dist/ beside this module (in the CLI's
// bundle: copied beside the chunk that holds it). The literal `./NAME` URL is what the bundle's
// check looks for (test/cli.e2e.test.ts).
/** berth-loop-attach (src/native/berth-loop-attach.c). */
const ATTACH_HELPER = nativeProgram([new URL('./berth-loop-attach', import.meta.url), new URL('../dist/berth-loop-attach', import.meta.url)]);

/**
 * What berth-loop-detach answered (its line; see the C source). `unusable`: it could not run here
 * or may not change the device (nothing done); `unknown`: cut short before it answered.
 */
type HelperOutcome =
  | 'detached'
  | 'busy'
  | 'not-attached'
  | 'unusable'
  | 'autoclear-set'
  | { mismatch: string }
  | { autoclearLeft: string }
  | { flushFailed: string }
  | { writebackFailed: string }
  | { failed: string; unknown: boolean };

/** How often a device found busy is tried again within the holder grace. */
const BUSY_RETRY_MS = 100;

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

  async function run(tool: LoopTool, args: readonly string[], what: string, signal?: AbortSignal, readOnly = false): Promise<CommandResult> {
    try {
      return await runner.run(tool, args, { timeoutMs: options.commandTimeoutMs, ...(signal ? { signal } : {}), ...(readOnly ? { abandonIfStuck: true } : {}) });
    } catch (error) {
      throw toLoopError(error, tool, what);
    }
  }

  async function listLoopDevices(signal?: AbortSignal): Promise<LoopDevice[]> {
    // A listing changes nothing: one stuck in the kernel on a loop device over a file that does not
    // answer (a FUSE export of a dead iSCSI target, a dead NFS server) is given up on.
    const result = await run('losetup', ['--json', '--list', '--output', LIST_COLUMNS], 'listing loop devices', signal, true);
    try {
      return parseLosetupList(result.stdout);
    } catch (error) {
      throw new BerthError('DRIVER_ERROR', error instanceof Error ? error.message : String(error), { cause: error });
    }
  }

  /**
   * The loop devices as losetup lists them; when losetup is not installed, as sysfs shows them
   * (the backing inode then read from the file itself), so that a disconnect can still tell that
   * nothing of this volume is attached and say so, instead of failing for a tool it does not need.
   */
  async function listForDisconnect(signal?: AbortSignal): Promise<LoopDevice[]> {
    try {
      return await listLoopDevices(signal);
    } catch (error) {
      if (!(BerthError.is(error) && error.code === 'HOST_UNSUPPORTED')) throw error;
      logger.warn({ err: error.message }, 'losetup is missing; reading loop devices from sysfs');
      return listFromSysfs();
    }
  }

  async function listFromSysfs(): Promise<LoopDevice[]> {
    const devices: LoopDevice[] = [];
    for (const name of await fs.readdir(SYS_BLOCK)) {
      if (!/^loop\d+$/.test(name)) continue;
      const device = await sysfsDevice(name);
      if (device === undefined) continue;
      const file = device.backingFile !== null && !device.deleted ? await stat(device.backingFile, { bigint: true }).catch(() => undefined) : undefined;
      devices.push({
        ...device,
        ...(file ? { backingDev: majorMinor(file.dev), backingInode: Number(file.ino), backingInodeText: file.ino.toString() } : {}),
      });
    }
    return devices;
  }

  /**
   * Loop device `name` (`loop3`) as its sysfs directory shows it, without the backing file's device
   * and inode (sysfs has no attribute for them); `undefined` when it backs no file, or is being
   * torn down (the kernel answers ENODEV or ENXIO for its attributes then). Any other failure to
   * read an attribute throws: it is no evidence that the device is gone.
   */
  async function sysfsDevice(name: string): Promise<LoopDevice | undefined> {
    const base = `${SYS_BLOCK}/${name}`;
    let tornDown = false;
    const read = async (file: string): Promise<string | undefined> => {
      try {
        return (await fs.readFileIfExists(`${base}/${file}`))?.trim();
      } catch (error) {
        if (errnoOf(error) !== 'ENODEV' && errnoOf(error) !== 'ENXIO') throw error;
        tornDown = true;
        return undefined;
      }
    };
    const backFile = await read('loop/backing_file');
    if (backFile === undefined || backFile === '') return undefined;
    const [rdev, readOnly, directIo, autoclear, offset, sizeLimit] = await Promise.all(
      ['dev', 'ro', 'loop/dio', 'loop/autoclear', 'loop/offset', 'loop/sizelimit'].map(read),
    );
    if (tornDown) return undefined;
    if (autoclear === undefined || offset === undefined || sizeLimit === undefined || rdev === undefined) {
      // A detach between the reads removes `loop/` (and `backing_file` with it) but not `dev`.
      const again = await read('loop/backing_file');
      if (tornDown || again === undefined || again === '') return undefined;
      throw new BerthError('DRIVER_ERROR', `${base} is missing attributes of a bound loop device (dev, loop/autoclear, loop/offset, loop/sizelimit)`, { details: { device: `/dev/${name}` } });
    }
    return {
      name: `/dev/${name}`,
      ...parseBackFile(backFile),
      readOnly: readOnly === '1',
      directIo: directIo === '1',
      autoclear: autoclear === '1',
      offset: Number(offset),
      sizeLimit: Number(sizeLimit),
      logicalSectorSize: null,
      rdev,
    };
  }

  /**
   * The device a disconnect was handed, read from its own sysfs directory rather than from
   * `losetup --list` of every device (one process fewer, ~5 ms here), for berth-loop-detach to
   * detach: the backing file's device and inode are the ones recorded at connect, which the
   * program checks on the open device before it changes anything (another file: it answers
   * mismatch, nothing done). `null`: the device backs no file now. `undefined`: this way does not
   * apply (no identity recorded, not a loop node, no usable program, no sysfs to read): list.
   */
  async function recordedDevice(device: Device): Promise<LoopDevice | null | undefined> {
    if (options.nativeDetach === 'off' || DETACH_HELPER === undefined || helperUnusable) return undefined;
    const name = /^\/dev\/(loop\d+)$/.exec(device.path)?.[1];
    const recorded = device.identity;
    if (name === undefined || recorded?.['kind'] !== 'loop') return undefined;
    const { backingDev, backingInode } = recorded;
    if (typeof backingDev !== 'string' || typeof backingInode !== 'number' || !Number.isSafeInteger(backingInode)) return undefined;
    const now = await sysfsDevice(name);
    if (now === undefined) {
      // Unbound (or gone) only when sysfs shows the device, or shows that it no longer exists
      // while other loop devices are there; a host without a readable /sys/block lists instead.
      if (await fs.exists(`${SYS_BLOCK}/${name}`)) return null;
      return (await fs.exists(device.path)) || !(await fs.exists(SYS_BLOCK)) ? undefined : null;
    }
    return { ...now, backingDev, backingInode, backingInodeText: String(backingInode) };
  }

  /**
   * Disconnect `device` as berth recorded it, without listing every loop device: read alone, its
   * stacked devices and mounts looked at, then flushed and detached by one run of
   * berth-loop-detach, which checks its backing file's identity on the open device first. True
   * when that settled the disconnect; false whenever this way cannot end with the program's own
   * identity check (no record to read, autoclear already set, a holder found, another attachment
   * using it, the program unusable): then the caller lists the devices and decides as before,
   * with the identity the kernel reports.
   */
  async function disconnectRecorded(device: Device, files: readonly string[], key: string, opts: DisconnectOptions, state: DetachRun): Promise<boolean> {
    let now: LoopDevice | null | undefined;
    try {
      now = await recordedDevice(device);
    } catch (error) {
      throw untouched(toLoopError(error, 'losetup', `disconnecting ${key}`));
    }
    if (now === undefined) return false;
    // Gone: the goal is reached.
    if (now === null) return true;
    const identity = loopIdentity(now);
    const whole = attachesWholeFile(now, files) && identity !== undefined && device.identity !== undefined && sameIdentity(device.identity, identity);
    if (!whole || now.autoclear || (opts.inUse ?? []).some((u) => usedBy(u, now))) return false;
    // Its file deleted or another file at its path: the listing tells, by the inode the kernel
    // holds, a device whose storage is gone (refused) from a number given to another file.
    if ((await storageGoneOf(now)) !== undefined) return false;
    const helper = detachHelperFor(now);
    if (helper === undefined) return false;
    // A holder is refused only once the listing confirmed the device is this one (another file's
    // mounted device is an identity mismatch, not busy), and the listing way waits its grace once.
    if ((await holdersOf(now, opts.signal, false)) !== undefined) return false;
    return (await detachDevice(now, files, state, helper, { fromRecord: true })) !== 'unusable';
  }

  /**
   * What keeps `device` busy, if anything: a device stacked on it, a mount of it, a process that has
   * it open. Detaching a busy loop device does not fail: the kernel sets autoclear and lets go at
   * the last close, which is how a device ends up vanishing under its attachment later.
   */
  async function holdersOf(device: LoopDevice, signal?: AbortSignal, processes = true): Promise<string | undefined> {
    // Without its rdev (not listed) no mount can be matched: the sysfs dev file is not read for it.
    return holderOf({ fs, runner }, { node: device.name, sysName: loopName(device.name), rdev: device.rdev ?? '' }, holderCheck(signal, processes));
  }

  function holderCheck(signal: AbortSignal | undefined, processes: boolean): HolderCheckOptions {
    return { timeoutMs: options.commandTimeoutMs, processes, ...(signal ? { signal } : {}) };
  }

  /**
   * What still holds `device` after the holder grace (`undefined` once nothing does): a holder
   * that closes within the grace was a passer-by, not a user of the device.
   */
  async function lastingHolderOf(device: LoopDevice, signal?: AbortSignal, processes = true): Promise<string | undefined> {
    try {
      return await sharedLastingHolderOf(
        { fs, runner, waiter },
        { node: device.name, sysName: loopName(device.name), rdev: device.rdev ?? '' },
        { ...holderCheck(signal, processes), graceMs: options.holderGraceMs },
      );
    } catch (error) {
      throw toLoopError(error, 'losetup', `checking what holds ${device.name}`);
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

  /**
   * A loop device backing one of `files` whose /dev node is missing (removed by hand, a
   * container's own /dev): losetup lists no such device and nothing can open it to detach it, so
   * a disconnect that found "no device" must not report it gone. The untouched error to fail
   * with, or undefined. `only`: look at that device alone; otherwise at every loop device in
   * sysfs. A sysfs read that fails (other than a device being torn down) throws: no evidence.
   */
  async function nodelessBacking(files: readonly string[], only?: string): Promise<BerthError | undefined> {
    // A path that is no loop node (a record of another kind) has no loop device to be bound.
    const single = only === undefined ? undefined : /^\/dev\/(loop\d+)$/.exec(only)?.[1];
    if (only !== undefined && single === undefined) return undefined;
    const names = single !== undefined ? [single] : (await fs.readdir(SYS_BLOCK)).filter((n) => /^loop\d+$/.test(n));
    for (const name of names) {
      const device = `/dev/${name}`;
      const now = await backingFileNow(device);
      if (now === undefined || now.backingFile === null || !files.includes(now.backingFile) || (await fs.exists(device))) continue;
      const rdev = (await fs.readFileIfExists(`${SYS_BLOCK}/${name}/dev`).catch(() => undefined))?.trim() ?? 'MAJ:MIN';
      return untouched(
        new BerthError('DRIVER_ERROR', `${device} still backs ${now.backingFile}, but its device node is missing; not detached`, {
          hint: `make the node again (mknod ${device} b ${rdev.replace(':', ' ')}, or udevadm trigger), then disconnect again`,
          details: { device, reason: 'node-missing' },
        }),
      );
    }
    return undefined;
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
    const helper = attachHelper();
    if (helper !== undefined) {
      const device = await connectWithHelper(helper, file, readOnly, signal);
      if (device !== undefined) return device;
    }
    const before = await listLoopDevices(signal);
    // The path and the file's device and inode: a device of a file since replaced at that path is not this file's.
    const inode = await inodeOf(file);
    const existing = before.find((d) => !d.deleted && attachesWholeFile(d, [file]) && inode !== undefined && backsInode(d, inode));
    if (existing) return reuseAttached(existing, file, readOnly, signal);
    try {
      const directIo = await useDirectIo(file);
      const result = await run('losetup', findShowArgs(file, { directIo, readOnly }), `attaching ${file}`, signal);
      const device = parseFindShow(result.stdout);
      return await settleAttached(device, file, { directIo, readOnly }, signal, async () =>
        (await listLoopDevices(signal)).find((d) => d.name === device && attachesWholeFile(d, [file]) && (inode === undefined || backsInode(d, inode))),
      );
    } catch (error) {
      // An abort or a timeout can land after the kernel attached the file: leave nothing behind.
      await undoAttach(file, { before });
      throw toLoopError(error, 'losetup', `attaching ${file}`);
    }
  }

  /** A device that already backs `file`, given back when it may be: the same mode, not being detached. */
  async function reuseAttached(existing: LoopDevice, file: string, readOnly: boolean, signal: AbortSignal): Promise<Device> {
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
    return deviceOf(existing, file);
  }

  /**
   * The kernel attached `file` to `device`: the fault point, the node, and the device as
   * `identify` reads it (undefined: it no longer backs the file). The caller undoes on a throw.
   */
  async function settleAttached(
    device: string,
    file: string,
    how: { directIo: boolean; readOnly: boolean },
    signal: AbortSignal,
    identify: () => Promise<LoopDevice | undefined>,
  ): Promise<Device> {
    await faults?.hit('loop.connect.after-losetup');
    await waitForNode(device, signal);
    throwIfAborted(signal);
    const made = await identify();
    if (!made) {
      throw new BerthError('DRIVER_ERROR', `${device} does not back ${file} right after it was attached`, {
        hint: 'something detached it at once; look at `dmesg` and `losetup --list`',
      });
    }
    // losetup (and the kernel) attach read-only a file this process may not write: never hand
    // that out for a read-write connect. The caller detaches it again.
    if (made.readOnly !== how.readOnly) throw accessMismatch(file, made.name, how.readOnly);
    logger.info({ device, file, ...how }, 'file attached to loop device');
    return deviceOf(made, file);
  }

  /** Set once berth-loop-attach could not run here or may not attach: losetup from then on. */
  let attachHelperUnusable = false;

  /** Set once util-linux's tools were found on the runner's search path (a missing one is looked for again next time). */
  let toolsFound = false;

  /**
   * Whether `losetup` and `blockdev` are installed where the runner looks. berth-loop-attach needs
   * neither, but the rest of a device's life does (the flush before a detach, the fallbacks, extend):
   * without them a connect would make a device berth could not cleanly let go of, so the losetup
   * way runs instead and fails with its "losetup is not installed" and the package to install.
   */
  function utilLinuxInstalled(): boolean {
    if (toolsFound) return true;
    const dirs = runner.searchPath?.();
    if (dirs === undefined) return (toolsFound = true);
    const found = (tool: string): boolean =>
      dirs.some((dir) => {
        try {
          accessSync(path.join(dir, tool), fsConstants.X_OK);
          return true;
        } catch {
          return false;
        }
      });
    toolsFound = found('losetup') && found('blockdev');
    return toolsFound;
  }

  function attachHelper(): string | undefined {
    return options.nativeAttach === 'off' || attachHelperUnusable || !utilLinuxInstalled() ? undefined : ATTACH_HELPER;
  }

  /**
   * Connect `file` with berth-loop-attach: one process finds the device that backs it already or
   * attaches it, and reads the identity on the descriptor that configured it. `undefined` when
   * the caller is to attach with losetup instead: the program cannot run here or may not attach
   * (remembered), or it failed before changing anything (losetup then says why in its words, or
   * succeeds where the program's one try did not).
   */
  async function connectWithHelper(helper: string, file: string, readOnly: boolean, signal: AbortSignal): Promise<Device | undefined> {
    const directIo = await useDirectIo(file);
    const what = `attaching ${file}`;
    let result: CommandResult;
    try {
      result = await runner.run(helper, [file, ...(directIo ? ['--direct-io'] : []), ...(readOnly ? ['--read-only'] : [])], {
        timeoutMs: options.commandTimeoutMs,
        reject: false,
        signal,
      });
    } catch (error) {
      throw toLoopError(error, 'losetup', what);
    }
    // The line first: a run the runner reports killed (a timeout, a cancel) has still finished
    // when it answered — its signals are blocked — and then its answer is what happened.
    const answer = parseAttachAnswer(result.stdout, file);
    if (answer?.kind === 'existing') return reuseAttached(answer.device, file, readOnly, signal);
    if (answer?.kind === 'attached') {
      const { device } = answer;
      try {
        return await settleAttached(device.name, file, { directIo, readOnly }, signal, async () => {
          // The program's own check compares the descriptor it opened with itself: the kernel's
          // backing_file says whether that is the file at the path the driver resolved.
          const now = await backingFileNow(device.name);
          if (now?.backingFile === file && !now.deleted) return device;
          throw new BerthError(
            'DRIVER_ERROR',
            `${device.name}, attached by berth-loop-attach for ${file}, backs ${now?.backingFile ?? 'nothing'}${now?.deleted ? ' (deleted)' : ''} by the kernel's account; detaching it`,
            { hint: 'the volume file\'s path changed while it was attached (a rename or a link); connect again', details: { device: device.name } },
          );
        });
      } catch (error) {
        await undoAttach(file, { made: device });
        throw toLoopError(error, 'losetup', what);
      }
    }
    // Its end is unknown: cut short after it found the file unattached (`free`), killed by
    // something else than berth before it said anything (the spawner lost), or it could not
    // detach what it configured. It may have attached: look, and detach what appeared; never
    // attach again with losetup (that could make a second device).
    const unknownEnd = answer === undefined && result.exitCode < 0 && !result.aborted && !result.timedOut && result.notFound !== true;
    if (answer?.kind === 'free' || answer?.kind === 'undo-failed' || unknownEnd) {
      await undoAttach(file, { before: [] });
      const how = answer?.kind === 'undo-failed' ? `could not read back nor detach the device it configured (${answer.reason})` : 'ended without an answer';
      throw new BerthError('DRIVER_ERROR', `${what}: berth-loop-attach ${how}; berth detached what of the file appeared`, {
        cause: new CommandError(result, { notFound: false }),
        hint: 'look at `dmesg` and `losetup --list`; nativeAttach: off attaches with losetup',
        details: { exitCode: result.exitCode, stderr: result.stderr.trim() },
      });
    }
    if (answer?.kind === 'undone') {
      throw new BerthError('DRIVER_ERROR', `${what}: berth-loop-attach attached it but could not read the device back (${answer.reason}), and detached it again`, {
        hint: 'look at `dmesg` and `losetup --list`; nativeAttach: off attaches with losetup',
      });
    }
    if (result.aborted || result.timedOut) {
      // Stopped before it printed anything: it changed nothing.
      throw toLoopError(new CommandError(result, { notFound: false }), 'losetup', what);
    }
    if (answer?.kind === 'no-permission' || result.notFound === true || result.exitCode === 126 || result.exitCode === 127) {
      attachHelperUnusable = true;
      logger.warn({ helper, file, stderr: result.stderr.trim() }, 'berth-loop-attach cannot run or may not attach loop devices here; attaching with losetup');
      return undefined;
    }
    logger.debug({ file, answer: result.stdout.trim(), stderr: result.stderr.trim() }, 'berth-loop-attach changed nothing; attaching with losetup');
    return undefined;
  }

  /**
   * Detach what an attach that is not handed out made. `made`: the device it named, with its
   * identity — only that device, and only while it still is that one. `before`: the attach did not
   * say (or not surely) which device — every whole-file device of the path backing the file's
   * device and inode now that was not in `before`; never a device matched by its path alone.
   * Lists with sysfs when losetup is missing; failures are logged (the caller throws its own).
   */
  async function undoAttach(file: string, undo: { made: LoopDevice } | { before: readonly LoopDevice[] }): Promise<void> {
    const state: DetachRun = { force: true, errors: [] };
    try {
      const now = await listForDisconnect();
      let chosen: LoopDevice[];
      if ('made' in undo) {
        const wanted = loopIdentity(undo.made);
        chosen = now.filter((d) => {
          const identity = loopIdentity(d);
          return d.name === undo.made.name && wanted !== undefined && identity !== undefined && sameIdentity(wanted, identity);
        });
      } else {
        const inode = await inodeOf(file);
        const earlier = new Set(undo.before.map((d) => d.name));
        chosen = inode === undefined ? [] : now.filter((d) => !d.deleted && attachesWholeFile(d, [file]) && backsInode(d, inode) && !earlier.has(d.name));
      }
      for (const d of chosen) await detachDevice(d, [file], state, detachHelperFor(d));
    } catch (error) {
      state.errors.push(toLoopError(error, 'losetup', `undoing the attach of ${file}`));
    }
    if (state.errors.length > 0) {
      logger.warn({ file, errors: state.errors.map((e) => e.message) }, 'could not undo a failed attach');
    }
  }

  interface DetachRun {
    force: boolean;
    errors: BerthError[];
    signal?: AbortSignal;
    /**
     * Set once a device of the run was detached: a forced run goes on past a flush's error (each
     * `untouched` when it happened: nothing had changed yet), so the run as a whole is untouched
     * only when nothing was detached after it.
     */
    detached?: boolean;
  }

  /** Record an error, or throw it when not forcing. */
  function fail(runState: DetachRun, error: unknown, tool: LoopTool, what: string): void {
    const berthError = toLoopError(error, tool, what);
    if (!runState.force) throw berthError;
    runState.errors.push(berthError);
  }

  /** Set once a detach found no `sync` on PATH (said once). */
  let syncMissingSaid = false;

  /** Set once berth-loop-detach could not run here or may not change devices: the old way from then on. */
  let helperUnusable = false;

  /** The helper for a disconnect of `d` that must not detach a busy device, when it can be used. */
  function detachHelperFor(d: LoopDevice): string | undefined {
    if (options.nativeDetach === 'off' || DETACH_HELPER === undefined || helperUnusable) return undefined;
    return d.backingDev !== undefined && d.backingInodeText !== undefined ? DETACH_HELPER : undefined;
  }

  async function runDetachHelper(helper: string, d: LoopDevice, signal?: AbortSignal): Promise<HelperOutcome> {
    const result = await runner.run(helper, [d.name, d.backingDev ?? '', d.backingInodeText ?? ''], {
      timeoutMs: options.commandTimeoutMs,
      reject: false,
      ...(signal ? { signal } : {}),
    });
    // The line first: a run the runner reports killed (a timeout, a cancel) may still have
    // finished — its signals are blocked — and then its answer is what happened.
    const line = result.stdout.trim().split('\n').pop() ?? '';
    const [word = '', ...rest] = line.split(/\s+/);
    if (word === 'detached' || word === 'busy' || word === 'not-attached' || word === 'autoclear-set') return word;
    if (word === 'no-permission') return 'unusable';
    if (word === 'mismatch') return { mismatch: rest.join(' ') };
    if (word === 'autoclear-left') return { autoclearLeft: line };
    if (word === 'flush-failed') return { flushFailed: errnoName(Number(rest[0] ?? Number.NaN)) };
    if (word === 'writeback-failed') return { writebackFailed: errnoName(Number(rest[0] ?? Number.NaN)) };
    if (result.notFound === true || result.exitCode === 126 || result.exitCode === 127) return 'unusable';
    return { failed: result.stderr.trim() || `exit status ${String(result.exitCode)}`, unknown: result.exitCode < 0 };
  }

  /**
   * Detach `d` with berth-loop-detach: the kernel says in the same step whether another opener
   * holds it (then it is left attached, as it was). A holder that closes within the holder grace
   * was a passer-by (udev's probe): the detach is tried again every BUSY_RETRY_MS until then,
   * each run awaited to its answer (a run left behind could detach the device after berth said it
   * did not). True when it detached (the caller waits for it to let go of the file), false when it
   * was not attached, `undefined` when the helper cannot be used here (the caller goes the old way).
   */
  async function detachUnlessHeld(helper: string, d: LoopDevice, files: readonly string[], signal?: AbortSignal): Promise<boolean | undefined> {
    const what = `detaching ${d.name}`;
    const deadline = Date.now() + options.holderGraceMs;
    let outcome: HelperOutcome;
    try {
      outcome = await runDetachHelper(helper, d, signal);
      while (outcome === 'busy' && Date.now() + BUSY_RETRY_MS <= deadline) {
        await sleep(BUSY_RETRY_MS, undefined, signal ? { signal } : {});
        outcome = await runDetachHelper(helper, d, signal);
      }
    } catch (error) {
      // A cancel between two runs: the last one answered busy, the device is as it was.
      throw untouched(toLoopError(error, 'losetup', what));
    }
    if (outcome === 'detached') return true;
    if (outcome === 'not-attached') {
      // The program says so when it cannot open the node (ENOENT) too: a device whose /dev node
      // is missing (removed by hand, a container's /dev) may still back the file.
      const nodeless = await nodelessBacking(files, d.name);
      if (nodeless !== undefined) throw nodeless;
      return false;
    }
    if (outcome === 'unusable') {
      helperUnusable = true;
      logger.warn({ helper, device: d.name }, 'berth-loop-detach cannot run or may not change loop devices here; detaching with fuser and losetup');
      return undefined;
    }
    if (outcome === 'busy') {
      // Named for the user (fuser walks /proc: only on this slow path).
      const holder = (await holdersOf(d, signal)) ?? 'something has it open';
      throw busyError(d.name, holder);
    }
    if (outcome === 'autoclear-set') {
      throw untouched(
        new BerthError('CONFLICT', `${d.name} is already marked to detach at its last close (someone ran losetup --detach while it was open); not touching it`, {
          hint: `find what holds ${d.name} open (fuser -v ${d.name}, lsof ${d.name}) and close it; the kernel detaches it then`,
          details: { device: d.name, reason: 'detach-deferred' },
        }),
      );
    }
    if ('mismatch' in outcome) {
      throw untouched(
        new BerthError('CONFLICT', `${d.name} now backs another file or part of one (backing device, inode and window: ${outcome.mismatch}), not ${files[0] ?? 'this volume'}; not detaching it`, {
          details: { device: d.name, reason: 'identity-mismatch' },
        }),
      );
    }
    if ('autoclearLeft' in outcome) throw deferredDetachError(d.name, files, { helper: outcome.autoclearLeft });
    if ('flushFailed' in outcome) {
      // The flush comes before the detach: the device is attached as it was.
      throw untouched(
        new BerthError('DRIVER_ERROR', `flushing ${d.name} failed (${outcome.flushFailed}); not detaching it`, {
          hint: `the kernel refused to flush ${d.name}; it stays attached: see the kernel log, then disconnect again`,
          details: { device: d.name, reason: 'flush-failed', errno: outcome.flushFailed },
        }),
      );
    }
    if ('writebackFailed' in outcome) throw untouched(lostWritesError(d.name, files[0], outcome.writebackFailed));
    if (!outcome.unknown) throw untouched(new BerthError('DRIVER_ERROR', `${what} failed: ${outcome.failed}`, { details: { device: d.name } }));
    // Cut short before it answered: look at what it left.
    const now = await backingFileNow(d.name);
    if (now === undefined || now.backingFile === null || !files.includes(now.backingFile)) return true;
    const autoclear = (await fs.readFileIfExists(`${SYS_BLOCK}/${loopName(d.name)}/loop/autoclear`).catch(() => undefined))?.trim();
    if (autoclear === '1') throw deferredDetachError(d.name, files, { helper: `cut short: ${outcome.failed}` });
    throw untouched(new BerthError('DRIVER_ERROR', `${what} was cut short (${outcome.failed}); the device is still attached, as it was`, { details: { device: d.name } }));
  }

  /**
   * The CONFLICT to fail with when loop device `d` no longer backs the file it backed when it was
   * listed (another file, or another file at that path: its device and inode, when listed), or
   * undefined: it still does, or it backs nothing any more (a detach has nothing to take then).
   */
  async function reboundSince(d: LoopDevice, files: readonly string[], signal: AbortSignal | undefined): Promise<BerthError | undefined> {
    const now = (await listLoopDevices(signal)).find((l) => l.name === d.name);
    if (now === undefined || now.backingFile === null) return undefined;
    const sameFile = attachesWholeFile(now, files) && (d.backingInodeText === undefined || d.backingDev === undefined || backsInode(now, { backingDev: d.backingDev, backingInodeText: d.backingInodeText }));
    if (sameFile) return undefined;
    return new BerthError('CONFLICT', `${d.name} now backs ${now.backingFile}${now.deleted ? ' (deleted)' : ''}, not ${files[0] ?? 'this volume'}: it was detached and bound again while this detach flushed it; not detaching it`, {
      hint: 'this volume\'s own loop device is gone; run `berth reconcile` to see what is connected',
      details: { device: d.name, reason: 'identity-mismatch' },
    });
  }

  /**
   * Flush and detach `d` (with `helper`: in one run, and only when nobody holds it), then wait
   * until the device no longer backs any of `files`.
   */
  async function detachDevice(d: LoopDevice, files: readonly string[], state: DetachRun, helper?: string, how: { fromRecord?: boolean } = {}): Promise<'unusable' | undefined> {
    const device = d.name;
    if (helper !== undefined) {
      await faults?.hit('loop.disconnect.before-detach');
      let detached: boolean | undefined;
      try {
        detached = await detachUnlessHeld(helper, d, files, state.signal);
      } catch (error) {
        fail(state, error, 'losetup', `detaching ${device}`);
        return;
      }
      if (detached === true) {
        state.detached = true;
        await waitDetached(device, files, state);
      }
      if (detached !== undefined) return;
      // The program could not run: a device read from the record was never checked against the
      // kernel's identity, so the caller lists the devices before the old way touches it.
      if (how.fromRecord === true) return 'unusable';
      // The helper cannot be used here: the old way, holders looked for with fuser first.
      if (!state.force) {
        const holder = await lastingHolderOf(d, state.signal);
        if (holder) {
          fail(state, busyError(device, holder), 'losetup', `detaching ${device}`);
          return;
        }
      }
      await flushBuffers(device, files, state);
    } else {
      await flushBuffers(device, files, state);
      await faults?.hit('loop.disconnect.before-detach');
    }
    // `losetup --detach` goes by the number: after the holder check and the flush (seconds, under
    // force), look again that the number still backs this file — detached by hand and bound to
    // another volume's file meanwhile, it is that volume's device now.
    const rebound = await reboundSince(d, files, state.signal).catch(() => undefined);
    if (rebound !== undefined) {
      fail(state, untouched(rebound), 'losetup', `detaching ${device}`);
      return;
    }
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
        // LOOP_CLR_FD either happens or not; a losetup that could not run it changed nothing. One
        // killed (by us, or by a signal from outside: exit code -1) cannot say whether it did.
        const failed = toLoopError(new CommandError(result, { notFound: result.notFound ?? false }), 'losetup', `detaching ${device}`);
        const unknown = result.timedOut || result.aborted || result.exitCode < 0;
        fail(state, unknown ? failed : untouched(failed), 'losetup', `detaching ${device}`);
        return;
      }
    }
    state.detached = true;
    await waitDetached(device, files, state);
  }

  /**
   * The way without berth-loop-detach, which does both in its own run: `sync DEVICE` (an fsync on
   * a descriptor of its own, which reports a write-back error nobody has seen yet: writes that
   * never reached the file) then `blockdev --flushbufs` (drops the page cache; it reports no
   * write-back error).
   */
  async function flushBuffers(device: string, files: readonly string[], state: DetachRun): Promise<void> {
    let synced: CommandResult;
    try {
      synced = await runner.run('sync', [device], { timeoutMs: options.commandTimeoutMs, reject: false, ...(state.signal ? { signal: state.signal } : {}) });
    } catch (error) {
      fail(state, untouched(toLoopError(error, 'sync', `flushing ${device}`)), 'sync', `flushing ${device}`);
      return;
    }
    if (synced.notFound === true) {
      // A PATH without coreutils' sync (a trimmed container): the check of lost writes is what
      // this way adds to the flush it always did; it goes on without it, said once.
      if (!syncMissingSaid) logger.warn({ device }, '`sync` is not on PATH: a detach without berth-loop-detach cannot tell whether writes through the device were lost');
      syncMissingSaid = true;
    } else if (synced.exitCode !== 0) {
      // Only a failed fsync is lost writes; `sync` failing to open the device (gone, running
      // down, no permission) says nothing about the data.
      const lost = !synced.timedOut && !synced.aborted ? syncError(synced.stderr) : undefined;
      const failed = lost === undefined
        ? toLoopError(new CommandError(synced, { notFound: false }), 'sync', `flushing ${device}`)
        : lostWritesError(device, files[0], lost, state.force);
      fail(state, untouched(failed), 'sync', `flushing ${device}`);
      return;
    }
    try {
      await run('blockdev', ['--flushbufs', device], `flushing ${device}`, state.signal);
    } catch (error) {
      // Nothing was detached yet: the device is as it was.
      fail(state, untouched(toLoopError(error, 'blockdev', `flushing ${device}`)), 'blockdev', `flushing ${device}`);
    }
  }

  /** Wait until `device` no longer backs any of `files`: a detach the kernel deferred is a failure. */
  async function waitDetached(device: string, files: readonly string[], state: DetachRun): Promise<void> {
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
      // losetup --detach succeeded but the device stayed: the kernel set autoclear and detaches
      // it at the last close. It is no longer a device to hand back as attached.
      fail(state, deferredDetachError(device, files, {}, error), 'losetup', `detaching ${device}`);
    }
  }

  return {
    name: NAME,
    protocols: PROTOCOLS,
    // A loop device is its backing file: the file names the volume.
    sourceKeys: SOURCE_KEYS,

    async connectorProperties(): Promise<Partial<Connector>> {
      // A file or local device needs nothing from the connector; core fills host and ip.
      return {};
    },

    async connect(connection: ConnectionInfo, call: TransportCallContext): Promise<Device> {
      const target = parseWith(zLoopConnection, connection, 'loop connection_info');
      throwIfAborted(call.signal);
      if (target.driver_volume_type === 'local') return connectLocal(target.data.device_path);
      const file = await backingFileOf(target.data.device_path);
      return fileLocks.withLock(file, () => connectFile(target, file, call.signal), call.signal);
    },

    async disconnect(connection: ConnectionInfo, device: Device | undefined, opts: DisconnectOptions): Promise<void> {
      const target = parseWith(zLoopConnection, connection, 'loop connection_info');
      // A local device was there before berth and stays after it.
      if (target.driver_volume_type === 'local') return;
      const files = await candidatePaths(target.data.device_path);
      const key = files[0] ?? target.data.device_path;
      // Cut short (the deadline, the caller's cancel) while it waited for the file's lock, it
      // touched nothing: the detach may roll back into `attached`.
      let locked = false;
      await fileLocks.withLock(key, async () => {
        locked = true;
        const state: DetachRun = { force: opts.force, errors: [], signal: opts.signal };
        // Without force, the device handed back is read alone when it can be; a force, a
        // cut-short connect's clean-up (no device) and whatever that way leaves list every device.
        if (device !== undefined && !opts.force && (await disconnectRecorded(device, files, key, opts, state))) return;
        let devices: LoopDevice[];
        try {
          devices = await listForDisconnect(opts.signal);
        } catch (error) {
          throw untouched(toLoopError(error, 'losetup', `disconnecting ${key}`));
        }
        const inUse = (d: LoopDevice): boolean => (opts.inUse ?? []).some((u) => usedBy(u, d));
        let chosen: LoopDevice[];
        if (device !== undefined) {
          const now = devices.find((d) => d.name === device.path);
          // Gone: the goal is reached — unless only its node is (losetup lists no device without one).
          if (!now) {
            const nodeless = await nodelessBacking(files, device.path).catch((error: unknown) => untouched(toLoopError(error, 'losetup', `disconnecting ${key}`)));
            if (nodeless === undefined) return;
            fail(state, nodeless, 'losetup', `disconnecting ${key}`);
            chosen = [];
          } else {
            const identity = loopIdentity(now);
            // Ours: it maps this connection's file (its real path found through its directory when
            // the file itself is gone: \`candidatePaths\`), and is the very device connect returned.
            const mine = attachesWholeFile(now, files) && (device.identity === undefined || identity === undefined || sameIdentity(device.identity, identity));
            // The kernel gave the number to another file (or another attach of this one): not ours.
            if (!mine) throw identityMismatch(device, identity, key);
            if (inUse(now)) {
              throw new BerthError('CONFLICT', `${now.name} is in use by another attachment on this host; not disconnecting it`, {
                hint: 'this is a bug in the caller: a device other attachments use must not be disconnected',
                details: { reason: 'in-use', device: now.name, untouched: true },
              });
            }
            // Its file deleted or replaced behind berth's back: the device holds the only copy of
            // what was written since. Not without force (copy it off first); forced, it goes.
            const gone = opts.force ? undefined : await storageGoneOf(now);
            if (gone !== undefined) throw storageGoneError(now.name, now.backingFile ?? key, gone);
            chosen = [now];
          }
        } else {
          // What a cut-short connect left: whole-file devices of this file that nobody else uses.
          chosen = devices.filter((d) => attachesWholeFile(d, files) && !d.deleted && !inUse(d));
          const nodeless = await nodelessBacking(files).catch((error: unknown) => untouched(toLoopError(error, 'losetup', `disconnecting ${key}`)));
          if (nodeless !== undefined) fail(state, nodeless, 'losetup', `disconnecting ${key}`);
        }
        for (const [index, d] of chosen.entries()) {
          // Without force a busy device is refused and left as it was; the helper asks the kernel
          // in the detach itself, so only the stacked devices and mounts are looked at first.
          const helper = !opts.force && !d.autoclear ? detachHelperFor(d) : undefined;
          if (!opts.force && !d.autoclear) {
            // A wait for the holder cut short (the deadline, the caller's cancel) left the device
            // as it was too — as long as no device before it was detached.
            const holder = await lastingHolderOf(d, opts.signal, helper === undefined).catch((error: unknown) => {
              throw index === 0 && state.errors.length === 0 ? untouched(toBerthError(error)) : error;
            });
            if (holder) throw busyError(d.name, holder);
          }
          await detachDevice(d, files, state, helper);
        }
        if (state.errors.length > 0) {
          throw new BerthError(
            'DRIVER_ERROR',
            `disconnecting ${key} finished with ${state.errors.length} error(s): ${state.errors.map((e) => e.message).join('; ')}`,
            {
              cause: state.errors[0],
              hint: state.errors.find((e) => e.hint !== undefined)?.hint,
              details: {
                errors: state.errors.map((e) => e.toJSON()),
                ...(state.detached !== true && state.errors.every((e) => e.details.untouched === true) ? { untouched: true } : {}),
              },
            },
          );
        }
      }, opts.signal).catch((error: unknown) => {
        if (locked) throw error;
        const cause = toBerthError(error);
        throw untouched(new BerthError(cause.code, cause.message, { ...(cause.hint === undefined ? {} : { hint: cause.hint }), details: { ...cause.details }, cause }));
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
      return fileLocks.withLock(key, async () => {
        const devices = await listLoopDevices(call.signal);
        const atPath = devices.find((d) => d.name === device.path);
        const identity = atPath ? loopIdentity(atPath) : undefined;
        if (atPath && device.identity && identity && !sameIdentity(device.identity, identity)) throw identityMismatch(device, identity, key);
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
      }, call.signal);
    },

    async connected(): Promise<ConnectedDevice[]> {
      const devices = await listLoopDevices();
      // A device with an offset or a size limit maps a part of a file: this transport never makes
      // one, so it is never reported as something berth connected (or could disconnect).
      const whole = devices.filter((d) => d.backingFile !== null && d.offset === 0 && d.sizeLimit === 0);
      return Promise.all(
        whole.map(async (d) => {
          // Only a file the kernel calls unlinked is looked at (deleted, or another file moved
          // over it): a stat of every listed device's file would wait on a stalled FUSE export
          // (iscsi-user's) for good. A disconnect compares its own volume file's inode too.
          const gone = d.deleted ? await storageGoneOf(d) : undefined;
          return {
            device: deviceOf(d, d.backingFile ?? ''),
            source: { device_path: d.backingFile, ...(d.deleted ? { deleted: true } : {}) },
            ...(gone !== undefined ? { storageGone: gone } : {}),
          };
        }),
      );
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

/** The device and inode a loop device backing `file` holds (exact text); undefined when it is gone. */
async function inodeOf(file: string): Promise<{ backingDev: string; backingInodeText: string } | undefined> {
  const info = await stat(file, { bigint: true }).catch(() => undefined);
  return info ? { backingDev: majorMinor(info.dev), backingInodeText: info.ino.toString() } : undefined;
}

function backsInode(device: LoopDevice, inode: { backingDev: string; backingInodeText: string }): boolean {
  return device.backingDev === inode.backingDev && device.backingInodeText === inode.backingInodeText;
}

/**
 * Whether the file behind loop device `d` went away behind berth's back while the device holds it:
 * `deleted` when the kernel says it was unlinked (its back-file ends in ` (deleted)`) and nothing
 * is at its path now (or the path cannot be looked at); `replaced` when another file is at the path
 * (`mv new.img old.img`: the old one unlinked too), or — the device's backing device and inode
 * known — the path names another inode than the device holds (a file hidden by a bind mount; a
 * path that cannot be looked at then says nothing). The device then holds the only copy of what
 * was written through it.
 */
async function storageGoneOf(d: LoopDevice): Promise<StorageGone | undefined> {
  if (d.backingFile === null) return undefined;
  let now: { backingDev: string; backingInodeText: string } | null | undefined;
  try {
    const info = await stat(d.backingFile, { bigint: true });
    now = { backingDev: majorMinor(info.dev), backingInodeText: info.ino.toString() };
  } catch (error) {
    // Nothing at the path; any other failure (EACCES, EIO) says nothing about the file.
    now = errnoOf(error) === 'ENOENT' || errnoOf(error) === 'ENOTDIR' ? null : undefined;
  }
  const known = d.backingDev !== undefined && d.backingInodeText !== undefined;
  if (d.deleted) {
    if (now === null || now === undefined) return 'deleted';
    return known && backsInode(d, now) ? undefined : 'replaced';
  }
  return now && known && !backsInode(d, now) ? 'replaced' : undefined;
}

/** An attach whose read-only mode is not the one asked for (the caller detaches it again). */
function accessMismatch(file: string, device: string, readOnly: boolean): BerthError {
  if (readOnly) {
    return new BerthError('DRIVER_ERROR', `${device} was attached read-write, not read-only as asked for ${file}; detaching it`, { details: { device } });
  }
  return new BerthError('PERMISSION_DENIED', `${file} is not writable by this process: the kernel attached it read-only to ${device}, not read-write as asked; detaching it`, {
    hint: 'give berth write access to the volume file (its owner and mode, or a file system mounted read-write), or attach it read-only (`berth attach --mode ro`, access_mode ro in the connection)',
    details: { device, file },
  });
}

function deviceOf(device: LoopDevice, backingFile: string): Device {
  const identity = loopIdentity(device);
  return { path: device.name, type: 'block', meta: { backingFile }, ...(identity ? { identity } : {}) };
}

/** Whether `used` (a device another attachment holds) is the loop device `d`. */
function usedBy(used: Device, d: LoopDevice): boolean {
  const identity = loopIdentity(d);
  if (used.identity && identity) return sameIdentity(used.identity, identity);
  return used.path === d.name;
}

/**
 * A detach the kernel deferred: something holds the device, which stays attached, marked to
 * detach at its last close. It is no longer a device to hand back as attached.
 */
function deferredDetachError(device: string, files: readonly string[], details: Record<string, unknown>, cause?: unknown): BerthError {
  return new BerthError('CONFLICT', `${device} still backs ${files[0] ?? 'its file'}: something holds it open, and the kernel will detach it when that closes it`, {
    ...(cause === undefined ? {} : { cause }),
    hint: `find what holds ${device} open (fuser -v ${device}, lsof ${device}) and close it; the kernel detaches it at the last close`,
    details: { device, reason: 'detach-deferred', ...details },
  });
}

/** A disconnect refused because something holds the device: it stays attached and usable. */
function busyError(device: string, holder: string): BerthError {
  return new BerthError('CONFLICT', `${device} is busy: ${holder}; not detaching it`, {
    hint: `close what holds ${device} (fuser -v ${device}, lsof ${device}), then detach again; it stays attached and usable meanwhile`,
    details: { device, reason: 'busy', untouched: true },
  });
}

/**
 * Writes through the device that never reached its file (the filesystem under the file was full
 * or failing when the kernel wrote them back; it dropped them and recorded the error on the
 * device). The detach stops before it changes anything, so that the loss is not reported as a
 * clean detach; the kernel reports such an error once, so the next disconnect goes on.
 */
function lostWritesError(device: string, file: string | undefined, error: string, forced = false): BerthError {
  const what = file ?? 'its file';
  const lost = `writes through ${device} did not reach ${what} (${error}): data written to the volume since it was attached may be missing from it`;
  if (forced) {
    // A forced detach goes on past it: the device is detached, the user is told what it cost.
    return new BerthError('DRIVER_ERROR', `${lost}; the detach goes on (forced)`, {
      hint: `the filesystem holding ${what} was full or failing (df, dmesg): free space or repair it, then check the volume's data (fsck, the application's own check) — the writes the kernel dropped are not in ${what}`,
      details: { device, reason: 'writeback-failed', errno: error },
    });
  }
  return new BerthError('DRIVER_ERROR', `${lost}; not detaching ${device}`, {
    hint: `the filesystem holding ${what} was full or failing (df, dmesg): free space or repair it, check the data on the volume (fsck, the application's own check) while it is still attached, then detach again — the kernel reports a lost write once, so the next detach goes on`,
    details: { device, reason: 'writeback-failed', errno: error },
  });
}

/** Mark an error as one that changed nothing (the device is as it was). */
function untouched(error: BerthError): BerthError {
  error.details.untouched = true;
  return error;
}

/** The real path of a volume file (the kernel reports real paths as back-file). */
async function backingFileOf(devicePath: string): Promise<string> {
  try {
    return await realpath(devicePath);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT' || errnoOf(error) === 'ENOTDIR') {
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
  let real: string;
  try {
    real = await realpath(devicePath);
  } catch {
    // The file is gone (deleted behind berth): its directory still says where the kernel saw it.
    try {
      real = path.join(await realpath(path.dirname(given)), path.basename(given));
    } catch {
      return [given];
    }
  }
  return real === given ? [real] : [real, given];
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

/** The name of errno `code` (`EIO`), as a C program printed its number. */
/** Why `sync FILE`'s fsync failed (`sync: error syncing '/dev/loop3': Input/output error` → the last part); undefined when it failed otherwise (opening the file). */
function syncError(stderr: string): string | undefined {
  return /error syncing .*: ([^:\n]+)\s*$/.exec(stderr.trim())?.[1];
}

function errnoName(code: number): string {
  if (!Number.isInteger(code)) return 'an unknown error';
  return Object.entries(osConstants.errno).find(([, value]) => value === code)?.[0] ?? `errno ${String(code)}`;
}
