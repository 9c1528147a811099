import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, lstatSync, openSync } from 'node:fs';
import { lstat, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

/** One row of `losetup --json --list`, its backing file without losetup's " (deleted)" suffix. */
export interface LoopDevice {
  name: string;
  backFile: string;
}

/** Every loop device on the machine (synchronous: assertions read it inline). */
export function listLoopDevices(): LoopDevice[] {
  const out = execFileSync('losetup', ['--json', '--list'], { encoding: 'utf8', timeout: 10_000 }).trim();
  // With no loop device attached losetup prints nothing at all.
  if (out === '') return [];
  const parsed = JSON.parse(out) as { loopdevices: Array<{ name: string; 'back-file'?: string | null }> };
  return parsed.loopdevices.map((d) => ({ name: d.name, backFile: (d['back-file'] ?? '').replace(/ \(deleted\)$/, '') }));
}

/** The loop devices whose backing file is `file`. */
export function loopDevicesBacking(file: string): string[] {
  return listLoopDevices()
    .filter((d) => d.backFile === file)
    .map((d) => d.name);
}

/** The loop devices whose backing file lies under `dir`. */
export function loopDevicesUnder(dir: string): string[] {
  const prefix = dir.endsWith(path.sep) ? dir : dir + path.sep;
  return listLoopDevices()
    .filter((d) => d.backFile.startsWith(prefix))
    .map((d) => d.name);
}

/** Safety net: detach every loop device whose backing file is under `dir`. Returns what it detached. */
export async function detachLoopDevicesUnder(dir: string): Promise<string[]> {
  const leaked = loopDevicesUnder(dir);
  for (const device of leaked) {
    await execa('losetup', ['--detach', device], { timeout: 10_000, reject: false });
  }
  return leaked;
}

/** Whether `/dev/berth/<id>` is there as a link at all: a link left dangling at a detached loop device is a leak too. */
export function berthLinkExists(volumeId: string): boolean {
  try {
    lstatSync(`/dev/berth/${volumeId}`);
    return true;
  } catch {
    return false;
  }
}

/** Safety net: remove the `/dev/berth/<id>` links of these volumes (UUIDs: only this test made them). */
export async function removeBerthLinks(volumeIds: Iterable<string>): Promise<void> {
  for (const id of volumeIds) {
    const link = `/dev/berth/${id}`;
    const stat = await lstat(link).catch(() => undefined);
    if (stat?.isSymbolicLink() === true) await rm(link, { force: true });
  }
}

/** A process that holds `device` open (`sleep 600 < device`) until it is killed (`stopChild`). */
export function holdOpen(device: string): ChildProcess {
  const fd = openSync(device, 'r');
  try {
    return spawn('sleep', ['600'], { stdio: [fd, 'ignore', 'ignore'] });
  } finally {
    closeSync(fd);
  }
}

/** Kill a child the test started (SIGKILL) and wait until it is gone. */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await exited;
}
