import type { ConnectionInfo, Connector, Device } from '../connection.js';
import type { VolumeBackend, BackendVolume } from '../contracts/volume-backend.js';
import type { Consumer } from '../contracts/consumer.js';
import type { Attachment, AttachmentStatus, Host, Server, Volume } from '../model.js';
import type { AttachmentPatch, Store } from '../store.js';
import { BerthError } from '../errors.js';
import { recomputeVolumeStatus } from '../transitions.js';
import type { DriverCatalog } from '../catalog.js';
import type { BerthConfig } from '../config.js';
import type { Logger } from '../logger.js';
import type { HostSteps } from '../host-steps/host-steps.js';
import type { HeldLease } from '../lease.js';

/** What the pipelines need from the rest of berth. */
export interface PipelineDeps {
  store: Store;
  catalog: DriverCatalog;
  config: BerthConfig;
  logger: Logger;
  /** The host this process is the agent of. */
  localHost(): Promise<Host>;
  /** Base connector properties of this host (host name, ip, platform). */
  baseConnector(): Connector;
  /** This process (`pid@host`): the owner of its operations and leases. */
  owner: string;
  /** This machine's host name (whose processes' liveness this process can check). */
  hostname: string;
  /** Who runs the host steps of `hostId` (this process, or that host's agent); UNPROCESSABLE when nobody can. */
  hostSteps(hostId: string): Promise<HostSteps>;
  /**
   * As one of several replicas: device leases last `ttlMs` and are renewed every `renewEveryMs`
   * (so a replica on another machine taking over waits seconds, not the operation's deadline).
   */
  replicaLeases?: { ttlMs: number; renewEveryMs: number };
}

/** State shared by the steps of one attach or detach (in memory; the journal holds the safe part). */
export interface PipelineContext {
  operationId: string;
  volume: Volume;
  server: Server;
  consumer: Consumer;
  backend: VolumeBackend;
  host?: Host;
  /**
   * This process, when another replica may take the operation over (replica leases): `dispatch`
   * (or recovery) gives every host step it (`HostStepCall.owner`). Absent in embedded mode.
   */
  owner?: string;
  /** Who runs the host steps of the server's host (set by `dispatch`, or by recovery). */
  steps?: HostSteps;
  attachment?: Attachment;
  connector?: Connector;
  /** The full connection_info, secrets included: never persisted or logged. */
  connection?: ConnectionInfo;
  /** The transport that connects the volume on the host (its name; the host's executor runs it). */
  transport?: string;
  device?: Device;
  publishedPath?: string;
  /** The export lease `initialize` holds through its commit (`Step.hold`), which confirms it. */
  exportLease?: HeldLease;
  /** Go on through errors (detach --force). */
  force?: boolean;
  /** Errors a forced detach went through. */
  forcedErrors: string[];
  /**
   * Set by an attach's `publish` undo that failed on a guest server: the guest may still have the
   * disk, so the `connect` undo must not disconnect the host side under it.
   */
  guestMayHoldDevice?: boolean;
  /**
   * This attachment's unpublish kept the volume's own name for another attachment using the device
   * then (`stillShared`): its release removes the name if it turns out the device's last user
   * (`ReleaseRequest.volumeNameKept`).
   */
  volumeNameKept?: boolean;
  /**
   * The attach's `publish` failed having touched nothing (`details.untouched`: its consumer could
   * not reach the guest and made nothing on the host): its undo has nothing to take down, and
   * must not ask the unreachable guest again (which would fail the rollback for nothing).
   */
  publishUntouched?: boolean;
  /**
   * The detach's `unpublish` failed having touched nothing (`details.untouched`: no session with
   * the guest's QEMU could be had — paused, its monitor held — and the host link not yet removed):
   * its undo has nothing to put back, and asking the unreachable guest again only failed the
   * rollback ("the rollback failed" for a detach that changed nothing: an explorer).
   */
  unpublishUntouched?: boolean;
  /**
   * The detach's `unpublish` asked the guest to let go of the disk and the guest did not within
   * the consumer's limit (TIMEOUT with `guestHoldsDevice`, or `unplugRequested`): the request stays
   * pending in the hypervisor, and the guest may drop the disk whenever it acts on it (a paused
   * guest at its resume). The undo cannot take that back, so the detach ends `error_detaching` —
   * not `attached` over a disk the guest may lose at any moment.
   */
  unplugMayBePending?: boolean;
  /**
   * Set by recovery: the detach's `unpublish` on a guest server started and its journal row was
   * never closed `done` (its process stopped in it, or between its failure and the undo), so
   * whether the guest was asked to let go is not known. Its undo looks: a guest that still has the
   * volume's disk may have a request pending (`unplugMayBePending`); one that has none is plugged
   * again, as any undo.
   */
  unpublishOutcomeUnknown?: boolean;
}

/** Whether the server is a VM whose consumer hot-plugs into it (not the host itself). */
export function isGuestServer(ctx: Pick<PipelineContext, 'server'>): boolean {
  return ctx.server.hypervisor !== undefined && ctx.server.hypervisor.type !== 'host';
}

/** What a backend sees of a volume. */
export function backendVolume(volume: Volume): BackendVolume {
  return { id: volume.id, name: volume.name, sizeBytes: volume.sizeBytes, providerLocation: volume.providerLocation };
}

/**
 * Set a volume's status from its attachments (one pure function decides), as a compare-and-swap
 * from the status read in the same transaction. Returns the volume as stored.
 */
export async function recomputeVolume(store: Store, volumeId: string): Promise<Volume> {
  return store.transaction(async (tx) => {
    const volume = await tx.volumes.require(volumeId);
    // A create, extend or delete holds the volume (and its lease): its status is theirs to end.
    if (volume.status === 'creating' || volume.status === 'extending' || volume.status === 'deleting') return volume;
    const attachments = await tx.attachments.list({ volumeId });
    const status = recomputeVolumeStatus(attachments);
    if (status === volume.status) return volume;
    return tx.volumes.transition(volumeId, [volume.status], status);
  });
}

/**
 * Change an attachment's status and recompute its volume's in one transaction: a crash can never
 * leave the volume saying something its attachments do not.
 */
export async function transitionAttachment(
  store: Store,
  attachmentId: string,
  from: readonly AttachmentStatus[],
  to: AttachmentStatus,
  patch?: AttachmentPatch,
): Promise<{ attachment: Attachment; volume: Volume }> {
  return store.transaction(async (tx) => {
    const attachment = await tx.attachments.transition(attachmentId, from, to, patch);
    return { attachment, volume: await recomputeVolume(tx, attachment.volumeId) };
  });
}

/**
 * Delete an attachment (through `detached` when it is `detaching`, as the table says) and
 * recompute its volume's status, in one transaction. Succeeds when the attachment is already gone.
 */
export async function deleteAttachmentRecord(store: Store, attachmentId: string, volumeId: string): Promise<Volume> {
  return store.transaction(async (tx) => {
    const attachment = await tx.attachments.get(attachmentId);
    if (attachment?.status === 'detaching') await tx.attachments.transition(attachmentId, ['detaching'], 'detached');
    if (attachment) await tx.attachments.delete(attachmentId);
    return recomputeVolume(tx, volumeId);
  });
}

/**
 * `deleteAttachmentRecord` for an attachment the caller last saw `detaching`: the CAS to
 * `detached` instead of a read before it. One that is no longer `detaching` (the CAS refused) or
 * is gone goes the general way, in the same transaction.
 */
export async function deleteDetachingAttachment(store: Store, attachmentId: string, volumeId: string): Promise<Volume> {
  return store.transaction(async (tx) => {
    try {
      await tx.attachments.transition(attachmentId, ['detaching'], 'detached');
    } catch (error) {
      if (!BerthError.is(error) || (error.code !== 'CONFLICT' && error.code !== 'NOT_FOUND')) throw error;
      return deleteAttachmentRecord(tx, attachmentId, volumeId);
    }
    await tx.attachments.delete(attachmentId);
    return recomputeVolume(tx, volumeId);
  });
}
