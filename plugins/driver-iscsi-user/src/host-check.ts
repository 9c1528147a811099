import { constants } from 'node:fs';
import { access, mkdir, readdir, readFile, realpath, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { lazySchema, type CheckResult } from '@berth/core';
import { createFileWhole, hostFacts, writeFileAtomically, type HostServices } from '@berth/host';
import { readInitiatorName } from '@berth/iscsi';
import { QSD_INSTALL_HINT, writeSecretFile } from '@berth/qemu';
import { z } from '@berth/core/zod';
import type { UserPaths } from './export-records.js';

/** Where the kernel's iSCSI initiator registers its tcp transport (absent: it cannot log in). */
export const KERNEL_TRANSPORT = '/sys/class/iscsi_transport/tcp';

type Checks = NonNullable<CheckResult['checks']>;

/** What the check's commands answered: the costly part (three process starts), which `checkUserHostCached` keeps. */
export interface ToolLooks {
  /** The first line of `qemu-storage-daemon --version`; null when the binary did not run. */
  version: string | null;
  /** Whether the driver probe failed as an iSCSI login (the driver is there), and else its first line of stderr. */
  driver: { ok: boolean; detail: string };
  losetup: boolean;
}

const zToolLooks = lazySchema(() =>
  z.object({
    version: z.string().nullable(),
    driver: z.object({ ok: z.boolean(), detail: z.string() }),
    losetup: z.boolean(),
  }),
);

const zKeptLooks = lazySchema(() => z.object({ key: z.string(), looks: zToolLooks }));

/**
 * Run the check's commands. They are independent: run together, an attach's transport choice waits
 * for the slowest one instead of their sum. The driver probe is a login to a port nothing listens
 * on: with the iscsi driver it fails as a login ("iSCSI: Failed to connect"), without it the driver
 * name is refused. Nothing leaves 127.0.0.1.
 */
async function lookTools(host: HostServices, binary: string, timeoutMs: number): Promise<ToolLooks> {
  const run = (command: string, args: string[]) => host.runner.run(command, args, { timeoutMs, reject: false }).catch(() => undefined);
  const [version, probe, losetup] = await Promise.all([
    run(binary, ['--version']),
    run(binary, ['--blockdev', 'driver=iscsi,node-name=probe,transport=tcp,portal=127.0.0.1:1,target=iqn.2026-11.io.berth:probe,lun=0']),
    run('losetup', ['--version']),
  ]);
  const stderr = probe?.stderr ?? '';
  return {
    version: version?.exitCode === 0 ? (version.stdout.split('\n')[0] ?? '').trim() : null,
    driver: { ok: /iSCSI:/.test(stderr), detail: stderr.trim().split('\n')[0] || 'missing' },
    losetup: losetup?.exitCode === 0,
  };
}

/** The checks and fixes from the commands' answers, the device nodes and whether berth runs as root. */
function hostChecks(looks: ToolLooks, binary: string, fuse: boolean, control: boolean): { checks: Checks; fixes: string[]; essential: boolean } {
  const checks: Checks = [];
  const fixes: string[] = [];
  const present = looks.version !== null;
  checks.push({ name: 'qemu-storage-daemon present', ok: present, detail: looks.version ?? `${binary} not found` });
  if (present) {
    const driver = looks.driver.ok;
    checks.push({ name: 'iSCSI block driver (qemu-block-extra)', ok: driver, ...(driver ? {} : { detail: looks.driver.detail }) });
    if (!driver) fixes.push(QSD_INSTALL_HINT);
  } else {
    fixes.push(QSD_INSTALL_HINT);
  }
  checks.push({ name: '/dev/fuse present', ok: fuse });
  if (!fuse) fixes.push('load the fuse module (modprobe fuse) or give the container /dev/fuse');
  checks.push({ name: 'losetup present', ok: looks.losetup });
  if (!looks.losetup) fixes.push('apt-get install -y util-linux');
  checks.push({ name: '/dev/loop-control present', ok: control });
  if (!control) fixes.push('load the loop module (modprobe loop) or give the container /dev/loop-control');
  const root = hostFacts().isRoot;
  checks.push({ name: 'running as root', ok: root, ...(root ? {} : { detail: 'FUSE exports and loop devices need root' }) });
  if (!root) fixes.push('run berth as root');
  return { checks, fixes, essential: checks.every((c) => c.ok) };
}

/**
 * What this transport needs here: qemu-storage-daemon with its iSCSI driver (qemu-block-extra),
 * /dev/fuse, losetup, root and /dev/loop-control. `essential` is false when any is missing.
 * Looks at everything now (`berth doctor`).
 */
export async function checkUserHost(host: HostServices, binary: string, timeoutMs: number): Promise<{ checks: Checks; fixes: string[]; essential: boolean }> {
  const [looks, fuse, control] = await Promise.all([lookTools(host, binary, timeoutMs), host.fs.exists('/dev/fuse'), host.fs.exists('/dev/loop-control')]);
  return hostChecks(looks, binary, fuse, control);
}

/**
 * `checkUserHost` with its commands' answers kept in `file` (the auto-select decision that every
 * attach on a host without a kernel initiator makes): kept under a key naming the files those
 * answers come from — the binary and losetup as the runner finds them (on the PATH its commands
 * get: the runner's `searchPath()`, else one `printenv PATH` through it, so that its prepended
 * directories count), each with its inode, size and times, and qemu's module directories
 * (qemu-block-extra's `block-iscsi.so` is a module, not part of the binary). A change to any of them runs the
 * commands again; the device nodes and root are looked at each time. Without a PATH (no
 * `searchPath()` and printenv failed) nothing is kept.
 */
export async function checkUserHostCached(host: HostServices, binary: string, timeoutMs: number, file: string): Promise<{ checks: Checks; fixes: string[]; essential: boolean }> {
  const [key, fuse, control] = await Promise.all([toolsKey(host, binary, timeoutMs), host.fs.exists('/dev/fuse'), host.fs.exists('/dev/loop-control')]);
  const kept = key === undefined ? undefined : await readKept(file);
  let looks = kept !== undefined && kept.key === key ? kept.looks : undefined;
  if (looks === undefined) {
    looks = await lookTools(host, binary, timeoutMs);
    if (key !== undefined) await keep(file, { key, looks });
  }
  return hostChecks(looks, binary, fuse, control);
}

async function readKept(file: string): Promise<z.output<typeof zKeptLooks> | undefined> {
  try {
    const parsed = zKeptLooks.safeParse(JSON.parse(await readFile(file, 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

async function keep(file: string, kept: z.output<typeof zKeptLooks>): Promise<void> {
  // Keeping is an optimisation: a data dir that cannot take the file costs the next attach the commands.
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 })
    .then(() => writeFileAtomically(file, `${JSON.stringify(kept)}\n`, 0o600))
    .catch(() => undefined);
}

/** The key of the commands' answers (see `checkUserHostCached`); undefined when the runner's PATH is unknown. */
export async function toolsKey(host: HostServices, binary: string, timeoutMs: number): Promise<string | undefined> {
  const searchPath = await runnerPath(host, timeoutMs);
  if (searchPath === undefined) return undefined;
  const dirs = searchPath.split(path.delimiter);
  const [qsd, losetup] = await Promise.all([findExecutable(binary, dirs), findExecutable('losetup', dirs)]);
  const moduleDirs = qsd === undefined ? [] : await qemuModuleDirs(qsd);
  const stamps = await Promise.all([qsd, losetup, ...moduleDirs].map((p) => (p === undefined ? 'absent' : stamp(p))));
  return JSON.stringify({ path: searchPath, moduleEnv: process.env.QEMU_MODULE_DIR ?? null, stamps });
}

/** The PATH the runner's commands get: the runner's own answer, else one `printenv PATH` through it; undefined when neither tells. */
async function runnerPath(host: HostServices, timeoutMs: number): Promise<string | undefined> {
  const known = host.runner.searchPath?.();
  if (known !== undefined) return known.join(path.delimiter);
  const printed = await host.runner.run('printenv', ['PATH'], { timeoutMs, reject: false }).catch(() => undefined);
  return printed === undefined || printed.exitCode !== 0 ? undefined : printed.stdout.trim();
}

/** Where `execvp` finds `name` on `dirs` (a name with a slash is itself), as its real path; undefined when nowhere. */
async function findExecutable(name: string, dirs: readonly string[]): Promise<string | undefined> {
  const candidates = name.includes('/') ? [name] : dirs.map((dir) => path.resolve(dir === '' ? '.' : dir, name));
  for (const candidate of candidates) {
    const found = await access(candidate, constants.X_OK)
      .then(() => stat(candidate))
      .then((s) => (s.isFile() ? realpath(candidate) : undefined))
      .catch(() => undefined);
    if (found !== undefined) return found;
  }
  return undefined;
}

/** qemu's module directories beside an installed binary (`<prefix>/lib/qemu`, `<prefix>/lib64/qemu`, `<prefix>/lib/<triplet>/qemu`) and QEMU_MODULE_DIR. */
async function qemuModuleDirs(binary: string): Promise<string[]> {
  const prefix = path.dirname(path.dirname(binary));
  const lib = path.join(prefix, 'lib');
  const triplets = (await readdir(lib).catch(() => [] as string[])).filter((name) => name.includes('-linux-'));
  const dirs = [path.join(lib, 'qemu'), path.join(prefix, 'lib64', 'qemu'), ...triplets.map((t) => path.join(lib, t, 'qemu'))];
  if (process.env.QEMU_MODULE_DIR) dirs.push(process.env.QEMU_MODULE_DIR);
  return dirs;
}

/** A file's or directory's identity and times, or `-` when it does not exist. */
async function stamp(file: string): Promise<string> {
  const s = await stat(file).catch(() => undefined);
  return s === undefined ? `${file} -` : `${file} ${s.dev}:${s.ino} ${s.size} ${s.mtimeMs} ${s.ctimeMs}`;
}

/** Whether the kernel initiator can log in here (its tcp transport is registered). */
export function kernelInitiatorUsable(host: HostServices): Promise<boolean> {
  return host.fs.exists(KERNEL_TRANSPORT);
}

/**
 * This host's initiator name: open-iscsi's (`/etc/iscsi/initiatorname.iscsi`) when set, so that
 * both iSCSI transports log in as the same initiator and the targets' ACLs hold for either; else
 * one made once and kept under the data dir.
 */
export async function userInitiatorName(host: HostServices, paths: UserPaths): Promise<string> {
  const system = await readInitiatorName(host.fs);
  if (system !== undefined) return system;
  const kept = (await readFile(paths.initiatorName, 'utf8').catch(() => '')).trim();
  if (kept !== '') return kept;
  const name = `iqn.2026-11.io.berth:user-${randomBytes(6).toString('hex')}`;
  // Made once for the host: two berth processes starting together must not each keep a name of
  // their own (the host would be two initiators, its ACLs split). The loser reads the winner's.
  await mkdir(path.dirname(paths.initiatorName), { recursive: true, mode: 0o700 });
  if (await createFileWhole(paths.initiatorName, `${name}\n`, { mode: 0o600, sync: true })) return name;
  const theirs = (await readFile(paths.initiatorName, 'utf8').catch(() => '')).trim();
  if (theirs !== '') return theirs;
  await writeSecretFile(paths.initiatorName, `${name}\n`);
  return name;
}
