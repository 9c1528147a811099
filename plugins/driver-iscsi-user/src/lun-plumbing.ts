import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BerthError, type FaultPoints, type Logger } from '@berth/core';
import type { HostServices } from '@berth/host';
import {
  addFuseExport,
  addRawFilter,
  addIscsiNode,
  attachFuseLoop,
  detachFuseLoop,
  flushLoop,
  isQmpFailure,
  loopInfo,
  loopsBacking as loopsWithBacking,
  qmpFailureOf,
  removeFuseExport,
  removeIscsiNode,
  wireLun,
  unmountFuseUnder,
  type QmpClient,
} from '@berth/qemu';
import type { UserPaths } from './export-records.js';
import type { IscsiUserOptions } from './options.js';
import type { ExportNames } from './user-connection.js';

/** What building and tearing down one LUN's chain needs. */
export interface PlumbingDeps {
  host: HostServices;
  paths: UserPaths;
  options: IscsiUserOptions;
  logger: Logger;
  faults?: FaultPoints;
}

/** One LUN's chain to build: iSCSI node → FUSE export → loop device. */
export interface ChainSpec {
  names: ExportNames;
  portal: string;
  iqn: string;
  lun: number;
  initiator: string;
  /** The CHAP user; the password is in `secretFile(paths, key)` already. */
  username?: string;
  readOnly: boolean;
  /** Attach to this loop device (it must be free), else to the first free one. */
  loopDevice?: string;
  /** The protocol node to log in with (`names.node` unless a failover moved the LUN to `names.nodeB`). */
  node?: string;
}

/** The FUSE mount point of a LUN. */
export function mountpointOf(paths: UserPaths, key: string): string {
  return path.join(paths.mounts, `${key}.fuse`);
}

/** The file holding a LUN's CHAP password (`.in`: the target's, for mutual CHAP). */
export function secretFile(paths: UserPaths, key: string, which: 'out' | 'in' = 'out'): string {
  return path.join(paths.secrets, which === 'in' ? `${key}.in` : key);
}

/**
 * Build the chain: `blockdev-add` (login) and its `raw` filter, `block-export-add` (FUSE, on the
 * filter), `losetup` (no direct I/O). Fault points between the steps. Throws what failed; the
 * caller tears down what was made.
 */
export async function buildChain(deps: PlumbingDeps, qmp: QmpClient, spec: ChainSpec, signal: AbortSignal): Promise<string> {
  const { names } = spec;
  const qmpOptions = { timeoutMs: deps.options.qmpTimeoutMs, signal };
  const node = spec.node ?? names.node;
  await loginNode(deps, qmp, spec, node, signal);
  await addRawFilter(qmp, { nodeName: names.filter, file: node, readOnly: spec.readOnly }, qmpOptions);
  await deps.faults?.hit('iscsi-user.connect.after-login');
  await addFuseExport(qmp, { id: names.exportId, nodeName: names.filter, mountpoint: mountpointOf(deps.paths, names.key), writable: !spec.readOnly }, qmpOptions);
  await deps.faults?.hit('iscsi-user.connect.after-export');
  const device = await attachFuseLoop(deps.host.runner, mountpointOf(deps.paths, names.key), {
    readOnly: spec.readOnly,
    timeoutMs: deps.options.commandTimeoutMs,
    signal,
    ...(spec.loopDevice === undefined ? {} : { device: spec.loopDevice }),
  });
  await deps.faults?.hit('iscsi-user.connect.after-losetup');
  return device;
}

/**
 * Log in to the LUN through `spec.portal` as protocol node `node` (`blockdev-add` driver iscsi,
 * CHAP from the secret file). A failed login leaves nothing and throws what the user should read.
 */
export async function loginNode(
  deps: PlumbingDeps,
  qmp: QmpClient,
  spec: Omit<ChainSpec, 'loopDevice' | 'node'>,
  node: string,
  signal: AbortSignal,
  secret: 'make' | 'shared' = 'make',
): Promise<void> {
  const { names } = spec;
  try {
    await addIscsiNode(
      qmp,
      {
        nodeName: node,
        portal: spec.portal,
        iqn: spec.iqn,
        lun: wireLun(spec.lun),
        initiator: spec.initiator,
        ...(spec.username === undefined ? {} : { chap: { username: spec.username, secretId: names.secretId, secretFile: secretFile(deps.paths, names.key), shared: secret === 'shared' } }),
        readOnly: spec.readOnly,
        timeoutS: deps.options.requestTimeoutS,
      },
      { timeoutMs: deps.options.qmpTimeoutMs, signal },
    );
  } catch (error) {
    throw loginError(error, spec);
  }
}

/**
 * Tear a LUN's chain down, whatever part of it exists: flush and detach the loop device on its
 * FUSE file (found by sysfs when `loopDevice` is not known), delete the export (wait for QEMU to
 * report it gone), delete the node (ends the session) and its secret object, remove the mount
 * point file. Resolves `held-open` — and leaves the export, and the loop device attached as it was
 * — when something still has the loop device open: removing the export under it would fail its I/O.
 * A flush that fails throws before that device is detached (`details.reason: 'flush-failed'`):
 * its write-back data would be lost silently; `force` (a forced detach, or the undo of a chain
 * nobody was handed) only warns and goes on.
 */
export async function teardownChain(
  deps: PlumbingDeps,
  qmp: QmpClient | undefined,
  names: ExportNames,
  loopDevice: string | undefined,
  signal: AbortSignal,
  how: { force?: boolean } = {},
): Promise<'removed' | 'held-open'> {
  const mountpoint = mountpointOf(deps.paths, names.key);
  const step = { timeoutMs: deps.options.commandTimeoutMs, signal };
  const loops = loopDevice !== undefined ? [loopDevice] : await loopsBacking(deps, mountpoint);
  let changed = false;
  for (const device of loops) {
    const info = await loopInfo(deps.host.fs, device);
    if (info?.backingFile !== mountpoint) continue;
    let flushFailed = false;
    if (!info.autoclear) {
      try {
        await flushLoop(deps.host.runner, device, step);
      } catch (error) {
        flushFailed = true;
        // The flush did not finish (timed out on a hung path, or could not run): what the page
        // cache holds for the LUN may not have reached the target. Only a forced detach gives that
        // up. (A write-back error the kernel met earlier is not reported here: BLKFLSBUF answers
        // 0; `@berth/qemu`'s `flushLoop` says why it sends no fsync.)
        if (!how.force) {
          throw new BerthError('DRIVER_ERROR', `flushing ${device} (LUN ${names.key}) failed, so it was not detached: ${messageOf(error)}`, {
            hint: `its unwritten data would be lost; check the target and its path (berth doctor), then detach again — detach --force gives the data up`,
            details: { device, reason: 'flush-failed', ...(changed ? {} : { untouched: true }) },
            cause: error,
          });
        }
        deps.logger.warn({ device, err: messageOf(error) }, 'flush before a forced detach failed; detaching anyway');
      }
    }
    await deps.faults?.hit('iscsi-user.disconnect.after-flush');
    // Forced past a flush that failed: the kernel's detach (no second flush to hang on; a held
    // device goes at its last close). Otherwise a held device stays attached as it was.
    if ((await detachFuseLoop(deps.host, device, mountpoint, { ...step, whenHeld: how.force && flushFailed ? 'defer' : 'keep' })) === 'held-open') return 'held-open';
    changed = true;
  }
  await deps.faults?.hit('iscsi-user.disconnect.after-losetup');
  if (qmp) {
    const qmpOptions = { timeoutMs: deps.options.qmpTimeoutMs, signal };
    await removeFuseExport(qmp, names.exportId, qmpOptions);
    await deps.faults?.hit('iscsi-user.disconnect.after-export');
    // The filter first (it holds the protocol node); both protocol nodes, as a failover cut short may leave two.
    await removeIscsiNode(qmp, names.filter, undefined, qmpOptions);
    await removeIscsiNode(qmp, names.nodeB, undefined, qmpOptions);
    await removeIscsiNode(qmp, names.node, names.secretId, qmpOptions);
  }
  await releasePlaceholder(deps, names.key, step);
  await removeMountpoint(deps, mountpoint);
  return 'removed';
}

/**
 * The zero-length file a LUN's loop number is bound to, read-only, while its chain could not be
 * rebuilt after the device was released (`holdNumber`): the number stays taken while core's links
 * name it, and I/O through it fails (writes EPERM, reads see 0 bytes) instead of reaching another
 * program's file.
 */
export function placeholderOf(paths: UserPaths, key: string): string {
  return path.join(paths.root, 'placeholders', key);
}

/** Whether a loop device backing `backing` is LUN `key`'s own: on its FUSE file, or holding its number on its placeholder. */
export function backsLun(paths: UserPaths, key: string, backing: string | undefined): boolean {
  return backing !== undefined && (backing === mountpointOf(paths, key) || backing === placeholderOf(paths, key));
}

/**
 * Bind `device` (free) read-only to the LUN's placeholder (`placeholderOf`). Resolves whether the
 * device backs it now (another program may have taken the number first: then false).
 */
export async function holdNumber(deps: Pick<PlumbingDeps, 'host' | 'paths' | 'options'>, device: string, key: string, signal: AbortSignal): Promise<boolean> {
  const file = placeholderOf(deps.paths, key);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFile(file, '', { mode: 0o400 });
  await deps.host.runner.run('losetup', ['--read-only', '--direct-io=off', '--', device, file], { timeoutMs: deps.options.commandTimeoutMs, signal, reject: false });
  return (await loopInfo(deps.host.fs, device))?.backingFile === file;
}

/** Detach the loop devices on the LUN's placeholder (`holdNumber`) and remove it. */
export async function releasePlaceholder(deps: Pick<PlumbingDeps, 'host' | 'paths'>, key: string, step: { timeoutMs: number; signal: AbortSignal }): Promise<void> {
  const file = placeholderOf(deps.paths, key);
  for (const device of await loopsBacking(deps, file)) {
    // Nothing berth wrote can be lost on it: it was never writable. A holder defers the detach to its last close.
    await detachFuseLoop(deps.host, device, file, { ...step, whenHeld: 'defer' });
  }
  await rm(file, { force: true });
}

/**
 * Remove a LUN's mount point file. A dead FUSE mount there — its export deleted or its daemon gone
 * while the mount stayed (the watcher deletes an aborted export so; a daemon killed leaves one):
 * `lstat` answers ENOTCONN (ECONNABORTED while the connection is aborted but not yet closed) — is
 * unmounted lazily (`umount -l`: a loop device still on its file keeps it until its last close)
 * and the file removed then. Any other error is thrown as it is.
 */
export async function removeMountpoint(deps: Pick<PlumbingDeps, 'host' | 'options' | 'logger'>, mountpoint: string): Promise<void> {
  try {
    await rm(mountpoint, { force: true });
    return;
  } catch (error) {
    if (!isDeadMountError(error)) throw error;
    const unmounted = await unmountFuseUnder(deps.host, mountpoint, deps.options.commandTimeoutMs);
    deps.logger.info({ mountpoint, unmounted, err: messageOf(error) }, 'a dead FUSE mount was left at the mount point: unmounted it (lazily)');
  }
  await rm(mountpoint, { force: true });
}

/** ENOTCONN / ECONNABORTED: what a path on a FUSE mount whose connection is gone or aborted answers. */
export function isDeadMountError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === 'ENOTCONN' || code === 'ECONNABORTED';
}

/** Loop devices whose backing file is `file` (sysfs), for leftovers whose device was not recorded. */
export async function loopsBacking(deps: Pick<PlumbingDeps, 'host'>, file: string): Promise<string[]> {
  return (await loopsWithBacking(deps.host.fs, (backing) => backing === file)).map((info) => info.device);
}

/** A failed `blockdev-add` as the user should read it: what happened and what to do. */
export function loginError(error: unknown, spec: Pick<ChainSpec, 'portal' | 'iqn' | 'lun'>): BerthError {
  const failure = qmpFailureOf(error);
  if (!failure) return BerthError.is(error) ? error : new BerthError('DRIVER_ERROR', messageOf(error), { cause: error });
  const what = `LUN ${spec.lun} of ${spec.iqn} at ${spec.portal}`;
  const details = { portal: spec.portal, iqn: spec.iqn, lun: spec.lun, qemu: failure.desc.trim() };
  if (/Authentication failure|CHAP/i.test(failure.desc)) {
    return new BerthError('AUTH_FAILED', `the target refused the CHAP login to ${what}`, {
      hint: 'check auth_username/auth_password against the target\'s account (berth volume show --show-secrets), and that the target expects CHAP',
      details,
      cause: error,
    });
  }
  if (/Authorization failure|not allowed|Target not found/i.test(failure.desc)) {
    return new BerthError('NOT_FOUND', `the target ${spec.iqn} does not exist at ${spec.portal}, or does not admit this initiator`, {
      hint: 'check target_iqn, and that the target\'s ACL lists this host\'s initiator name (berth connector)',
      details,
      cause: error,
    });
  }
  if (/LOGICAL_UNIT_NOT_SUPPORTED/.test(failure.desc)) {
    return new BerthError('NOT_FOUND', `the target ${spec.iqn} has no LUN ${spec.lun}`, {
      hint: 'check target_lun: the volume may have been deleted on the backend',
      details,
      cause: error,
    });
  }
  // libiscsi words a refused or unreachable portal as a failed reconnect (fixture qmp-blockdev-add-iscsi-unreachable-portal).
  // TIMEOUT, as the kernel transports answer iscsiadm's exit 8 for a portal that does not answer.
  if (/reconnect|refused|unreachable|timed out|No route/i.test(failure.desc)) {
    return new BerthError('TIMEOUT', `cannot reach the portal ${spec.portal} for ${what}`, {
      hint: 'check that the target listens there and that this host can reach it (firewall, routes)',
      details: { ...details, reason: 'portal-unreachable' },
      cause: error,
    });
  }
  if (isQmpFailure(error, /Duplicate|already in use/)) {
    return new BerthError('CONFLICT', `qemu-storage-daemon already has objects for ${what}`, { hint: 'run the disconnect (berth detach --force) and connect again', details, cause: error });
  }
  return new BerthError('DRIVER_ERROR', `qemu-storage-daemon could not log in to ${what}: ${failure.desc.trim()}`, { details, cause: error });
}

/** The message of anything thrown. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
