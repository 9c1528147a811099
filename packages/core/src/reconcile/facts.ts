import type { DriverCatalog } from '../catalog.js';
import type { HostStepCall, HostSteps } from '../host-steps/host-steps.js';
import type { ListOptions } from '../contracts/transport-driver.js';
import type { BackendVolume, VolumeBackend } from '../contracts/volume-backend.js';
import { BerthError, toBerthError } from '../errors.js';
import { consumerNameFor, localGuestKey } from '../hypervisor.js';
import type { Attachment, Host, Server, Volume } from '../model.js';
import type { ReconcileUnchecked } from '../reports.js';
import type { Store } from '../store.js';
import { live, type GuestListing, type ReconcileFacts, type TransportListing } from './findings.js';

// What reconcile reads: the backends' exports, the transports' listings of a host, the store's
// running operations. What cannot be read is named in `unchecked`, never guessed.

/** A part reconcile tried to look at and could not: the failure's message and code. */
function failedCheck(kind: ReconcileUnchecked['kind'], name: string, what: string, error: unknown): ReconcileUnchecked {
  const failure = toBerthError(error);
  return { kind, name, reason: `${what}: ${failure.message}`, errorCode: failure.code };
}

/** Read the backends' exports (on this process: backends are the controller's); what cannot be read is `unchecked`. */
export async function readExports(catalog: DriverCatalog, backendNames: readonly string[], unchecked: ReconcileUnchecked[]): Promise<ReconcileFacts['exports']> {
  const exports: ReconcileFacts['exports'] = [];
  for (const name of backendNames) {
    try {
      const backend = catalog.backend(name);
      if (!backend.exports) {
        unchecked.push({ kind: 'backend', name, reason: 'it cannot list its exports', errorCode: null });
        continue;
      }
      for (const entry of await backend.exports()) exports.push({ backend: name, export: entry });
    } catch (error) {
      unchecked.push(failedCheck('backend', name, 'listing its exports failed', error));
    }
  }
  return exports;
}

/**
 * The volumes, among `volumes`, whose backend says their storage is gone (`missingStorage`), by
 * id. A backend without the method is not asked (no `unchecked` entry: most plugins cannot tell,
 * and a reconcile that always read "partly checked" would teach users to ignore it); one that fails
 * is named in `unchecked`.
 */
export async function readMissingStorage(catalog: DriverCatalog, volumes: readonly Volume[], unchecked: ReconcileUnchecked[]): Promise<Set<string>> {
  const missing = new Set<string>();
  await askBackends(catalog, volumes, unchecked, "checking its volumes' storage failed", async (backend, asked, signal) => {
    if (!backend.missingStorage) return;
    for (const id of await backend.missingStorage(asked, signal)) missing.add(id);
  });
  return missing;
}

/**
 * The volumes, among `volumes`, whose backend says their storage is smaller than the volume
 * (`shortStorage`), with the size it has: id → bytes. Asked and reported as `readMissingStorage`;
 * an answer about a volume not asked, or whose size is not a whole number below the volume's, is
 * dropped (a plugin's answer is not trusted to name what it was not asked).
 */
export async function readShortStorage(catalog: DriverCatalog, volumes: readonly Volume[], unchecked: ReconcileUnchecked[]): Promise<Map<string, number>> {
  const short = new Map<string, number>();
  const sizes = new Map(volumes.map((v) => [v.id, v.sizeBytes]));
  await askBackends(catalog, volumes, unchecked, "checking its volumes' storage sizes failed", async (backend, asked, signal) => {
    if (!backend.shortStorage) return;
    for (const entry of await backend.shortStorage(asked, signal)) {
      const size = sizes.get(entry.id);
      if (size !== undefined && Number.isSafeInteger(entry.sizeBytes) && entry.sizeBytes >= 0 && entry.sizeBytes < size) short.set(entry.id, entry.sizeBytes);
    }
  });
  return short;
}

/**
 * Ask each backend of `volumes` about its own (`ask`), within `STORAGE_CHECK_DEADLINE_MS`; one that
 * fails (or does not answer in time) is named in `unchecked` with `failed`.
 */
async function askBackends(
  catalog: DriverCatalog,
  volumes: readonly Volume[],
  unchecked: ReconcileUnchecked[],
  failed: string,
  ask: (backend: VolumeBackend, asked: BackendVolume[], signal: AbortSignal) => Promise<void>,
): Promise<void> {
  const byBackend = new Map<string, Volume[]>();
  for (const volume of volumes) {
    const own = byBackend.get(volume.backend);
    if (own) own.push(volume);
    else byBackend.set(volume.backend, [volume]);
  }
  for (const [name, own] of byBackend) {
    try {
      const backend = catalog.backend(name);
      const asked = own.map((v) => ({ id: v.id, name: v.name, sizeBytes: v.sizeBytes, providerLocation: v.providerLocation }));
      // Raced with its deadline: a `stat` on a stalled network mount does not hear the signal.
      const deadline = AbortSignal.timeout(STORAGE_CHECK_DEADLINE_MS);
      const expired = new Promise<never>((_, reject) =>
        deadline.addEventListener('abort', () => reject(new BerthError('TIMEOUT', `no answer within ${STORAGE_CHECK_DEADLINE_MS / 1000} s`)), { once: true }),
      );
      expired.catch(() => undefined);
      await Promise.race([ask(backend, asked, deadline), expired]);
    } catch (error) {
      unchecked.push(failedCheck('backend', name, failed, error));
    }
  }
}

/** How long a backend may take to say which volumes' storage is gone, or short. */
const STORAGE_CHECK_DEADLINE_MS = 30_000;

/**
 * What the transports of the reconciled host list, through its executor (the `host_facts` host
 * step: in-process for this host, its `berth agent` for another); a transport that cannot list,
 * or failed to, is added to `unchecked` when given.
 */
export async function readListings(steps: HostSteps, call: HostStepCall, unchecked?: ReconcileUnchecked[], options: ListOptions = {}): Promise<TransportListing[]> {
  const facts = await steps.run('host_facts', options.readOnly === true ? { readOnly: true } : {}, call);
  unchecked?.push(...facts.unchecked);
  return facts.listings;
}


/**
 * What the running guests of `host`'s servers have (the `guest_disks` host step, through each
 * server's consumer): servers whose hypervisor is a guest (`qemu`, `libvirt`) only. A guest that
 * does not run, a consumer that cannot list, or a listing that failed is named in `unchecked`
 * and left out, so nothing is concluded about that guest.
 */
export async function readGuests(
  steps: HostSteps,
  call: () => HostStepCall,
  host: Host,
  servers: readonly Server[],
  defaultConsumer: string,
  unchecked: ReconcileUnchecked[],
): Promise<GuestListing[]> {
  const guests: GuestListing[] = [];
  for (const server of servers) {
    if (server.hostId !== host.id || server.hypervisor === undefined || server.hypervisor.type === 'host') continue;
    const consumer = consumerNameFor(server, defaultConsumer);
    try {
      const { supported, disks, installed } = await steps.run('guest_disks', { consumer, server }, call());
      if (installed === false) unchecked.push({ kind: 'server', name: server.name, reason: `its ${consumer} consumer is not installed on its host`, errorCode: null });
      else if (!supported) unchecked.push({ kind: 'server', name: server.name, reason: `its ${consumer} consumer cannot list a guest's disks`, errorCode: null });
      else if (disks === null) unchecked.push({ kind: 'server', name: server.name, reason: 'its guest does not run: its disks are not compared', errorCode: null });
      else {
        // This host's own guests: a QMP socket reached through a symlink is the same guest.
        const key = steps.kind === 'local' ? await localGuestKey(server.hypervisor) : undefined;
        guests.push({ server, consumer, disks, ...(key === undefined ? {} : { key }) });
      }
    } catch (error) {
      unchecked.push(failedCheck('server', server.name, "listing its guest's disks failed", error));
    }
  }
  return guests;
}

/**
 * What is wrong with what the consumers published for `host`'s attached attachments (the
 * `check_publications` host step, one for all of them: `Consumer.checkPublication`), by
 * attachment id; an attachment missing from the map was found as published, or could not be
 * checked (its consumer cannot, or the check failed: that server is named in `unchecked`).
 * Guests are not asked here: `readGuests` compares their disks.
 */
export async function readPublications(
  steps: HostSteps,
  call: HostStepCall,
  host: Host,
  servers: readonly Server[],
  attachments: readonly Attachment[],
  defaultConsumer: string,
  unchecked: ReconcileUnchecked[],
): Promise<Map<string, string>> {
  const serversById = new Map(servers.map((s) => [s.id, s]));
  const checks = attachments.flatMap((attachment) => {
    const server = serversById.get(attachment.serverId);
    if (attachment.status !== 'attached' || attachment.hostId !== host.id || attachment.device === null || !server) return [];
    if (server.hypervisor !== undefined && server.hypervisor.type !== 'host') return [];
    return [{ consumer: consumerNameFor(server, defaultConsumer), server, attachment }];
  });
  const problems = new Map<string, string>();
  if (checks.length === 0) return problems;
  const failed = new Map<string, ReconcileUnchecked>();
  try {
    const { results } = await steps.run('check_publications', { checks }, call);
    checks.forEach((check, i) => {
      const result = results[i];
      if (result?.error !== undefined) {
        const reason = `checking what its ${check.consumer} consumer published failed: ${result.error}`;
        // An older agent sends the message only.
        failed.set(check.server.name, { kind: 'server', name: check.server.name, reason, errorCode: result.errorCode ?? 'INTERNAL' });
      } else if (result?.problem) problems.set(check.attachment.id, result.problem);
    });
  } catch (error) {
    for (const check of checks) failed.set(check.server.name, failedCheck('server', check.server.name, `checking what its ${check.consumer} consumer published failed`, error));
  }
  unchecked.push(...failed.values());
  return problems;
}

/**
 * What every transport that can list finds connected on this host, highest priority first; a
 * transport that cannot list, or fails to, is named in `unchecked` (the `host_facts` host step).
 */
export async function listTransports(
  catalog: DriverCatalog,
  names: readonly string[] = catalog.transportNames(),
  unchecked?: ReconcileUnchecked[],
  options: ListOptions = {},
): Promise<TransportListing[]> {
  const listings: Array<TransportListing & { priority: number }> = [];
  for (const name of names) {
    try {
      const transport = catalog.transport(name);
      if (!transport.connected) {
        unchecked?.push({ kind: 'transport', name, reason: 'it cannot list its devices', errorCode: null });
        continue;
      }
      const devices = await transport.connected(options.readOnly === true ? { readOnly: true } : undefined);
      listings.push({
        transport: name,
        protocol: transport.protocols[0] ?? name,
        sourceKeys: [...(transport.sourceKeys ?? [])],
        repairsPaths: transport.repairPaths !== undefined,
        devices,
        priority: transport.priority ?? 0,
      });
    } catch (error) {
      unchecked?.push(failedCheck('transport', name, 'listing its devices failed', error));
    }
  }
  // A multipath map is taken down before the paths under it.
  return listings.sort((a, b) => b.priority - a.priority).map(({ priority: _priority, ...listing }) => listing);
}


/** Volumes with a `running` operation (reconcile leaves them alone). */
export async function busyVolumeIds(store: Store): Promise<Set<string>> {
  const running = await store.operations.list({ state: 'running' });
  return new Set(running.map((o) => o.volumeId).filter((id): id is string => id !== null));
}


/** Re-read one volume's facts under its lock; undefined when it is gone. */
export async function freshVolume(store: Store, volumeId: string): Promise<{ volume: Volume; attachments: Attachment[]; busy: boolean } | undefined> {
  const volume = await store.volumes.get(volumeId);
  if (!volume) return undefined;
  const attachments = live(await store.attachments.list({ volumeId }));
  const busy = (await store.operations.list({ state: 'running', volumeId })).length > 0;
  return { volume, attachments, busy };
}

