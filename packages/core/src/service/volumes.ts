import { createDeadline } from '../deadline.js';
import { BerthError, parseWith, toBerthError } from '../errors.js';
import { volumeCreateLeaseKey, volumeLeaseKey, withLease } from '../lease.js';
import { zSizeBytes, type Volume, type VolumeStatus } from '../model.js';
import { backendVolume } from '../pipeline/context.js';
import { busyVolumeHint, volumeInUseError } from '../transitions.js';
import { leaseOptions } from '../pipeline/device-sharing.js';
import { zCreateVolumeRequest } from '../requests.js';
import type { CreatedVolumeResult, CreateVolumeRequest, ProjectScope, Ref } from '../service.js';
import type { ServiceParts } from './parts.js';
import { projectOf, resolveVolume } from './resolve.js';

/**
 * Create a volume on its backend; a failed create leaves neither a row nor storage behind. The
 * create holds its lease (`volumeCreateLeaseKey`) from before the row exists until it is
 * `available` or gone, so that a row left `creating` by a killed process is told from one being
 * made, and recovery removes it (`recoverVolumeLifecycles`).
 */
export async function createVolume(parts: ServiceParts, request: CreateVolumeRequest): Promise<CreatedVolumeResult> {
  const { config, store, catalog } = parts;
  const req = parseWith(zCreateVolumeRequest, request, 'volume');
  const backendName = req.backend ?? config.defaultBackend;
  const backend = catalog.backend(backendName);
  const projectId = projectOf(config, req);
  const deadline = createDeadline(config.operationTimeoutMs);
  try {
    return await withLease(store, volumeCreateLeaseKey(projectId, req.name), leaseOptions(parts.deps, deadline.signal, `the creation of volume ${req.name}`), async () => {
      const volume = await store.volumes.create({
        name: req.name,
        projectId,
        sizeBytes: req.sizeBytes,
        backend: backendName,
        multiattach: req.multiattach ?? false,
        status: 'creating',
      });
      await parts.faults.hit('volume.create.after-row');
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
      }
    });
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
 * failure leaves it `error` (a retried delete decides) — unless the backend says it removed nothing
 * (`details.untouched`): then it has the status it had before.
 */
export async function deleteVolume(parts: ServiceParts, ref: Ref, scope: ProjectScope): Promise<void> {
  const { config, store } = parts;
  const volume = await resolveVolume(store, ref, projectOf(config, scope));
  await parts.volumeLocks.withLock(volume.id, async () => {
    const inUse = volumeInUseError(volume, await store.attachments.list({ volumeId: volume.id }));
    if (inUse) throw inUse;
    const devices = await store.devices.list({ volumeId: volume.id });
    if (devices.length > 0) {
      // berth connected it somewhere and never recorded letting go: deleting the storage under a
      // device would hand its bytes to whatever reuses them.
      throw new BerthError('CONFLICT', `volume ${volume.name} still has a device berth connected (${devices.map((d) => d.device.path).join(', ')})`, {
        hint: 'run `berth reconcile` on that host to disconnect it, then delete the volume',
        details: { volumeId: volume.id, devices: devices.map((d) => ({ hostId: d.hostId, device: d.device.path })) },
      });
    }
    const signal = AbortSignal.timeout(config.operationTimeoutMs);
    // Held while it is `deleting`: a volume left so by a killed process is finished by recovery.
    await withLease(store, volumeLeaseKey(volume.id), leaseOptions(parts.deps, signal, `volume ${volume.name}`), async () => {
      // Its status read under the lease: another process's failed delete may have made it `error` since.
      const before = (await store.volumes.require(volume.id)).status;
      await store.volumes.transition(volume.id, before === 'error' ? ['error'] : ['available'], 'deleting');
      await parts.faults.hit('volume.delete.after-status');
      // A backend that removed nothing gives the volume back as it was (a read-only directory, say).
      await finishDelete(parts, volume, signal, before === 'error' ? 'error' : 'available');
    });
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
    const extend = backend.extend?.bind(backend);
    if (!extend) {
      throw new BerthError('UNPROCESSABLE', `backend ${current.backend} cannot extend volumes`);
    }
    if (current.status !== 'available') {
      throw new BerthError('CONFLICT', `volume ${current.name} is ${current.status}; only an available volume can be extended`, {
        hint: busyVolumeHint(current, (await store.attachments.list({ volumeId: current.id })).filter((a) => a.status !== 'detached')),
        details: { volumeId: current.id, actual: current.status, expected: 'available' },
      });
    }
    const signal = AbortSignal.timeout(config.operationTimeoutMs);
    // Held while it is `extending`: a volume left so by a killed process is given back by recovery.
    return withLease(store, volumeLeaseKey(current.id), leaseOptions(parts.deps, signal, `volume ${current.name}`), async () => {
      await store.volumes.transition(current.id, ['available'], 'extending');
      await parts.faults.hit('volume.extend.after-status');
      try {
        await extend(backendVolume(current), size, signal);
      } catch (error) {
        await store.volumes.transition(current.id, ['extending'], 'available');
        throw toBerthError(error, 'BACKEND_ERROR');
      }
      return store.volumes.transition(current.id, ['extending'], 'available', { sizeBytes: size });
    });
  });
}

/**
 * The storage of a `deleting` volume removed, then its row. A backend failure leaves it `error` (a
 * retried delete decides) — or, when the backend says it removed nothing (`details.untouched`),
 * `untouched` (the status it had before the delete), so that it is not left `error` for nothing.
 */
async function finishDelete(parts: ServiceParts, volume: Volume, signal: AbortSignal, untouched: 'available' | 'error' = 'error'): Promise<void> {
  const { store, catalog } = parts;
  try {
    await catalog.backend(volume.backend).delete(backendVolume(volume), signal);
  } catch (error) {
    const failed = toBerthError(error, 'BACKEND_ERROR');
    await store.volumes.transition(volume.id, ['deleting'], failed.details.untouched === true ? untouched : 'error').catch(() => undefined);
    throw failed;
  }
  await store.volumes.delete(volume.id, ['deleting']);
}

/** What recovery did with a volume a killed create, delete or extend left. */
export interface VolumeLifecycleRecovery {
  volumeId: string;
  name: string;
  was: 'creating' | 'deleting' | 'extending';
  /** `removed`: the create undone or the delete finished; `available`: the extend given back at the recorded size; `error`: the backend failed (a delete decides). */
  action: 'removed' | 'available' | 'error' | 'skipped';
  detail: string;
}

const LIFECYCLE_STATUSES = ['creating', 'deleting', 'extending'] as const;

/**
 * Finish what a killed `volume create`, `delete` or `extend` left: a volume `creating`, `deleting`
 * or `extending` whose lease (held from before the status until after it) is free or held by a
 * dead process. A create is undone (storage and row: the name is free again, as after a failed
 * create), a delete finished, an extend given back at the recorded size (the backend may have grown
 * the storage: a retried extend to that size finds it so). A lease held by a live process is left
 * alone: that process is at it.
 */
export async function recoverVolumeLifecycles(parts: ServiceParts): Promise<VolumeLifecycleRecovery[]> {
  const { store, catalog, config, logger } = parts;
  const stuck = (await Promise.all(LIFECYCLE_STATUSES.map((status) => store.volumes.list({ status })))).flat();
  const outcomes: VolumeLifecycleRecovery[] = [];
  for (const found of stuck) {
    const was = found.status as VolumeLifecycleRecovery['was'];
    const key = was === 'creating' ? volumeCreateLeaseKey(found.projectId, found.name) : volumeLeaseKey(found.id);
    const signal = AbortSignal.timeout(config.undoTimeoutMs);
    const outcome = await parts.volumeLocks
      .withLock(found.id, () =>
        withLease(store, key, { ...leaseOptions(parts.deps, signal, `volume ${found.name}`), noWait: true }, async (): Promise<VolumeLifecycleRecovery> => {
          // Under the lease, read again: the process may have finished just before it let go.
          const volume = await store.volumes.get(found.id);
          const entry = { volumeId: found.id, name: found.name, was };
          if (volume === undefined || volume.status !== was) return { ...entry, action: 'skipped', detail: 'finished meanwhile' };
          if (was === 'extending') {
            await store.volumes.transition(volume.id, ['extending'], 'available');
            return { ...entry, action: 'available', detail: `an interrupted extend: available again at its recorded size (${volume.sizeBytes} bytes); extend it again` };
          }
          if (was === 'deleting') {
            try {
              await finishDelete(parts, volume, signal);
            } catch (error) {
              return { ...entry, action: 'error', detail: `an interrupted delete could not be finished: ${toBerthError(error).message}; delete it again` };
            }
            return { ...entry, action: 'removed', detail: 'an interrupted delete, finished' };
          }
          try {
            await catalog.backend(volume.backend).delete(backendVolume(volume), signal);
          } catch (error) {
            await store.volumes.transition(volume.id, ['creating'], 'error').catch(() => undefined);
            return { ...entry, action: 'error', detail: `an interrupted create could not be undone: ${toBerthError(error).message}; delete it` };
          }
          await store.volumes.delete(volume.id, ['creating']);
          return { ...entry, action: 'removed', detail: 'an interrupted create, undone (the name is free again)' };
        }),
      )
      .catch((error: unknown): VolumeLifecycleRecovery => {
        const e = toBerthError(error);
        return { volumeId: found.id, name: found.name, was, action: 'skipped', detail: e.details.leaseHeld === true ? 'a live process is at it' : e.message };
      });
    if (outcome.action !== 'skipped' || outcome.detail !== 'a live process is at it') {
      logger.warn({ volumeId: outcome.volumeId, was: outcome.was, action: outcome.action, detail: outcome.detail }, 'recovery: a volume an interrupted command left');
    }
    outcomes.push(outcome);
  }
  return outcomes;
}
