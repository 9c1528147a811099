import { redactConnectionInfo, withAccessMode, type ConnectionInfo, type Connector, type Device } from './connection.js';
import type { DriverCatalog } from './catalog.js';
import type { Consumer } from './contracts/consumer.js';
import type { ConnectedDevice } from './contracts/transport-driver.js';
import type { BackendExport } from './contracts/volume-backend.js';
import { sameDevice } from './device-identity.js';
import { BerthError, toBerthError } from './errors.js';
import type { Attachment, Host, HostDevice, Operation, Server, Volume, VolumeStatus } from './model.js';
import { backendVolume, transitionAttachment, type PipelineContext, type PipelineDeps } from './pipeline/context.js';
import { detachSteps, markDetachFailed } from './pipeline/detach.js';
import { connectShared, publishShared, releaseShared } from './pipeline/device-sharing.js';
import { summarize, type OperationRunner } from './pipeline/operation-runner.js';
import type { FixState, ReconcileDifference, ReconcileOptions, ReconcileReport, ReconcileUnchecked } from './reports.js';
import type { Store } from './store.js';
import { recomputeVolumeStatus, VOLUME_TRANSITIONS } from './transitions.js';

/** Attachment statuses an operation passes through: with no operation running, they are stuck. */
const TRANSITIONAL: readonly Attachment['status'][] = ['reserved', 'attaching', 'detaching'];

/**
 * Whether berth's own attach pipeline made `attachment` (an operation names it, or it was
 * connected by a transport) rather than an outside orchestrator through the three-phase API.
 * An older berth could crash before naming it: an attach of the same volume and server that
 * names no attachment and whose reserve ran before it was made counts too.
 */
export function madeByPipeline(attachment: Attachment, operations: readonly Operation[]): boolean {
  if (attachment.transport !== null) return true;
  return operations.some(
    (op) =>
      op.attachmentId === attachment.id ||
      (op.kind === 'attach' &&
        op.attachmentId === null &&
        op.volumeId === attachment.volumeId &&
        op.serverId === attachment.serverId &&
        op.startedAt <= attachment.createdAt &&
        op.steps.some((s) => s.name === 'reserve')),
  );
}

/** Volume statuses that are not derived from attachments: a create, extend or delete owns them. */
const NOT_DERIVED: readonly VolumeStatus[] = ['creating', 'extending', 'deleting'];

/** connection_info keys that name the volume itself (a file, a target and LUN), not a way to it. */
const IDENTITY_KEYS = ['device_path', 'target_iqn', 'target_lun'] as const;

/**
 * Whether a connected device's `source` is what a connection_info's `data` names: they share at
 * least one identifying key (`device_path`, `target_iqn`, `target_lun`) and agree on every one
 * they share. A portal is not compared: one LUN is reachable through several.
 */
export function sourceMatches(source: Readonly<Record<string, unknown>>, data: Readonly<Record<string, unknown>>): boolean {
  let shared = 0;
  for (const key of IDENTITY_KEYS) {
    const a = source[key];
    const b = data[key];
    if (a === undefined || a === null || b === undefined || b === null) continue;
    if (a !== b) return false;
    shared += 1;
  }
  return shared > 0;
}

/**
 * The shortest way from `from` to `to` through the transition table, as the statuses to pass
 * (ending with `to`), never through `creating`, `extending` or `deleting`; undefined when there
 * is none. A status written behind berth's back may have no direct transition to the right one
 * (`available` → `in-use`): recomputing it then takes two compare-and-swaps in one transaction.
 */
export function volumeRepairPath(from: VolumeStatus, to: VolumeStatus): VolumeStatus[] | undefined {
  if (from === to) return [];
  const previous = new Map<VolumeStatus, VolumeStatus>();
  const queue: VolumeStatus[] = [from];
  const seen = new Set<VolumeStatus>([from]);
  while (queue.length > 0) {
    const current = queue.shift()!;
    for (const next of VOLUME_TRANSITIONS[current]) {
      if (seen.has(next) || (next !== to && NOT_DERIVED.includes(next))) continue;
      seen.add(next);
      previous.set(next, current);
      if (next === to) {
        const path: VolumeStatus[] = [to];
        let step = current;
        while (step !== from) {
          path.unshift(step);
          step = previous.get(step)!;
        }
        return path;
      }
      queue.push(next);
    }
  }
  return undefined;
}

/** The devices one transport lists on this host. */
export interface TransportListing {
  transport: string;
  /** Its first protocol: the `driver_volume_type` of a connection_info rebuilt from a source. */
  protocol: string;
  devices: ConnectedDevice[];
}

/** What reconcile compares: the store, the backends' exports and the devices on this host. */
export interface ReconcileFacts {
  /** This host's id in the store (devices and attachments are compared for this host only). */
  localHostId: string;
  volumes: Volume[];
  attachments: Attachment[];
  /** Volumes with a `running` operation: left alone. */
  busyVolumeIds: ReadonlySet<string>;
  /** berth's records of the devices it connected on this host. */
  devices?: HostDevice[];
  /** Finished attach and detach operations (which attachments the pipelines made). */
  operations?: Operation[];
  exports: Array<{ backend: string; export: BackendExport }>;
  /** Listings of the transports that can list (highest priority first). */
  listings: TransportListing[];
  /**
   * A second listing taken after the store was read: an attachment's device counts as gone only
   * when neither listing has it (an attach that finished between the two reads is not flagged).
   */
  listingsAfter?: TransportListing[];
}

/** One difference as found, with what its fix needs. */
export type Finding =
  | { kind: 'export_without_attachment'; backend: string; export: BackendExport; volume: Volume | undefined; skip?: string }
  | {
      kind: 'device_without_attachment';
      transport: string;
      /** The `driver_volume_type` of a connection_info rebuilt from the device's source. */
      protocol: string;
      /** berth's record of the device, when it has one (what it connected and never let go of). */
      record?: HostDevice;
      /** The device as the transport lists it now (undefined: already gone, only the record is left). */
      connected: ConnectedDevice | undefined;
      volume: Volume;
      skip?: string;
    }
  | { kind: 'attachment_device_gone'; attachment: Attachment; volume: Volume; found: ConnectedDevice | undefined; skip?: string }
  | { kind: 'attachment_stuck'; attachment: Attachment; volume: Volume; skip?: string }
  | { kind: 'attachment_error'; attachment: Attachment; volume: Volume; skip?: string }
  | { kind: 'volume_status_mismatch'; volume: Volume; expected: VolumeStatus; skip?: string };

/** Attachments that hold something on a backend or a host (a detached one holds nothing). */
function live(attachments: readonly Attachment[]): Attachment[] {
  return attachments.filter((a) => a.status !== 'detached');
}

/** Whether `attachment` accounts for an export to `initiator` (the connector's initiator or host). */
function accountsForExport(attachment: Attachment, initiator: string | undefined): boolean {
  const connector = attachment.connector;
  if (!connector) return false;
  return initiator === undefined || connector.initiator === initiator || connector.host === initiator;
}

/** Whether an attachment on this host accounts for a device whose backing thing is `source`. */
function accountsForDevice(attachment: Attachment, localHostId: string, source: Readonly<Record<string, unknown>>): boolean {
  return attachment.hostId === localHostId && attachment.connectionInfo !== null && sourceMatches(source, attachment.connectionInfo.data);
}

/**
 * The berth volume a device's source is, if any: a volume whose `providerLocation` is the
 * source's file or target IQN, or whose attachment's connection_info names the source. A device
 * that is none of these (a loop device someone made over their own file) is not berth's.
 */
export function volumeOfSource(
  source: Readonly<Record<string, unknown>>,
  volumes: readonly Volume[],
  attachments: readonly Attachment[],
): Volume | undefined {
  const file = typeof source.device_path === 'string' ? source.device_path : undefined;
  const iqn = typeof source.target_iqn === 'string' ? source.target_iqn : undefined;
  const byLocation = volumes.find((v) => v.providerLocation !== null && (v.providerLocation === file || v.providerLocation === iqn));
  if (byLocation) return byLocation;
  const attachment = attachments.find((a) => a.connectionInfo !== null && sourceMatches(source, a.connectionInfo.data));
  return attachment ? volumes.find((v) => v.id === attachment.volumeId) : undefined;
}

function matchingDevices(listing: TransportListing | undefined, attachment: Attachment): ConnectedDevice[] {
  const data = attachment.connectionInfo?.data;
  if (!listing || !data) return [];
  return listing.devices.filter((d) => sourceMatches(d.source, data));
}

/**
 * Every difference between the store and what the backends and this host hold (pure: the rules
 * of core's README, "Reconcile"). Volumes with a running operation are reported as skipped.
 */
export function findDifferences(facts: ReconcileFacts): Finding[] {
  const findings: Finding[] = [];
  const volumesById = new Map(facts.volumes.map((v) => [v.id, v]));
  const attachmentsOf = (volumeId: string): Attachment[] => live(facts.attachments.filter((a) => a.volumeId === volumeId));
  const busy = (volumeId: string): string | undefined =>
    facts.busyVolumeIds.has(volumeId) ? 'an operation on this volume is running; run reconcile again when it has finished' : undefined;
  const withSkip = <F extends Finding>(finding: F, skip: string | undefined): F => (skip === undefined ? finding : { ...finding, skip });

  for (const entry of facts.exports) {
    const volume = volumesById.get(entry.export.volumeId);
    if (volume && attachmentsOf(volume.id).some((a) => accountsForExport(a, entry.export.initiator))) continue;
    const skip = volume ? busy(volume.id) : 'the volume is not in this store: left alone (another berth may own it)';
    findings.push(withSkip({ kind: 'export_without_attachment', backend: entry.backend, export: entry.export, volume }, skip));
  }

  const records = (facts.devices ?? []).filter((r) => r.hostId === facts.localHostId);
  const hostAttachments = live(facts.attachments).filter((a) => a.hostId === facts.localHostId);
  const listed = (device: Device): ConnectedDevice | undefined => {
    for (const listing of [...facts.listings, ...(facts.listingsAfter ?? [])]) {
      const entry = listing.devices.find((d) => sameDevice(d.device, device));
      if (entry) return entry;
    }
    return undefined;
  };

  // Devices berth connected (its records) that no attachment on this host uses any more.
  for (const record of records) {
    const volume = volumesById.get(record.volumeId);
    if (!volume) continue;
    if (hostAttachments.some((a) => a.volumeId === record.volumeId && a.device !== null)) continue;
    const connected = listed(record.device);
    findings.push(
      withSkip(
        { kind: 'device_without_attachment', transport: record.transport, protocol: record.connectionInfo.driver_volume_type, record, connected, volume },
        busy(volume.id),
      ),
    );
  }

  // Whole devices of a berth volume that no record and no attachment on this host names: left by a
  // cut-short connect, an older berth, or someone attaching the volume file by hand. (A device over
  // a part of a file is not even listed by the loop transport: berth never makes one.)
  const claimed = new Set<string>();
  for (const listing of facts.listings) {
    for (const connected of listing.devices) {
      const volume = volumeOfSource(connected.source, facts.volumes, facts.attachments);
      if (!volume) continue;
      if (records.some((r) => sameDevice(r.device, connected.device))) continue;
      if (hostAttachments.some((a) => accountsForDevice(a, facts.localHostId, connected.source))) continue;
      // Two transports may list one device (a path under a multipath map): one fix is enough.
      const key = `${connected.device.path}\u0000${JSON.stringify(connected.source)}`;
      if (claimed.has(key)) continue;
      claimed.add(key);
      findings.push(
        withSkip({ kind: 'device_without_attachment', transport: listing.transport, protocol: listing.protocol, connected, volume }, busy(volume.id)),
      );
    }
  }

  const before = new Map(facts.listings.map((l) => [l.transport, l]));
  const after = new Map((facts.listingsAfter ?? facts.listings).map((l) => [l.transport, l]));
  for (const attachment of facts.attachments) {
    if (attachment.status !== 'attached' || attachment.hostId !== facts.localHostId) continue;
    if (!attachment.transport || !attachment.connectionInfo) continue;
    // A transport that cannot list its devices (or failed to) says nothing about them.
    if (!before.has(attachment.transport) || !after.has(attachment.transport)) continue;
    const volume = volumesById.get(attachment.volumeId);
    if (!volume) continue;
    const now = matchingDevices(after.get(attachment.transport), attachment);
    const then = matchingDevices(before.get(attachment.transport), attachment);
    const recorded = attachment.device;
    // Present: the very device recorded (its identity, when it has one) is listed for this volume.
    if (recorded && [...now, ...then].some((d) => sameDevice(d.device, recorded))) continue;
    const found = now[0] ?? then[0];
    findings.push(withSkip({ kind: 'attachment_device_gone', attachment, volume, found }, busy(volume.id)));
  }

  // Attachments an interrupted attach or detach left in a transitional or error state.
  for (const attachment of facts.attachments) {
    const volume = volumesById.get(attachment.volumeId);
    if (!volume) continue;
    const elsewhere = attachment.hostId !== facts.localHostId ? 'it is on another host: run `berth reconcile` there' : undefined;
    if (TRANSITIONAL.includes(attachment.status)) {
      // One made by an outside orchestrator (the three-phase API) is waiting for it: not stuck.
      if (!madeByPipeline(attachment, facts.operations ?? [])) continue;
      findings.push(withSkip({ kind: 'attachment_stuck', attachment, volume }, busy(volume.id) ?? elsewhere));
    } else if (attachment.status === 'error_attaching' || attachment.status === 'error_detaching') {
      findings.push(withSkip({ kind: 'attachment_error', attachment, volume }, busy(volume.id) ?? elsewhere));
    }
  }

  findings.push(...findStatusMismatches(facts.volumes, facts.attachments, facts.busyVolumeIds));
  return findings;
}

/** Volumes whose status is not what their attachments make it (see `recomputeVolumeStatus`). */
export function findStatusMismatches(volumes: readonly Volume[], attachments: readonly Attachment[], busyVolumeIds: ReadonlySet<string>): Finding[] {
  const findings: Finding[] = [];
  for (const volume of volumes) {
    if (NOT_DERIVED.includes(volume.status)) continue;
    const own = live(attachments.filter((a) => a.volumeId === volume.id));
    const expected = recomputeVolumeStatus(own);
    if (expected === volume.status) continue;
    // `error` without attachments is a failed delete (the storage may be half gone): a retried
    // delete decides, not a recomputation that would make it attachable again.
    if (volume.status === 'error' && own.length === 0) continue;
    const finding: Finding = { kind: 'volume_status_mismatch', volume, expected };
    findings.push(
      busyVolumeIds.has(volume.id) ? { ...finding, skip: 'an operation on this volume is running; run reconcile again when it has finished' } : finding,
    );
  }
  return findings;
}

function deviceText(connected: ConnectedDevice): string {
  const source = connected.source;
  if (typeof source.device_path === 'string') return `${connected.device.path} (backing ${source.device_path})`;
  if (typeof source.target_iqn === 'string') return `${connected.device.path} (${source.target_iqn} LUN ${String(source.target_lun ?? '?')})`;
  return connected.device.path;
}

/** A finding as the report shows it (state `planned`, or `skipped` with the reason). */
export function describeFinding(finding: Finding): ReconcileDifference {
  const base = (volumeId: string | null, attachmentId: string | null) => ({
    volumeId,
    attachmentId,
    state: (finding.skip === undefined ? 'planned' : 'skipped') as FixState,
    result: finding.skip ?? null,
    errorCode: null,
  });
  switch (finding.kind) {
    case 'export_without_attachment': {
      const who = finding.export.initiator ?? 'any host';
      const name = finding.volume?.name ?? finding.export.volumeId;
      return {
        kind: finding.kind,
        resource: `export of volume ${name} (${finding.backend}) to ${who}`,
        detail: `backend ${finding.backend} exports volume ${name} to ${who}, and no attachment of it is for ${who}`,
        fix: finding.volume ? 'terminate_connection' : 'none',
        fixDetail: finding.volume ? `remove the export (${finding.backend} terminateConnection for ${who})` : 'none: the volume is not in this store',
        ...base(finding.volume?.id ?? finding.export.volumeId, null),
      };
    }
    case 'device_without_attachment': {
      const { record, connected } = finding;
      const where = record ? `berth connected volume ${finding.volume.name} at ${record.device.path} (${record.transport})` : `transport ${finding.transport} has volume ${finding.volume.name} connected at ${connected?.device.path ?? '?'}`;
      return {
        kind: finding.kind,
        resource: connected ? deviceText(connected) : `${record?.device.path ?? '?'} (gone)`,
        detail: connected ? `${where}, and no attachment on this host uses it` : `berth's record of volume ${finding.volume.name} at ${record?.device.path ?? '?'} outlived the device and every attachment`,
        fix: 'disconnect',
        fixDetail: connected ? `disconnect it (${finding.transport} disconnect, only while it is still that very device and nothing holds it open)` : 'forget the record',
        ...base(finding.volume.id, null),
      };
    }
    case 'attachment_stuck':
    case 'attachment_error': {
      const { attachment } = finding;
      const stuck = finding.kind === 'attachment_stuck';
      return {
        kind: finding.kind,
        resource: `attachment ${attachment.id} (volume ${finding.volume.name})`,
        detail: stuck
          ? `attachment ${attachment.id} of volume ${finding.volume.name} is ${attachment.status}, and no operation is running on it`
          : `attachment ${attachment.id} of volume ${finding.volume.name} is ${attachment.status}${attachment.error ? `: ${attachment.error}` : ''}`,
        // A forced detach: disconnect (when it still has a device), remove the export, delete the record.
        fix: 'disconnect',
        fixDetail: `finish it as \`berth detach ${finding.volume.name} --force\` does (a journalled detach operation: unpublish, disconnect, terminate, delete)`,
        ...base(finding.volume.id, attachment.id),
      };
    }
    case 'attachment_device_gone': {
      const recorded = finding.attachment.device?.path ?? 'no device';
      const detail = finding.found
        ? `attachment ${finding.attachment.id} of volume ${finding.volume.name} records ${recorded}, which is gone; the volume is connected at ${finding.found.device.path}`
        : `attachment ${finding.attachment.id} of volume ${finding.volume.name} is attached, but its device ${recorded} is not connected on this host`;
      return {
        kind: finding.kind,
        resource: `attachment ${finding.attachment.id} (volume ${finding.volume.name})`,
        detail,
        fix: 'reconnect',
        fixDetail: `reconnect it (${finding.attachment.transport ?? 'its transport'}) and publish it again; if that fails, mark it error_detaching (volume error) for \`berth detach --force\``,
        ...base(finding.volume.id, finding.attachment.id),
      };
    }
    case 'volume_status_mismatch':
      return {
        kind: finding.kind,
        resource: `volume ${finding.volume.name}`,
        detail: `volume ${finding.volume.name} is ${finding.volume.status}, but its attachments make it ${finding.expected}`,
        fix: 'recompute_status',
        fixDetail: `set it to ${finding.expected} (compare-and-swap from ${finding.volume.status})`,
        ...base(finding.volume.id, null),
      };
  }
}

/** What reconcile needs from the rest of berth. */
export interface ReconcileDeps extends PipelineDeps {
  consumer(): Consumer;
  /** Runs the detach pipeline for `finish_detach`. */
  runner: OperationRunner;
  /** Run `fn` holding the volume's lock (the one attach and detach take). */
  withVolumeLock<T>(volumeId: string, fn: () => Promise<T>): Promise<T>;
}

/** Read the backends' exports and the transports' devices; what cannot be read is `unchecked`. */
async function readHostFacts(
  deps: ReconcileDeps,
  backendNames: readonly string[],
  unchecked: ReconcileUnchecked[],
): Promise<{ exports: ReconcileFacts['exports']; listings: TransportListing[] }> {
  const exports: ReconcileFacts['exports'] = [];
  for (const name of backendNames) {
    try {
      const backend = deps.catalog.backend(name);
      if (!backend.exports) {
        unchecked.push({ kind: 'backend', name, reason: 'it cannot list its exports' });
        continue;
      }
      for (const entry of await backend.exports()) exports.push({ backend: name, export: entry });
    } catch (error) {
      unchecked.push({ kind: 'backend', name, reason: `listing its exports failed: ${toBerthError(error).message}` });
    }
  }
  return { exports, listings: await listTransports(deps.catalog, deps.catalog.transportNames(), unchecked) };
}

/**
 * What every transport that can list finds connected on this host, highest priority first; a
 * transport that cannot list, or fails to, is named in `unchecked` (the `host_facts` host step).
 */
export async function listTransports(
  catalog: DriverCatalog,
  names: readonly string[] = catalog.transportNames(),
  unchecked?: ReconcileUnchecked[],
): Promise<TransportListing[]> {
  const listings: Array<TransportListing & { priority: number }> = [];
  for (const name of names) {
    try {
      const transport = catalog.transport(name);
      if (!transport.connected) {
        unchecked?.push({ kind: 'transport', name, reason: 'it cannot list its devices' });
        continue;
      }
      const devices = await transport.connected();
      listings.push({ transport: name, protocol: transport.protocols[0] ?? name, devices, priority: transport.priority ?? 0 });
    } catch (error) {
      unchecked?.push({ kind: 'transport', name, reason: `listing its devices failed: ${toBerthError(error).message}` });
    }
  }
  // A multipath map is taken down before the paths under it.
  return listings.sort((a, b) => b.priority - a.priority).map(({ priority: _priority, ...listing }) => listing);
}

async function busyVolumeIds(store: Store): Promise<Set<string>> {
  const running = await store.operations.list({ state: 'running' });
  return new Set(running.map((o) => o.volumeId).filter((id): id is string => id !== null));
}

/** Re-read one volume's facts under its lock; undefined when it is gone. */
async function freshVolume(store: Store, volumeId: string): Promise<{ volume: Volume; attachments: Attachment[]; busy: boolean } | undefined> {
  const volume = await store.volumes.get(volumeId);
  if (!volume) return undefined;
  const attachments = live(await store.attachments.list({ volumeId }));
  const busy = (await store.operations.list({ state: 'running', volumeId })).length > 0;
  return { volume, attachments, busy };
}

/** Why a fix was not applied after all (the state changed since it was found). */
class Skip extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

const BUSY = 'an operation on this volume started; run reconcile again when it has finished';

/**
 * `berth reconcile`: compare the store with what each backend exports and what each transport has
 * connected on this host, list every difference with its fix, and (unless `dryRun`) apply the
 * fixes, each under the volume's lock after checking again that it is still needed, each
 * journalled as a step of one `reconcile` operation. It never touches a device whose source is
 * not a berth volume, nor an export of a volume this store does not know.
 */
export async function runReconcile(deps: ReconcileDeps, options: ReconcileOptions = {}): Promise<ReconcileReport> {
  const dryRun = options.dryRun ?? false;
  const { store, catalog, logger } = deps;
  const unchecked: ReconcileUnchecked[] = [];
  const host = await deps.localHost();

  // Host facts first, the store second: something made after the listing is never acted on, and
  // whatever was listed either has its record by the time the store is read or is really orphaned.
  const knownBackends = new Set(catalog.backendNames());
  const usedBackends = [...new Set((await store.volumes.list()).map((v) => v.backend))].filter((b) => knownBackends.has(b));
  const { exports, listings } = await readHostFacts(deps, usedBackends, unchecked);
  const volumes = await store.volumes.list();
  const attachments = await store.attachments.list();
  const devices = await store.devices.list({ hostId: host.id });
  const operations = (await store.operations.list({ state: ['succeeded', 'rolled_back', 'failed'] })).filter((o) => o.kind === 'attach' || o.kind === 'detach');
  const busy = await busyVolumeIds(store);
  const listingsAfter = await listTransports(deps.catalog, listings.map((l) => l.transport));
  const findings = findDifferences({ localHostId: host.id, volumes, attachments, busyVolumeIds: busy, exports, listings, listingsAfter, devices, operations });

  if (dryRun) {
    const differences = findings.map(describeFinding);
    return { dryRun, operationId: null, differences, unchecked, counts: countOf(differences) };
  }

  let operation: Operation | undefined;
  const journal = async (name: string, data: Record<string, unknown>, fix: () => Promise<string>): Promise<string> => {
    operation ??= await store.operations.create({
      kind: 'reconcile',
      hostId: host.id,
      owner: deps.owner,
      deadlineAt: new Date(Date.now() + deps.config.operationTimeoutMs).toISOString(),
    });
    const seq = await store.operations.startStep(operation.id, name, 'do');
    try {
      const result = await fix();
      await store.operations.endStep(operation.id, seq, { state: 'done', data: { ...data, result } });
      return result;
    } catch (error) {
      const skipped = error instanceof Skip;
      const failure = skipped ? undefined : toBerthError(error);
      await store.operations.endStep(operation.id, seq, {
        state: skipped ? 'done' : 'failed',
        data: { ...data, ...(skipped ? { skipped: error.reason } : {}) },
        ...(failure ? { error: summarize(failure) } : {}),
      });
      throw error;
    }
  };

  const differences: ReconcileDifference[] = [];
  const apply = async (finding: Finding): Promise<void> => {
    const difference = describeFinding(finding);
    differences.push(difference);
    if (finding.skip !== undefined || difference.fix === 'none') return;
    const volumeId = difference.volumeId!;
    try {
      difference.result = await deps.withVolumeLock(volumeId, () =>
        journal(stepNameOf(difference), { kind: difference.kind, resource: difference.resource, volumeId, attachmentId: difference.attachmentId }, () =>
          fixOf(deps, finding),
        ),
      );
      difference.state = 'applied';
    } catch (error) {
      if (error instanceof Skip) {
        difference.state = 'skipped';
        difference.result = error.reason;
        return;
      }
      const failure = toBerthError(error);
      difference.state = 'failed';
      difference.result = failure.message;
      difference.errorCode = failure.code;
      logger.warn({ kind: difference.kind, resource: difference.resource, code: failure.code, err: failure.message }, 'reconcile: a fix failed');
    }
  };

  for (const finding of findings) if (finding.kind !== 'volume_status_mismatch') await apply(finding);
  // Statuses last, read again: the fixes above recompute the volumes they touch.
  const after = findStatusMismatches(await store.volumes.list(), await store.attachments.list(), await busyVolumeIds(store));
  for (const finding of after) await apply(finding);

  const counts = countOf(differences);
  if (operation) {
    const failedFixes = differences.filter((d) => d.state === 'failed');
    await store.operations.finish(operation.id, {
      state: failedFixes.length > 0 ? 'failed' : 'succeeded',
      result: { ...counts },
      ...(failedFixes.length > 0
        ? {
            error: {
              code: failedFixes[0]!.errorCode ?? 'DRIVER_ERROR',
              message: `${failedFixes.length} of ${counts.applied + counts.failed} reconcile fix(es) failed: ${failedFixes.map((d) => d.result).join('; ')}`,
              hint: 'see `berth operation show` for each step; fix the cause and run `berth reconcile` again',
            },
          }
        : {}),
    });
    logger.info({ operationId: operation.id, ...counts }, 'reconcile finished');
  }
  return { dryRun, operationId: operation?.id ?? null, differences, unchecked, counts };
}

/** The journal step of a fix: its action, or `finish_detach` for a stuck or failed attachment. */
function stepNameOf(difference: ReconcileDifference): string {
  return difference.kind === 'attachment_stuck' || difference.kind === 'attachment_error' ? 'finish_detach' : difference.fix;
}

function countOf(differences: readonly ReconcileDifference[]): ReconcileReport['counts'] {
  return {
    found: differences.length,
    applied: differences.filter((d) => d.state === 'applied').length,
    failed: differences.filter((d) => d.state === 'failed').length,
    skipped: differences.filter((d) => d.state === 'skipped').length,
  };
}

/** Apply one fix, after checking (under the volume lock) that it is still needed; resolves with what it did. */
async function fixOf(deps: ReconcileDeps, finding: Finding): Promise<string> {
  const { store, catalog, config } = deps;
  const signal = AbortSignal.timeout(config.operationTimeoutMs);
  const volumeId = finding.kind === 'export_without_attachment' ? finding.export.volumeId : finding.volume.id;
  const fresh = await freshVolume(store, volumeId);
  if (!fresh) throw new Skip('the volume was deleted meanwhile');
  if (fresh.busy) throw new Skip(BUSY);
  const host = await deps.localHost();

  switch (finding.kind) {
    case 'export_without_attachment': {
      if (fresh.attachments.some((a) => accountsForExport(a, finding.export.initiator))) throw new Skip('an attachment accounts for it now');
      const connector = await connectorFor(deps, finding.export.initiator);
      await catalog.backend(finding.backend).terminateConnection(backendVolume(fresh.volume), connector, signal);
      return `export to ${finding.export.initiator ?? 'any host'} removed`;
    }
    case 'device_without_attachment': {
      const { record, connected } = finding;
      if (fresh.attachments.some((a) => a.hostId === host.id && a.device !== null)) throw new Skip('an attachment uses the volume on this host now');
      if (record && !(await store.devices.get(host.id, record.volumeId))) throw new Skip('the record is gone');
      // The source is in connection_info terms: it is the connection the device was made from, minus secrets.
      const data: Record<string, unknown> = { ...(connected?.source ?? {}) };
      delete data.deleted;
      const connection = record?.connectionInfo ?? ({ driver_volume_type: finding.protocol, data } as ConnectionInfo);
      const device = record?.device ?? connected?.device;
      // Under the volume's device lease, identity-checked, and not forced: a device something holds
      // open (someone's mount of a volume file) is left alone, the fix fails naming the holder.
      const outcome = await releaseShared(deps, {
        steps: await deps.hostSteps(host.id),
        hostId: host.id,
        volume: fresh.volume,
        transport: finding.transport,
        connection,
        ...(device ? { device } : {}),
        force: false,
        signal,
      });
      if (connected && !outcome.identityMismatch) await unpublishOrphan(deps, fresh.volume, connected, host);
      return outcome.identityMismatch || !connected ? `${device?.path ?? 'the device'} was already gone${record ? '; record removed' : ''}` : `${connected.device.path} disconnected`;
    }
    case 'attachment_device_gone':
      return reconnect(deps, finding.attachment.id, fresh.volume, signal);
    case 'attachment_stuck':
    case 'attachment_error':
      return finishDetach(deps, finding.attachment.id, fresh.volume);
    case 'volume_status_mismatch':
      return store.transaction(async (tx) => {
        const volume = await tx.volumes.require(volumeId);
        const expected = recomputeVolumeStatus(live(await tx.attachments.list({ volumeId })));
        if (expected === volume.status) throw new Skip(`it is ${expected} now`);
        const path = volumeRepairPath(volume.status, expected);
        if (!path) {
          throw new BerthError('INVALID_STATE', `no transition leads a volume from ${volume.status} to ${expected}`, { details: { volumeId, from: volume.status, to: expected } });
        }
        let from = volume.status;
        for (const to of path) {
          await tx.volumes.transition(volumeId, [from], to);
          from = to;
        }
        return `${volume.status} → ${expected}`;
      });
  }
}

/**
 * Ask the consumer to take down what it published for an orphaned device. No attachment names the
 * server any more, so the consumer gets the volume's id and the device only (the host consumer
 * removes `/dev/berth/<volume-id>` when, and only when, it still leads to that device: a loop
 * number is reused for the next file attached). Best effort: the device is gone either way.
 */
async function unpublishOrphan(deps: ReconcileDeps, volume: Volume, connected: ConnectedDevice, host: Host): Promise<void> {
  const now = new Date().toISOString();
  const server: Server = { id: host.id, name: 'reconcile', projectId: volume.projectId, hostId: host.id, createdAt: now, updatedAt: now };
  const orphan: Attachment = {
    id: volume.id,
    volumeId: volume.id,
    serverId: server.id,
    hostId: host.id,
    status: 'detached',
    mode: 'rw',
    transport: null,
    connector: null,
    connectionInfo: null,
    device: connected.device,
    publishedPath: null,
    timings: {},
    error: null,
    createdAt: now,
    updatedAt: now,
  };
  try {
    await deps.consumer().unpublish(server, orphan);
  } catch (error) {
    deps.logger.warn({ volumeId: volume.id, device: connected.device.path, err: toBerthError(error).message }, 'reconcile: could not unpublish an orphaned device');
  }
}

/** The connector an export was made for: the stored one of the host with that initiator, else a minimal one. */
async function connectorFor(deps: ReconcileDeps, initiator: string | undefined): Promise<Connector> {
  if (initiator === undefined) return deps.baseConnector();
  for (const host of await deps.store.hosts.list()) {
    if (host.connector && (host.connector.initiator === initiator || host.connector.host === initiator)) return host.connector;
  }
  const base = deps.baseConnector();
  return /^(iqn|eui|naa)\./.test(initiator) ? { ...base, initiator } : { ...base, host: initiator };
}

/**
 * Connect an attached volume whose device is gone again, as a reboot does in Nova: export it
 * again (the stored connection_info has no secrets), connect with the attachment's transport
 * (shared and recorded like any attach: every attachment of the volume on this host that recorded
 * the lost device gets the new one), publish, record the device. When any of it fails the
 * attachment becomes `error_detaching` with the reason (the volume `error`), and its stale links
 * are removed, so nobody uses a device that may now be another volume's; `berth detach --force`
 * or the next `berth reconcile` finishes it.
 */
async function reconnect(deps: ReconcileDeps, attachmentId: string, volume: Volume, signal: AbortSignal): Promise<string> {
  const { store, catalog } = deps;
  const attachment = await store.attachments.get(attachmentId);
  if (attachment?.status !== 'attached') throw new Skip(`the attachment is ${attachment?.status ?? 'deleted'} now`);
  const transportName = attachment.transport;
  if (!transportName) throw new Skip('the attachment has no transport');
  // Refused before anything is touched when the transport is not installed here.
  const transport = catalog.transport(transportName).name;
  const server = await store.servers.require(attachment.serverId);
  const steps = await deps.hostSteps(attachment.hostId);
  const consumer = deps.consumer();
  const lost = attachment.device;
  try {
    const connector = attachment.connector ?? deps.baseConnector();
    const exported = await catalog.backend(volume.backend).initializeConnection(backendVolume(volume), connector, signal);
    const connection = withAccessMode(exported, attachment.mode);
    await store.attachments.update(attachment.id, { device: null, connectionInfo: redactConnectionInfo(connection) });
    // The others that recorded the lost device let go of it too, so the device is connected anew.
    const stale = (await store.attachments.list({ volumeId: volume.id, hostId: attachment.hostId })).filter(
      (a) => a.id !== attachment.id && a.status === 'attached' && a.device !== null && lost !== null && sameDevice(a.device, lost),
    );
    for (const other of stale) await store.attachments.update(other.id, { device: null });
    await store.devices.delete(attachment.hostId, volume.id);
    const connected = await connectShared(deps, { steps, attachment: { ...attachment, device: null }, volume, transport, connection, connector, signal });
    for (const other of [connected.attachment, ...stale]) {
      const current = other.id === attachment.id ? connected.attachment : await store.attachments.update(other.id, { device: connected.device });
      const otherServer = other.id === attachment.id ? server : await store.servers.require(other.serverId);
      const path = await publishShared(deps, { steps, consumer, server: otherServer, attachment: current, volume, device: connected.device, signal });
      await store.attachments.update(other.id, { publishedPath: path, error: null });
    }
    return `reconnected at ${connected.device.path}${stale.length > 0 ? ` (with ${stale.length} other attachment(s) sharing it)` : ''}`;
  } catch (error) {
    const failure = toBerthError(error);
    await consumer.unpublish(server, attachment).catch(() => undefined);
    await transitionAttachment(store, attachment.id, ['attached'], 'error_detaching', { error: `its device was gone and reconnecting failed: ${failure.message}` }).catch(() => undefined);
    throw new BerthError(failure.code, `reconnecting failed, the attachment is now error_detaching: ${failure.message}`, {
      hint: `finish it with \`berth detach ${volume.name} --force\` (or \`berth reconcile\` again)`,
      cause: failure,
    });
  }
}

/**
 * Finish an attachment an interrupted operation left (stuck in a transitional state) or a failed
 * one left in an error state, as `berth detach --force` does: a journalled detach operation that
 * goes on through host errors and ends by deleting the attachment, or leaves it
 * `error_detaching` with every error it met.
 */
async function finishDetach(deps: ReconcileDeps, attachmentId: string, volume: Volume): Promise<string> {
  const { store } = deps;
  let attachment = await store.attachments.get(attachmentId);
  if (!attachment) throw new Skip('the attachment is gone now');
  const into = attachment.status === 'detaching' ? 'error_detaching' : attachment.status === 'reserved' || attachment.status === 'attaching' ? 'error_attaching' : undefined;
  if (into) {
    attachment = (await transitionAttachment(store, attachment.id, [attachment.status], into, { error: `left ${attachment.status} by an interrupted operation; reconcile finished it` })).attachment;
  }
  const server = await store.servers.require(attachment.serverId);
  const operation = await store.operations.create({
    kind: 'detach',
    volumeId: volume.id,
    serverId: server.id,
    attachmentId: attachment.id,
    hostId: attachment.hostId,
    owner: deps.owner,
    deadlineAt: new Date(Date.now() + deps.config.operationTimeoutMs).toISOString(),
  });
  const ctx: PipelineContext = {
    operationId: operation.id,
    volume,
    server,
    consumer: deps.consumer(),
    backend: deps.catalog.backend(volume.backend),
    attachment,
    force: true,
    forcedErrors: [],
  };
  const outcome = await deps.runner.run(detachSteps(deps), ctx, {
    operationId: operation.id,
    signal: AbortSignal.timeout(deps.config.operationTimeoutMs),
    undoTimeoutMs: deps.config.undoTimeoutMs,
    logger: deps.logger.child({ operationId: operation.id, reconcile: true }),
    pipeline: 'detach',
  });
  if (outcome.ok) {
    await store.operations.finish(operation.id, { state: 'succeeded', result: { timings: outcome.timings, reconcile: true } });
    return `detached (operation ${operation.id})`;
  }
  if (outcome.forward) await markDetachFailed(deps, ctx, outcome.error).catch(() => undefined);
  await store.operations
    .finish(operation.id, { state: outcome.rolledBack ? 'rolled_back' : 'failed', error: summarize(outcome.error) })
    .catch(() => undefined);
  throw new BerthError(outcome.error.code, `finishing the detach failed (operation ${operation.id}): ${outcome.error.message}`, {
    hint: `${outcome.error.hint ? `${outcome.error.hint}; then ` : ''}run \`berth reconcile\` again`,
    cause: outcome.error,
  });
}
