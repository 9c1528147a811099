import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { createCommandRunner, createDeviceWaiter, createHostFs, type CommandRunner } from '@berth/host';
import { detachFuseLoop, loopsBacking, unmountFuseUnder } from '@berth/qemu';
import { REAL_DIR_PREFIX } from './real-target-access.js';

/** What `sweepStrays` found and removed (empty lists when everything had been cleaned up). */
export interface StrayReport {
  loopDevices: string[];
  daemonPids: number[];
  mounts: string[];
  dirs: string[];
}

/** Options of `sweepStrays`. */
export interface SweepOptions {
  runner?: CommandRunner;
  /** Deadline of each command and of each daemon's exit, in ms (default 5 000). */
  timeoutMs?: number;
}

async function qsdPidsUsing(prefix: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = await readFile(`/proc/${entry}/cmdline`, 'utf8')
      .then((t) => t.split('\0'))
      .catch(() => [] as string[]);
    if (path.basename(argv[0] ?? '') === 'qemu-storage-daemon' && argv.some((a) => a.includes(prefix))) pids.push(Number(entry));
  }
  return pids;
}

async function isGone(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  // A zombie (state Z) has exited; only its parent's wait is missing.
  return stat === undefined || / Z /.test(stat.slice(stat.lastIndexOf(')')));
}

/**
 * The safety net of tests that use `RealTargetAccess` with `workDir`: detach loop devices over
 * files under `<workDir>/berth-real-*`, stop qemu-storage-daemons whose command line names such a
 * path (SIGTERM, then SIGKILL), unmount FUSE mounts left there and remove those directories.
 * Nothing outside `<workDir>/berth-real-*` is touched, so it is safe next to other tests.
 */
export async function sweepStrays(workDir: string, options: SweepOptions = {}): Promise<StrayReport> {
  const runner = options.runner ?? createCommandRunner();
  const timeoutMs = options.timeoutMs ?? 5_000;
  const fs = createHostFs('/');
  const waiter = createDeviceWaiter(fs);
  const root = path.resolve(workDir);
  const prefix = path.join(root, REAL_DIR_PREFIX);
  const report: StrayReport = { loopDevices: [], daemonPids: [], mounts: [], dirs: [] };

  for (const loop of await loopsBacking(fs, (file) => file.startsWith(prefix))) {
    if (loop.backingFile === undefined) continue;
    // One held open is detached at its last close (autoclear): nothing more to do for it here.
    await detachFuseLoop({ runner, waiter, fs }, loop.device, loop.backingFile, { timeoutMs }).catch(() => undefined);
    report.loopDevices.push(loop.device);
  }

  for (const pid of await qsdPidsUsing(prefix)) {
    report.daemonPids.push(pid);
    try {
      process.kill(pid, 'SIGTERM');
      await waiter.waitUntil(`/proc/${pid}`, async () => ((await isGone(pid)) ? true : undefined), { timeoutMs, what: `qemu-storage-daemon ${pid} to exit` });
    } catch {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  for (const entry of await readdir(root).catch(() => [] as string[])) {
    if (!entry.startsWith(REAL_DIR_PREFIX)) continue;
    const dir = path.join(root, entry);
    report.mounts.push(...(await unmountFuseUnder({ fs, runner }, dir, timeoutMs)));
    await rm(dir, { recursive: true, force: true });
    report.dirs.push(dir);
  }
  return report;
}
