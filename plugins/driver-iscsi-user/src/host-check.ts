import { readFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { hostFacts, type HostServices } from '@berth/host';
import { readInitiatorName } from '@berth/iscsi';
import { QSD_INSTALL_HINT } from '@berth/qemu';
import type { CheckResult } from '@berth/core';
import type { UserPaths } from './export-records.js';
import { writeSecretFile } from '@berth/qemu';

/** Where the kernel's iSCSI initiator registers its tcp transport (absent: it cannot log in). */
export const KERNEL_TRANSPORT = '/sys/class/iscsi_transport/tcp';

type Checks = NonNullable<CheckResult['checks']>;

/**
 * What this transport needs here: qemu-storage-daemon with its iSCSI driver (qemu-block-extra),
 * /dev/fuse, losetup, root and /dev/loop-control. `essential` is false when any is missing.
 */
export async function checkUserHost(host: HostServices, binary: string, timeoutMs: number): Promise<{ checks: Checks; fixes: string[]; essential: boolean }> {
  const run = (command: string, args: string[]) => host.runner.run(command, args, { timeoutMs, reject: false }).catch(() => undefined);
  // The looks are independent: run together, an attach's transport choice waits for the slowest
  // one instead of their sum (three process starts). The driver probe is a login to a port nothing
  // listens on: with the iscsi driver it fails as a login ("iSCSI: Failed to connect"), without it
  // the driver name is refused. Nothing leaves 127.0.0.1. Read only when the binary is present.
  const [version, probe, fuse, losetup, control] = await Promise.all([
    run(binary, ['--version']),
    run(binary, ['--blockdev', 'driver=iscsi,node-name=probe,transport=tcp,portal=127.0.0.1:1,target=iqn.2026-11.io.berth:probe,lun=0']),
    host.fs.exists('/dev/fuse'),
    run('losetup', ['--version']),
    host.fs.exists('/dev/loop-control'),
  ]);
  const checks: Checks = [];
  const fixes: string[] = [];
  const present = version !== undefined && version.exitCode === 0;
  checks.push({ name: 'qemu-storage-daemon present', ok: present, detail: present ? (version.stdout.split('\n')[0] ?? '').trim() : `${binary} not found` });
  if (present) {
    const stderr = probe?.stderr ?? '';
    const driver = /iSCSI:/.test(stderr);
    checks.push({ name: 'iSCSI block driver (qemu-block-extra)', ok: driver, ...(driver ? {} : { detail: stderr.trim().split('\n')[0] || 'missing' }) });
    if (!driver) fixes.push(QSD_INSTALL_HINT);
  } else {
    fixes.push(QSD_INSTALL_HINT);
  }
  checks.push({ name: '/dev/fuse present', ok: fuse });
  if (!fuse) fixes.push('load the fuse module (modprobe fuse) or give the container /dev/fuse');
  checks.push({ name: 'losetup present', ok: losetup?.exitCode === 0 });
  if (losetup?.exitCode !== 0) fixes.push('apt-get install -y util-linux');
  checks.push({ name: '/dev/loop-control present', ok: control });
  if (!control) fixes.push('load the loop module (modprobe loop) or give the container /dev/loop-control');
  const root = hostFacts().isRoot;
  checks.push({ name: 'running as root', ok: root, ...(root ? {} : { detail: 'FUSE exports and loop devices need root' }) });
  if (!root) fixes.push('run berth as root');
  return { checks, fixes, essential: checks.every((c) => c.ok) };
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
  await writeSecretFile(paths.initiatorName, `${name}\n`);
  return name;
}
