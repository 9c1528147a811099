import { readdir, readFile, readlink, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { detachLoopDevicesUnder, listLoopDevices } from './loop-devices.js';

/** Prefix of every sandbox directory these suites create under the temp dir. */
export const SANDBOX_PREFIX = 'berth-cli-e2e-';
/** File in a sandbox naming the process that owns it. */
export const OWNER_FILE = 'owner.pid';

// A sandbox without an owner file is only young while mkdtemp and the owner write race.
const UNOWNED_GRACE_MS = 10 * 60_000;

/** Whether process `pid` exists (owned by anyone). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function orphaned(dir: string): Promise<boolean> {
  const owner = await readFile(join(dir, OWNER_FILE), 'utf8').catch(() => undefined);
  if (owner === undefined) {
    const info = await stat(dir).catch(() => undefined);
    return info !== undefined && Date.now() - info.mtimeMs > UNOWNED_GRACE_MS;
  }
  const pid = Number.parseInt(owner, 10);
  return !Number.isInteger(pid) || !alive(pid);
}

/**
 * Clean up after runs that were killed before their afterEach ran (a CI timeout, Ctrl-C): for every
 * sandbox whose owner process is gone, remove its /dev/berth links, detach its loop devices and
 * delete it. Sandboxes of live runs are left alone.
 */
export async function sweepOrphanedSandboxes(): Promise<string[]> {
  const base = tmpdir();
  const names = (await readdir(base)).filter((name) => name.startsWith(SANDBOX_PREFIX));
  const swept: string[] = [];
  for (const name of names) {
    const dir = join(base, name);
    if (!(await orphaned(dir))) continue;
    await cleanUpSandboxDir(dir);
    swept.push(dir);
  }
  return swept;
}

/** Remove what a sandbox may have left on the machine, then the sandbox itself. */
export async function cleanUpSandboxDir(dir: string): Promise<void> {
  // Links first: telling ours apart needs the loop devices they point at still attached.
  await removeLinksInto(dir);
  await detachLoopDevicesUnder(dir);
  await rm(dir, { recursive: true, force: true });
}

// /dev/berth/<id> points at a loop device over a file in the sandbox, or at the file itself.
async function removeLinksInto(dir: string): Promise<void> {
  const links = await readdir('/dev/berth').catch(() => [] as string[]);
  if (links.length === 0) return;
  const loops = new Map(listLoopDevices().map((d) => [d.name, d.backFile]));
  for (const name of links) {
    const link = join('/dev/berth', name);
    const target = await readlink(link).catch(() => undefined);
    if (target === undefined) continue;
    const backing = loops.get(target) ?? target;
    if (backing.startsWith(`${dir}/`)) await rm(link, { force: true });
  }
}
