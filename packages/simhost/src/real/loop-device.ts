import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { BerthError } from '@berth/core';
import type { CommandRunner, DeviceWaiter } from '@berth/host';

/** A loop device and the file behind it, as `losetup --json --list` reports them. */
export interface LoopEntry {
  name: string;
  backFile: string;
}

function sysLoopDir(device: string): string {
  return path.join('/sys/block', path.basename(device), 'loop');
}

/**
 * Attach `file` to a free loop device and return its path (`/dev/loopN`). Never with
 * `--direct-io=on`: qemu 7.2's FUSE export puts concurrent direct writes at the wrong offsets
 * (HOST-FACTS, fixtures `integrity-iscsi-loop-dio-*`).
 */
export async function attachLoop(runner: CommandRunner, file: string, timeoutMs: number): Promise<string> {
  const result = await runner.run('losetup', ['--find', '--show', file], { timeoutMs });
  const device = result.stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(device)) {
    throw new BerthError('DRIVER_ERROR', `losetup --find --show ${file} printed ${JSON.stringify(device)}, not a loop device`);
  }
  return device;
}

/** The file a loop device is attached to (sysfs `loop/backing_file`), or undefined when it is free. */
export async function loopBackingFile(device: string): Promise<string | undefined> {
  try {
    return (await readFile(path.join(sysLoopDir(device), 'backing_file'), 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/** The size of a loop device in bytes (sysfs `size` counts 512-byte sectors). */
export async function loopSizeBytes(device: string): Promise<number> {
  const sectors = await readFile(path.join('/sys/block', path.basename(device), 'size'), 'utf8');
  return Number(sectors.trim()) * 512;
}

/**
 * Detach `device` if it is still attached to `file`, and wait until the kernel has let it go (a
 * device someone holds open is only marked for auto-clear, and detaches on the last close).
 */
export async function detachLoop(runner: CommandRunner, waiter: DeviceWaiter, device: string, file: string, timeoutMs: number): Promise<void> {
  const attachedToFile = async (): Promise<boolean> => {
    const backing = await loopBackingFile(device);
    // A deleted backing file reads back as `<path> (deleted)`.
    return backing !== undefined && (backing === file || backing.startsWith(`${file} `));
  };
  if (!(await attachedToFile())) return;
  const result = await runner.run('losetup', ['--detach', device], { timeoutMs, reject: false });
  if (result.exitCode !== 0 && !/No such device or address|No such device/.test(result.stderr)) {
    throw new BerthError('DRIVER_ERROR', `losetup --detach ${device} failed: ${result.stderr.trim() || `exit ${result.exitCode}`}`);
  }
  await waiter.waitUntil('/sys/block', async () => ((await attachedToFile()) ? undefined : true), {
    timeoutMs,
    what: `${device} to detach from ${file} (is it still open?)`,
  });
}

/** Make the loop device re-read its backing file's size (`losetup --set-capacity`). */
export async function setLoopCapacity(runner: CommandRunner, device: string, timeoutMs: number): Promise<void> {
  await runner.run('losetup', ['--set-capacity', device], { timeoutMs });
}

/** Every attached loop device with its backing file (`losetup --json --list`). */
export async function listLoops(runner: CommandRunner, timeoutMs: number): Promise<LoopEntry[]> {
  const result = await runner.run('losetup', ['--json', '--list'], { timeoutMs });
  if (result.stdout.trim() === '') return [];
  const parsed = JSON.parse(result.stdout) as { loopdevices?: Array<{ name?: unknown; 'back-file'?: unknown }> };
  return (parsed.loopdevices ?? []).flatMap((d) =>
    typeof d.name === 'string' && typeof d['back-file'] === 'string' ? [{ name: d.name, backFile: d['back-file'] }] : [],
  );
}
