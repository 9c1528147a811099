import { toBerthError } from '../errors.js';
import type { DoctorEntry } from '../reports.js';
import { foreignHostRoot, ownerAlive } from '../pipeline/recovery.js';
import type { ServiceParts } from './parts.js';

/** Whether each transport, backend, consumer and the store works on this host, and every plugin that failed to load. */
export async function runDoctor(parts: ServiceParts): Promise<DoctorEntry[]> {
  const { catalog, config, store } = parts;
  const entries: DoctorEntry[] = [];
  const check = async (kind: DoctorEntry['kind'], name: string, fn: () => Promise<DoctorEntry['result']>): Promise<void> => {
    try {
      entries.push({ kind, name, result: await fn() });
    } catch (error) {
      const e = toBerthError(error);
      entries.push({ kind, name, result: { ok: false, summary: e.message, ...(e.hint ? { fix: e.hint } : {}) } });
    }
  };
  for (const name of catalog.transportNames()) await check('transport', name, () => catalog.transport(name).check());
  for (const name of catalog.backendNames()) await check('backend', name, () => catalog.backend(name).check());
  for (const name of catalog.consumerNames()) {
    await check('consumer', name, async () => {
      const consumer = catalog.consumer(name);
      return consumer.check ? consumer.check() : { ok: true, summary: 'no checks' };
    });
  }
  await check('store', config.store.kind, async () => {
    await store.volumes.list({ projectId: config.defaultProject });
    return { ok: true, summary: `${config.store.kind} store reachable` };
  });
  // An interrupted operation recovery leaves alone: it belongs to a berth on another host root.
  for (const operation of await store.operations.list({ state: 'running' }).catch(() => [])) {
    if (ownerAlive(operation.owner, parts.identity.hostname, parts.owner)) continue;
    const elsewhere = await foreignHostRoot(parts.deps, operation).catch(() => undefined);
    if (elsewhere) entries.push({ kind: 'operation', name: operation.id, result: { ok: false, summary: `${elsewhere.message}: left for recovery there`, fix: elsewhere.hint } });
  }
  for (const failure of catalog.plugins().failed) {
    entries.push({ kind: 'plugin', name: failure.packageName, result: { ok: false, summary: failure.error, fix: 'reinstall or remove it: berth plugins' } });
  }
  return entries;
}
