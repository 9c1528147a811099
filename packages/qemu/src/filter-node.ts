import { isQmpFailure, type QmpCallOptions, type QmpClient } from './qmp-client.js';
import { zEmptyReturn } from './qmp-schemas.js';

/**
 * Add a `raw` node over `file`: an export names this filter, not the protocol node, so that the
 * protocol node under it can be swapped (`repointFilter`) while the export and its FUSE file stay.
 */
export async function addRawFilter(qmp: QmpClient, spec: { nodeName: string; file: string; readOnly: boolean }, options: QmpCallOptions = {}): Promise<void> {
  await qmp.request('blockdev-add', { driver: 'raw', 'node-name': spec.nodeName, file: spec.file, 'read-only': spec.readOnly }, zEmptyReturn, options);
}

/**
 * Re-point a `raw` filter at another protocol node (`blockdev-reopen` with a new `file`). QEMU
 * drains the filter first: it answers once every request in flight on the old child has finished.
 * On qemu 7.2 a request parked on a dead iSCSI path finishes only when that path comes back
 * (libiscsi times it out once, then retries it behind a reconnect to the same portal), so the
 * caller's deadline bounds the wait here, not QEMU; the reopen goes on inside QEMU after it.
 */
export async function repointFilter(qmp: QmpClient, spec: { nodeName: string; file: string; readOnly: boolean }, options: QmpCallOptions = {}): Promise<void> {
  await qmp.request('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': spec.nodeName, file: spec.file, 'read-only': spec.readOnly }] }, zEmptyReturn, options);
}

/** Delete a block node that is not in use; one that does not exist is success. Resolves whether it was in use (and so kept). */
export async function removeUnusedNode(qmp: QmpClient, nodeName: string, options: QmpCallOptions = {}): Promise<'removed' | 'in-use'> {
  try {
    await qmp.request('blockdev-del', { 'node-name': nodeName }, zEmptyReturn, options);
    return 'removed';
  } catch (error) {
    if (isQmpFailure(error, /Failed to find node/)) return 'removed';
    if (isQmpFailure(error, /is in use/)) return 'in-use';
    throw error;
  }
}
