import { createDeadline } from '../deadline.js';
import { BerthError, parseWith, toBerthError } from '../errors.js';
import { zSizeBytes, type Volume, type VolumeStatus } from '../model.js';
import { backendVolume } from '../pipeline/context.js';
import { zCreateVolumeRequest } from '../requests.js';
import type { CreatedVolumeResult, CreateVolumeRequest, ProjectScope, Ref } from '../service.js';
import type { ServiceParts } from './parts.js';
import { projectOf, resolveVolume } from './resolve.js';

/** Create a volume on its backend; a failed create leaves neither a row nor storage behind. */
export async function createVolume(parts: ServiceParts, request: CreateVolumeRequest): Promise<CreatedVolumeResult> {
  const { config, store, catalog } = parts;
  const req = parseWith(zCreateVolumeRequest, request, 'volume');
  const backendName = req.backend ?? config.defaultBackend;
  const backend = catalog.backend(backendName);
  const volume = await store.volumes.create({
    name: req.name,
    projectId: projectOf(config, req),
    sizeBytes: req.sizeBytes,
    backend: backendName,
    multiattach: req.multiattach ?? false,
    status: 'creating',
  });
  const deadline = createDeadline(config.operationTimeoutMs);
  try {
    const created = await backend.create(backendVolume(volume), deadline.signal);
    const available = await store.volumes.transition(volume.id, ['creating'], 'available', {
      providerLocation: created.providerLocation,
    });
    return created.warnings && created.warnings.length > 0 ? { ...available, warnings: created.warnings } : available;
  } catch (error) {
    // Nothing was made that a user can use: remove the row (and whatever the backend made) so
    // the name is free for a retry, instead of leaving a volume in `error` to clean up by hand.
    await backend.delete(backendVolume(volume), AbortSignal.timeout(config.undoTimeoutMs)).catch(() => undefined);
    await store.volumes.delete(volume.id, ['creating']).catch(() => undefined);
    throw toBerthError(error, 'BACKEND_ERROR');
  } finally {
    deadline.dispose();
  }
}

/** The volume's access secrets from its backend (CHAP). */
export async function volumeCredentials(parts: ServiceParts, ref: Ref, scope: ProjectScope): Promise<Record<string, string>> {
  const volume = await resolveVolume(parts.store, ref, projectOf(parts.config, scope));
  const backend = parts.catalog.backend(volume.backend);
  return backend.credentials ? backend.credentials(backendVolume(volume)) : {};
}

/** The project's volumes, optionally of one status. */
export function listVolumes(parts: ServiceParts, filter: ProjectScope & { status?: VolumeStatus }): Promise<Volume[]> {
  return parts.store.volumes.list({ projectId: projectOf(parts.config, filter), ...(filter.status ? { status: filter.status } : {}) });
}

/**
 * Delete a volume with no attachment and no device berth connected, storage first; a backend
 * failure leaves it `error` (a retried delete decides).
 */
export async function deleteVolume(parts: ServiceParts, ref: Ref, scope: ProjectScope): Promise<void> {
  const { config, store, catalog } = parts;
  const volume = await resolveVolume(store, ref, projectOf(config, scope));
  await parts.volumeLocks.withLock(volume.id, async () => {
    const attachments = await store.attachments.list({ volumeId: volume.id });
    if (attachments.length > 0) {
      throw new BerthError('CONFLICT', `volume ${volume.name} has ${attachments.length} attachment(s)`, {
        hint: `detach it first: berth detach ${volume.name}${attachments.some((a) => a.status.startsWith('error')) ? ' --force' : ''}`,
        details: { volumeId: volume.id, actual: volume.status },
      });
    }
    const devices = await store.devices.list({ volumeId: volume.id });
    if (devices.length > 0) {
      // berth connected it somewhere and never recorded letting go: deleting the storage under a
      // device would hand its bytes to whatever reuses them.
      throw new BerthError('CONFLICT', `volume ${volume.name} still has a device berth connected (${devices.map((d) => d.device.path).join(', ')})`, {
        hint: 'run `berth reconcile` on that host to disconnect it, then delete the volume',
        details: { volumeId: volume.id, devices: devices.map((d) => ({ hostId: d.hostId, device: d.device.path })) },
      });
    }
    await store.volumes.transition(volume.id, ['available', 'error'], 'deleting');
    try {
      await catalog.backend(volume.backend).delete(backendVolume(volume), AbortSignal.timeout(config.operationTimeoutMs));
    } catch (error) {
      await store.volumes.transition(volume.id, ['deleting'], 'error').catch(() => undefined);
      throw toBerthError(error, 'BACKEND_ERROR');
    }
    await store.volumes.delete(volume.id, ['deleting']);
  });
}

/** Grow an available volume on its backend; a backend failure leaves it available at its old size. */
export async function extendVolume(parts: ServiceParts, ref: Ref, newSizeBytes: number, scope: ProjectScope): Promise<Volume> {
  const { config, store, catalog } = parts;
  const size = parseWith(zSizeBytes, newSizeBytes, 'size');
  const volume = await resolveVolume(store, ref, projectOf(config, scope));
  return parts.volumeLocks.withLock(volume.id, async () => {
    const current = await store.volumes.require(volume.id);
    if (size <= current.sizeBytes) {
      throw new BerthError('VALIDATION', `volume ${current.name} is already ${current.sizeBytes} bytes; a new size must be larger`, {
        details: { sizeBytes: current.sizeBytes, requested: size },
      });
    }
    const backend = catalog.backend(current.backend);
    if (!backend.extend) {
      throw new BerthError('UNPROCESSABLE', `backend ${current.backend} cannot extend volumes`);
    }
    if (current.status !== 'available') {
      throw new BerthError('CONFLICT', `volume ${current.name} is ${current.status}; only an available volume can be extended`, {
        hint: `detach it first: berth detach ${current.name}`,
        details: { volumeId: current.id, actual: current.status, expected: 'available' },
      });
    }
    await store.volumes.transition(current.id, ['available'], 'extending');
    try {
      await backend.extend(backendVolume(current), size, AbortSignal.timeout(config.operationTimeoutMs));
    } catch (error) {
      await store.volumes.transition(current.id, ['extending'], 'available');
      throw toBerthError(error, 'BACKEND_ERROR');
    }
    return store.volumes.transition(current.id, ['extending'], 'available', { sizeBytes: size });
  });
}
