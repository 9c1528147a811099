import { readFile, stat } from 'node:fs/promises';
import { WaitTimeoutError } from './errors.js';
import type { CommandRunner, DeviceWaiter, HostFs } from './types.js';

/** How long a holder may take to close a device before a disconnect refuses it as busy (the transports' `holderGraceMs`). */
export const DEFAULT_HOLDER_GRACE_MS = 3_000;

/** A block device whose holders are looked for. */
export interface HeldDevice {
  /** Its node, a host path (`/dev/sdb`, `/dev/loop3`, `/dev/dm-0`). */
  node: string;
  /** Its name under `/sys/block` (`sdb`, `loop3`, `dm-0`). */
  sysName: string;
  /** `major:minor`, as in `/proc/self/mountinfo`; when left out, the node's own (its `stat`; none when it is no block device), or `/sys/block/<sysName>/dev` without a node. */
  rdev?: string | undefined;
}

export interface HolderCheckOptions {
  /** The deadline of each command (`fuser`, `findmnt`). */
  timeoutMs: number;
  signal?: AbortSignal | undefined;
  /** Look for processes that have it open (`fuser`); default true. */
  processes?: boolean;
  /** Devices stacked on it that do not count (the map a multipath disconnect flushes itself). */
  ignoreStacked?: readonly string[];
}

/** Parse `fuser DEVICE` output (`/dev/x: 123 456m`, the name on stderr): the pids. */
export function parseFuserPids(stdout: string): number[] {
  return [...stdout.matchAll(/(\d+)[a-zA-Z]*/g)].map((m) => Number(m[1])).filter((pid) => Number.isSafeInteger(pid) && pid > 0);
}

/**
 * What keeps `device` busy, if anything (`undefined` when nothing berth can see does): a device
 * stacked on it (`/sys/block/<name>/holders`), a mount of it (its `major:minor` in
 * `/proc/self/mountinfo`, or `findmnt` when that file is not readable under the host root), a
 * process that has its node open (`fuser` on the node's real path). Read through `fs` and
 * `runner` as on any host; a missing `fuser` finds no process.
 */
export async function holderOf(deps: { fs: HostFs; runner: CommandRunner }, device: HeldDevice, options: HolderCheckOptions): Promise<string | undefined> {
  const { fs, runner } = deps;
  const ignore = new Set(options.ignoreStacked ?? []);
  const stacked = (await fs.readdir(`/sys/block/${device.sysName}/holders`).catch(() => [] as string[])).filter((name) => !ignore.has(name));
  if (stacked.length > 0) return `device ${stacked.join(', ')} is stacked on it`;
  // Reads only: a look that hangs in the kernel (a device over a dead target) is given up on.
  const run = { timeoutMs: options.timeoutMs, reject: false, abandonIfStuck: true, ...(options.signal ? { signal: options.signal } : {}) } as const;
  const rdev = device.rdev ?? (await nodeRdev(fs, device.sysName, device.node));
  if (rdev) {
    const mountinfo = await fs.readFileIfExists('/proc/self/mountinfo').catch(() => undefined);
    if (mountinfo !== undefined) {
      const mount = mountinfo.split('\n').find((line) => line.split(' ')[2] === rdev);
      if (mount) return `it is mounted at ${mount.split(' ')[4] ?? '?'}`;
    } else {
      const found = await runner.run('findmnt', ['--raw', '--noheadings', '--output', 'MAJ:MIN,TARGET'], run).catch(() => undefined);
      const line = found?.exitCode === 0 ? found.stdout.split('\n').find((l) => l.split(' ')[0] === rdev) : undefined;
      if (line) return `it is mounted at ${line.split(' ').slice(1).join(' ') || '?'}`;
    }
  }
  if (options.processes === false) return undefined;
  const fuser = await runner.run('fuser', [fs.resolve(device.node)], run).catch(() => undefined);
  // fuser exits 1 when nobody has it open.
  if (fuser === undefined || fuser.notFound || fuser.exitCode !== 0) return undefined;
  const pids = parseFuserPids(fuser.stdout);
  if (pids.length === 0) return undefined;
  const named = await Promise.all(
    pids.slice(0, 5).map(async (pid) => {
      const comm = (await readProcComm(fs, pid))?.trim();
      return comm ? `${pid} (${comm})` : String(pid);
    }),
  );
  return `process ${named.join(', ')}${pids.length > 5 ? ` and ${pids.length - 5} more` : ''} has it open`;
}

/**
 * The `major:minor` a mount of the device shows in mountinfo: the node's own (on a host the same as
 * its sysfs `dev`; a node made for the device elsewhere — a simulated host's — is what was
 * mounted); a node that is not a block device (a test's file) has no device to mount; without a
 * node, the sysfs `dev`.
 */
async function nodeRdev(fs: HostFs, sysName: string, node: string): Promise<string | undefined> {
  const st = await stat(fs.resolve(node)).catch(() => undefined);
  if (st === undefined) return (await fs.readFileIfExists(`/sys/block/${sysName}/dev`).catch(() => undefined))?.trim();
  if (!st.isBlockDevice()) return undefined;
  return majorMinor(st.rdev);
}

/** A device number (`stat`'s `rdev`) as `major:minor`, as `/proc/self/mountinfo` shows it. */
export function majorMinor(rdev: number): string {
  // Linux's dev_t: major in bits 8–19 (and 32–43), minor in bits 0–7 and 20–31.
  const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  return `${major}:${minor}`;
}

async function readProcComm(fs: HostFs, pid: number): Promise<string | undefined> {
  const viaHost = await fs.readFileIfExists(`/proc/${pid}/comm`).catch(() => undefined);
  if (viaHost !== undefined) return viaHost;
  return readFile(`/proc/${pid}/comm`, 'utf8').catch(() => undefined);
}

/**
 * What still holds `device` after `graceMs` (`undefined` once nothing does): a holder that closes
 * within the grace (udev's probe, another tool's search) was a passer-by, not a user of the
 * device. Checked every 100 ms; the wait follows `signal` (an abort throws).
 */
export async function lastingHolderOf(
  deps: { fs: HostFs; runner: CommandRunner; waiter: DeviceWaiter },
  device: HeldDevice,
  options: HolderCheckOptions & { graceMs: number },
): Promise<string | undefined> {
  let holder = await holderOf(deps, device, options);
  if (holder === undefined || options.graceMs <= 0) return holder;
  try {
    await deps.waiter.waitUntil(
      `/sys/block/${device.sysName}`,
      async () => {
        holder = await holderOf(deps, device, options);
        return holder === undefined ? true : undefined;
      },
      { timeoutMs: options.graceMs, pollMs: 100, what: `${device.node} to be closed`, ...(options.signal ? { signal: options.signal } : {}) },
    );
    return undefined;
  } catch (error) {
    if (error instanceof WaitTimeoutError) return holder;
    throw error;
  }
}
