import { redactConnectionInfo, withAccessMode, zConnector, type Connector } from '../connection.js';
import { BerthError, parseWith, toBerthError } from '../errors.js';
import type { Attachment, Volume } from '../model.js';
import { reserveAttachmentRecord } from '../pipeline/attach.js';
import { backendVolume, deleteAttachmentRecord, transitionAttachment } from '../pipeline/context.js';
import { terminateUnshared, withExportLease } from '../pipeline/device-sharing.js';
import { zReserveAttachmentRequest } from '../requests.js';
import type { AttachmentConnection, ProjectScope, Ref, ReserveAttachmentRequest } from '../service.js';
import type { ServiceParts } from './parts.js';
import { preflightAttach } from './preflight.js';
import { projectOf, resolveAttachment, resolveServer, resolveVolume } from './resolve.js';

// The three-phase attachments API (Cinder's), for outside orchestrators that connect on the host
// themselves, and the attachment queries.

/** Reserve an attachment; with a connector, initialize it too (undone together on failure). */
export async function reserveAttachment(parts: ServiceParts, request: ReserveAttachmentRequest): Promise<AttachmentConnection> {
  const { store } = parts;
  const req = parseWith(zReserveAttachmentRequest, request, 'attachment');
  const project = projectOf(parts.config, req);
  const volume = await resolveVolume(store, req.volume, project);
  const server = await resolveServer(store, req.server, project);
  await preflightAttach(store, volume, server);
  return parts.volumeLocks.withLock(volume.id, async () => {
    const attachment = await parts.serverLocks.withLock(server.id, () => reserveAttachmentRecord(store, volume.id, server, req.mode ?? 'rw'));
    if (!req.connector) return { attachment, connectionInfo: undefined };
    try {
      return await initializeLocked(parts, attachment, req.connector);
    } catch (error) {
      await deleteAttachmentRecord(store, attachment.id, volume.id);
      throw error;
    }
  });
}

/** Export the volume to `connector`; the attachment becomes `attaching`. */
export async function initializeAttachment(parts: ServiceParts, id: string, connector: Connector, scope: ProjectScope): Promise<AttachmentConnection> {
  const parsed = parseWith(zConnector, connector, 'connector');
  const attachment = await resolveAttachment(parts.store, id, projectOf(parts.config, scope));
  return parts.volumeLocks.withLock(attachment.volumeId, async () => initializeLocked(parts, await parts.store.attachments.require(id), parsed));
}

/** Mark an `attaching` attachment `attached` (a compare-and-swap). */
export async function completeAttachment(parts: ServiceParts, id: string, scope: ProjectScope): Promise<Attachment> {
  const attachment = await resolveAttachment(parts.store, id, projectOf(parts.config, scope));
  return parts.volumeLocks.withLock(attachment.volumeId, async () => (await transitionAttachment(parts.store, id, ['attaching'], 'attached', { error: null })).attachment);
}

/** Remove the export (unless shared) and the attachment; refused for one berth itself connected. */
export async function deleteAttachment(parts: ServiceParts, id: string, scope: ProjectScope): Promise<Volume> {
  const { store, catalog, config } = parts;
  const attachment = await resolveAttachment(store, id, projectOf(config, scope));
  return parts.volumeLocks.withLock(attachment.volumeId, async () => {
    let current = await store.attachments.require(id);
    const volume = await store.volumes.require(current.volumeId);
    if (current.transport !== null || current.device !== null) {
      // berth connected this one on its host (an attach, not an outside orchestrator): dropping
      // the record would leave the device and its link behind with nothing that names them.
      const server = await store.servers.get(current.serverId);
      const force = current.status.startsWith('error') ? ' --force' : '';
      throw new BerthError('CONFLICT', `attachment ${id} was connected by berth on its host (status ${current.status}); deleting the record would leave its device behind`, {
        hint: `detach it instead: berth detach ${volume.name}${server ? ` --server ${server.name}` : ''}${force}`,
        details: { attachmentId: id, actual: current.status, reason: 'connected-by-berth' },
      });
    }
    if (current.status === 'attached' || current.status === 'error_detaching') {
      // Through `detaching`, as a detach goes: the volume never jumps from in-use to available.
      current = (await transitionAttachment(store, id, [current.status], 'detaching')).attachment;
    }
    if (current.connector && current.connectionInfo) {
      const connector = current.connector;
      const signal = AbortSignal.timeout(config.operationTimeoutMs);
      try {
        await terminateUnshared(parts.deps, volume, connector, id, signal, () => catalog.backend(volume.backend).terminateConnection(backendVolume(volume), connector, signal));
      } catch (error) {
        const failed = toBerthError(error, 'BACKEND_ERROR');
        if (current.status === 'detaching') {
          await transitionAttachment(store, id, ['detaching'], 'error_detaching', { error: failed.message });
        }
        throw failed;
      }
    }
    // One transaction: the record goes and the volume's status follows, or neither.
    return deleteAttachmentRecord(store, id, volume.id);
  });
}

/** The project's attachments, optionally of one volume and/or one server. */
export async function listAttachments(parts: ServiceParts, filter: ProjectScope & { volume?: Ref; server?: Ref }): Promise<Attachment[]> {
  const { store } = parts;
  const project = projectOf(parts.config, filter);
  const volumeId = filter.volume === undefined ? undefined : (await resolveVolume(store, filter.volume, project)).id;
  const serverId = filter.server === undefined ? undefined : (await resolveServer(store, filter.server, project)).id;
  return store.attachments.list({
    projectId: project,
    ...(volumeId ? { volumeId } : {}),
    ...(serverId ? { serverId } : {}),
  });
}

async function initializeLocked(parts: ServiceParts, attachment: Attachment, connector: Connector): Promise<AttachmentConnection> {
  const { store } = parts;
  if (attachment.status !== 'reserved' && attachment.status !== 'attaching') {
    throw new BerthError('CONFLICT', `attachment ${attachment.id} is ${attachment.status}; only a reserved or attaching one can be initialized`, {
      details: { attachmentId: attachment.id, actual: attachment.status },
    });
  }
  // Another initiator (or host) than the one it was exported to: a second export beside the first,
  // which nothing would remove — deleting the attachment terminates only the recorded connector's,
  // and the first initiator could still log in to a volume berth calls free (a fault explorer).
  if (attachment.connector && exportIdentity(attachment.connector) !== exportIdentity(connector)) {
    throw new BerthError('CONFLICT', `attachment ${attachment.id} was initialized for ${describeConnector(attachment.connector)}; it cannot be initialized again for ${describeConnector(connector)}`, {
      hint: `delete it (its export goes with it) and create a new attachment for the new host or initiator; initializing again with the same connector is fine`,
      details: { attachmentId: attachment.id, reason: 'connector-changed' },
    });
  }
  const volume = await store.volumes.require(attachment.volumeId);
  const signal = AbortSignal.timeout(parts.config.operationTimeoutMs);
  // The export and its record under the export's lease, as the attach's `initialize` does.
  return withExportLease(parts.deps, volume, signal, async (lease) => {
    const connectionInfo = await parts.catalog.backend(volume.backend).initializeConnection(backendVolume(volume), connector, signal);
    const info = withAccessMode(connectionInfo, attachment.mode);
    const patch = { connector, connectionInfo: redactConnectionInfo(info) };
    const updated = await store.transaction(async (tx) => {
      const written =
        attachment.status === 'reserved'
          ? (await transitionAttachment(tx, attachment.id, ['reserved'], 'attaching', patch)).attachment
          : await tx.attachments.update(attachment.id, patch);
      await lease.confirm(tx);
      return written;
    });
    return { attachment: updated, connectionInfo: info };
  });
}

/** What a backend exports to: the connector's host and the initiator identities it may name. */
function exportIdentity(connector: Connector): string {
  const record = connector as Record<string, unknown>;
  return JSON.stringify([connector.host, connector.initiator ?? null, record['nqn'] ?? null, record['wwpns'] ?? null, record['wwnns'] ?? null]);
}

function describeConnector(connector: Connector): string {
  return `host ${connector.host}${connector.initiator ? ` (initiator ${connector.initiator})` : ''}`;
}
