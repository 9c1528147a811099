import { mkdir, open, stat } from 'node:fs/promises';
import path from 'node:path';
import type { DeviceWaiter } from '@berth/host';
import { isQmpFailure, type QmpCallOptions, type QmpClient } from './qmp-client.js';
import { zBlockExportList, zEmptyReturn, zNamedBlockNodeList, type BlockExportInfo, type NamedBlockNode } from './qmp-schemas.js';

/** A block node exported as a regular file through FUSE (`block-export-add` type `fuse`). */
export interface FuseExportSpec {
  /** The export's id (see `zQmpName`). */
  id: string;
  nodeName: string;
  /** The file QEMU mounts the export on; created here (empty, 0600) when missing. */
  mountpoint: string;
  writable: boolean;
}

/**
 * Export `spec.nodeName` as the file `spec.mountpoint`. Only the mounting user (root) may open it
 * (`allow-other: off`): the loop device on it is all that needs to.
 */
export async function addFuseExport(qmp: QmpClient, spec: FuseExportSpec, options: QmpCallOptions = {}): Promise<void> {
  await mkdir(path.dirname(spec.mountpoint), { recursive: true, mode: 0o700 });
  // QEMU mounts over an existing regular file; an existing one (an earlier try) is reused.
  await (await open(spec.mountpoint, 'a', 0o600)).close();
  await qmp.request(
    'block-export-add',
    { type: 'fuse', id: spec.id, 'node-name': spec.nodeName, mountpoint: spec.mountpoint, writable: spec.writable, 'allow-other': 'off' },
    zEmptyReturn,
    options,
  );
}

/**
 * Delete an export and resolve once QEMU reports it gone (`BLOCK_EXPORT_DELETED`: the FUSE file
 * is unmounted by then). An export that does not exist is success. Whatever holds the file (a
 * loop device) must have let go first: QEMU unmounts lazily, and I/O through a holder then fails.
 */
export async function removeFuseExport(qmp: QmpClient, id: string, options: QmpCallOptions = {}): Promise<void> {
  // Subscribed before the command: QEMU may send the event before the reply.
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const deleted = qmp.waitForEvent('BLOCK_EXPORT_DELETED', (event) => event.data?.id === id, { ...options, signal }).then(
    () => undefined,
    (error: unknown) => error,
  );
  try {
    await qmp.request('block-export-del', { id }, zEmptyReturn, options);
  } catch (error) {
    stop.abort();
    await deleted;
    if (isQmpFailure(error, /is not found/)) return;
    throw error;
  }
  const failure = await deleted;
  if (failure !== undefined) throw failure;
}

/** Every export of the daemon (`query-block-exports`). */
export function listExports(qmp: QmpClient, options: QmpCallOptions = {}): Promise<BlockExportInfo[]> {
  return qmp.request('query-block-exports', undefined, zBlockExportList, options);
}

/** Every named block node of the daemon, flat (`query-named-block-nodes`). */
export function listBlockNodes(qmp: QmpClient, options: QmpCallOptions = {}): Promise<NamedBlockNode[]> {
  return qmp.request('query-named-block-nodes', { flat: true }, zNamedBlockNodeList, options);
}

/**
 * Wait until the FUSE file shows `sizeBytes`. The kernel caches a FUSE file's attributes for as
 * long as QEMU grants (1 s), so a node resized over QMP (`block_resize`) shows its new size late,
 * and a loop device asked to follow it (`setLoopCapacity`) would read the old one.
 */
export async function waitForFuseSize(waiter: DeviceWaiter, mountpoint: string, sizeBytes: number, options: { timeoutMs: number; signal?: AbortSignal }): Promise<void> {
  await waiter.waitUntil(path.dirname(mountpoint), async () => ((await stat(mountpoint)).size === sizeBytes ? true : undefined), {
    timeoutMs: options.timeoutMs,
    what: `${mountpoint} to show the new size ${sizeBytes}`,
    ...(options.signal ? { signal: options.signal } : {}),
  });
}
