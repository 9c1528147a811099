import { setTimeout as sleep } from 'node:timers/promises';
import { BerthError } from '@berth/core';
import { LOOP_DETACH_PROGRAM, WaitTimeoutError, holderOf as sharedHolderOf, type CommandRunner, type DeviceWaiter, type HostFs, type RunOptions } from '@berth/host';

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

/**
 * Flush the loop device's buffers down to the FUSE file, and through QEMU to the target
 * (`blockdev --flushbufs`). It sends no cache flush and reports no write-back error the kernel met
 * earlier (BLKFLSBUF answers 0): an fsync here (`sync DEVICE`) would report one, but it sends a
 * SYNCHRONIZE CACHE through qemu to the target, which on a dead path waits out qemu's request
 * timeout even for an idle volume and then refuses the detach — tried and left out (2026-12-06).
 */
export async function flushLoop(runner: CommandRunner, device: string, options: LoopStepOptions): Promise<void> {
  loopName(device);
  await runner.run('blockdev', ['--flushbufs', device], { timeoutMs: options.timeoutMs, ...(options.signal ? { signal: options.signal } : {}) });
}

/** How long a detach keeps trying a device found held before it reports `held-open` (udev's probe opens a new device for a moment). */
export const DEFAULT_HOLDER_GRACE_MS = 1_000;
const BUSY_RETRY_MS = 100;

/** berth-loop-detach (`@berth/host`'s, which the loop transport runs too), or undefined when the build made none. */
export const LOOP_DETACH_HELPER: string | undefined = LOOP_DETACH_PROGRAM;

/** Options of `detachFuseLoop`. */
export interface DetachLoopOptions extends LoopStepOptions {
  /** How long a device found held is tried again before `held-open` (default `DEFAULT_HOLDER_GRACE_MS`). */
  holderGraceMs?: number;
  /**
   * The berth-loop-detach to run (`LOOP_DETACH_HELPER`); by default none: holders looked for
   * first, then `losetup --detach` (see the README: with the program, qemu-storage-daemon died
   * under the test suites about one run in five, never without it).
   */
  helper?: string | null;
  /**
   * A device another opener holds: `keep` (default) leaves it attached as it was, autoclear off;
   * `defer` lets the kernel detach it at the last close (`losetup --detach`, no holder check, no
   * flush of its own) — for a device whose export is dead (its data cannot reach the target any
   * more) or a detach forced past a failed flush, which must not leave a device pinned to a file that is going away.
   */
  whenHeld?: 'keep' | 'defer';
}

/** What one run of berth-loop-detach answered (its line first; see the C source). */
type HelperOutcome = 'detached' | 'busy' | 'not-attached' | 'mismatch' | 'autoclear-set' | 'unusable' | { failed: string; flush?: boolean; lost?: boolean; autoclearLeft?: boolean; cut?: boolean };

/**
 * Detach `device` if it is attached to `file`, and wait until the kernel has let the file go.
 * Resolves `detached`; `held-open` when another opener still holds the device after
 * `holderGraceMs` — the device is then left attached as it was, autoclear off, so it never
 * vanishes at the last close while its caller's record still names it (see the README); a device
 * attached to another file is left alone (`not-attached`). Throws — the device untouched — when
 * the flush in the detach failed (`details.reason: 'flush-failed'`).
 *
 * By default holders are looked for first (stacked devices, mounts, `fuser`): one seen leaves the
 * device untouched; then `losetup --detach`, and a holder none of them saw makes the kernel defer
 * the detach (autoclear), reported `held-open`. With `helper` (berth-loop-detach) the kernel
 * answers "held" in the detach itself (LOOP_CLR_FD on the program's own descriptor, autoclear
 * cleared again when another opener holds it) — not the default: see the README.
 */
export async function detachFuseLoop(
  deps: { runner: CommandRunner; waiter: DeviceWaiter; fs: HostFs },
  device: string,
  file: string,
  options: DetachLoopOptions,
): Promise<'detached' | 'held-open' | 'not-attached'> {
  const attached = async (): Promise<LoopInfo | undefined> => {
    const info = await loopInfo(deps.fs, device);
    return info?.backingFile === file ? info : undefined;
  };
  const run = { timeoutMs: options.timeoutMs, reject: false, ...(options.signal ? { signal: options.signal } : {}) } as const;
  const first = await attached();
  if (first === undefined) return 'not-attached';
  // Someone's detach is already waiting for the last close (autoclear): not berth's to undo.
  if (first.autoclear) return 'held-open';
  const helper = options.helper ?? undefined;
  const grace = options.holderGraceMs ?? DEFAULT_HOLDER_GRACE_MS;

  const waitDetached = async (): Promise<'detached' | 'held-open'> => {
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
  };

  if (helper !== undefined && options.whenHeld !== 'defer') {
    // The backing file's device and inode as the loop device itself reports them, read while
    // sysfs names `file` before and after: the program detaches only a device backing that inode.
    const identity = await backingIdentity(deps.runner, device, run);
    if (identity !== undefined && (await attached()) !== undefined) {
      const once = (): Promise<HelperOutcome> => runDetachHelper(deps.runner, helper, device, identity, run);
      let outcome = await once();
      const deadline = Date.now() + grace;
      // Each run awaited to its answer: a run left behind could detach after this said it did not.
      while (outcome === 'busy' && Date.now() + BUSY_RETRY_MS <= deadline) {
        await sleep(BUSY_RETRY_MS, undefined, options.signal ? { signal: options.signal } : {});
        outcome = await once();
      }
      if (outcome === 'detached') return waitDetached();
      if (outcome === 'busy' || outcome === 'autoclear-set') return 'held-open';
      // It could not open the device, or it is running down: gone soon, or already.
      if (outcome === 'not-attached') return (await attached()) === undefined ? 'not-attached' : waitDetached();
      if (outcome === 'mismatch') {
        if ((await attached()) === undefined) return 'not-attached';
        throw new BerthError('DRIVER_ERROR', `${device} names ${file} but no longer backs the inode it reported a moment ago; not detaching it`, {
          hint: 'look at losetup --list; then detach again',
          details: { device, reason: 'identity-mismatch' },
        });
      }
      if (outcome !== 'unusable') {
        if (outcome.lost) {
          throw new BerthError('DRIVER_ERROR', `writes through ${device} did not reach ${file} (${outcome.failed}); not detaching it`, {
            hint: `the data written through ${device} that the export refused is not on the target (see the kernel log and the target); the kernel reports it once, so a second detach goes on`,
            details: { device, reason: 'writeback-failed' },
          });
        }
        if (outcome.flush) {
          throw new BerthError('DRIVER_ERROR', `flushing ${device} failed (${outcome.failed}); not detaching it`, {
            hint: `the kernel refused to flush ${device}; it stays attached as it was: see the kernel log, then detach again`,
            details: { device, reason: 'flush-failed' },
          });
        }
        // Held, but autoclear could not be cleared (or a run cut short left it set): the kernel detaches it at the last close.
        if (outcome.autoclearLeft || (outcome.cut && (await attached())?.autoclear)) return 'held-open';
        if (outcome.cut && (await attached()) === undefined) return 'detached';
        throw new BerthError('DRIVER_ERROR', `detaching ${device} failed: ${outcome.failed}`, { details: { device } });
      }
    }
  }

  // Without the program: a holder seen first leaves the device untouched (unless the caller defers to the kernel).
  if (options.whenHeld !== 'defer' && (await holderOf(deps, first, run)) !== undefined) return 'held-open';
  // `losetup --detach` goes by the number, and the holder check walks /proc: look again that the
  // number still backs `file` (detached by hand and bound to another file meanwhile, it is not ours).
  if ((await attached()) === undefined) return 'not-attached';
  const result = await deps.runner.run('losetup', ['--detach', device], run);
  if (result.exitCode !== 0 && !/No such device/.test(result.stderr)) {
    throw new BerthError('DRIVER_ERROR', `losetup --detach ${device} failed: ${result.stderr.trim() || `exit ${result.exitCode}`}`, {
      details: { device, exitCode: result.exitCode },
    });
  }
  // LOOP_CLR_FD tears the device down at once unless another opener holds it; then it only sets
  // autoclear, and the device goes at the last close: no need to wait for that.
  if ((await attached())?.autoclear) return 'held-open';
  return waitDetached();
}

/** `MAJ:MIN` and inode of the file `device` backs, as the device reports them (`losetup --list`); undefined when it cannot tell. */
async function backingIdentity(runner: CommandRunner, device: string, run: RunOptions): Promise<{ majMin: string; inode: string } | undefined> {
  const result = await runner.run('losetup', ['--list', '--json', '--output', 'BACK-MAJ:MIN,BACK-INO', device], run).catch(() => undefined);
  if (result === undefined || result.exitCode !== 0) return undefined;
  // Read from the text: losetup pads MAJ:MIN with spaces, and an inode may pass 2^53.
  const majMin = /"back-maj:min":\s*"\s*(\d+:\d+)\s*"/.exec(result.stdout)?.[1];
  const inode = /"back-ino":\s*"?(\d+)"?/.exec(result.stdout)?.[1];
  return majMin !== undefined && inode !== undefined ? { majMin, inode } : undefined;
}

async function runDetachHelper(runner: CommandRunner, helper: string, device: string, identity: { majMin: string; inode: string }, run: RunOptions): Promise<HelperOutcome> {
  const result = await runner.run(helper, [device, identity.majMin, identity.inode], run);
  // The line first: a run the runner reports killed may still have finished (its signals are blocked).
  const line = result.stdout.trim().split('\n').pop() ?? '';
  const word = line.split(/\s+/)[0] ?? '';
  if (word === 'detached' || word === 'busy' || word === 'not-attached' || word === 'mismatch' || word === 'autoclear-set') return word;
  if (word === 'no-permission' || result.notFound === true || result.exitCode === 126 || result.exitCode === 127) return 'unusable';
  if (word === 'flush-failed') return { failed: `errno ${line.split(/\s+/)[1] ?? '?'}`, flush: true };
  if (word === 'writeback-failed') return { failed: `errno ${line.split(/\s+/)[1] ?? '?'}`, flush: true, lost: true };
  if (word === 'autoclear-left') return { failed: line, autoclearLeft: true };
  return { failed: result.stderr.trim() || `exit status ${String(result.exitCode)}`, cut: result.exitCode < 0 };
}

/** What holds `device` open, if anything berth can see: a device stacked on it, a mount of it, a process (`fuser`); `@berth/host`'s check. */
async function holderOf(deps: { runner: CommandRunner; fs: HostFs }, info: LoopInfo, run: RunOptions): Promise<string | undefined> {
  return sharedHolderOf(deps, { node: info.device, sysName: loopName(info.device), rdev: info.rdev }, { timeoutMs: run.timeoutMs ?? 10_000, signal: run.signal });
}
