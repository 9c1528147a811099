import type { Device } from '../connection.js';
import type { GuestDisk } from '../contracts/consumer.js';
import type { ConnectedDevice } from '../contracts/transport-driver.js';
import type { BackendExport } from '../contracts/volume-backend.js';
import { sameDevice, storageGoneHint, storageGoneText } from '../device-identity.js';
import { guestKey } from '../hypervisor.js';
import type { Attachment, HostDevice, Operation, Server, Volume, VolumeStatus } from '../model.js';
import { hostRootMismatch, hostRootSkip } from '../pipeline/host-root.js';
import type { FixState, ReconcileDifference } from '../reports.js';
import { recomputeVolumeStatus, VOLUME_TRANSITIONS } from '../transitions.js';

// Reconcile's rules, pure: what differs between the store and what the backends and a host hold,
// and how each difference reads in the report. No I/O here (facts.ts reads, fixes.ts acts).

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

/**
 * Whether a connected device's `source` is what a connection_info's `data` names: they share at
 * least one of the transport's identifying keys (`TransportDriver.sourceKeys`: `device_path` for
 * loop; `target_iqn`, `target_lun` for iSCSI) and agree on every one they share. A key that is a
 * way to the volume (a portal: one LUN is reachable through several) is not one of them. With no
 * keys nothing matches: a transport that cannot say which volume a device is never claims one.
 */
export function sourceMatches(
  source: Readonly<Record<string, unknown>>,
  data: Readonly<Record<string, unknown>>,
  keys: readonly string[],
): boolean {
  let shared = 0;
  for (const key of keys) {
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
  /** The source keys that name a volume (`TransportDriver.sourceKeys`; empty: it cannot tell). */
  sourceKeys: readonly string[];
  /** Whether the transport can put a device back on a live path (`TransportDriver.repairPaths`). */
  repairsPaths?: boolean;
  devices: ConnectedDevice[];
}

/** The disks one running guest of this host has, as its consumer lists them (`Consumer.guestDisks`). */
export interface GuestListing {
  server: Server;
  /** The consumer that lists and plugs the server's disks (`qemu`, `libvirt`). */
  consumer: string;
  disks: GuestDisk[];
  /** Which guest it is (`localGuestKey`: a QMP socket's symlinks resolved, on this host); else `guestKey`'s spelling. */
  key?: string;
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
  /**
   * The host root each transport runs on in this berth (the reconciled host is this one; absent
   * for a host's agent, whose roots are its own): an attachment recorded on another root is left
   * alone, since fixing it here would act on the wrong kernel.
   */
  transportRoots?: Readonly<Record<string, string>>;
  /**
   * The running guests of this host's servers whose consumer could list them (a guest not
   * running, or not listed, is absent: nothing is concluded about it).
   */
  guests?: GuestListing[];
  /**
   * What is wrong with what the consumers published for this host's attached attachments, by
   * attachment id (`Consumer.checkPublication`); absent or missing an id: nothing found wrong.
   */
  publications?: ReadonlyMap<string, string>;
  /** Volumes whose backend says their storage is gone (`VolumeBackend.missingStorage`), by id. */
  missingStorage?: ReadonlySet<string>;
  /** Volumes whose backend says their storage is smaller than the volume (`VolumeBackend.shortStorage`): id → its size now. */
  shortStorage?: ReadonlyMap<string, number>;
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
  | {
      kind: 'attachment_path_failed';
      attachment: Attachment;
      volume: Volume;
      transport: string;
      /** The attachment's device as its transport lists it now, with its paths' states. */
      listed: ConnectedDevice;
      skip?: string;
    }
  | {
      kind: 'attachment_storage_gone';
      attachment: Attachment;
      volume: Volume;
      /** The attachment's device as its transport lists it now, with `storageGone` set. */
      listed: ConnectedDevice & { storageGone: NonNullable<ConnectedDevice['storageGone']> };
      /** Always set: nothing is fixed automatically (the hint says what to do). */
      skip: string;
    }
  | { kind: 'attachment_stuck'; attachment: Attachment; volume: Volume; skip?: string }
  | { kind: 'attachment_error'; attachment: Attachment; volume: Volume; skip?: string }
  | { kind: 'guest_disk_without_attachment'; guest: GuestListing; disk: GuestDisk; volume: Volume; skip?: string }
  | { kind: 'attachment_missing_from_guest'; guest: GuestListing; attachment: Attachment; volume: Volume; skip?: string }
  | { kind: 'attachment_not_published'; attachment: Attachment; volume: Volume; problem: string; skip?: string }
  | {
      kind: 'volume_storage_missing';
      volume: Volume;
      /** Always set: nothing is fixed automatically (the storage is restored by its owner, or the volume deleted). */
      skip: string;
    }
  | {
      kind: 'volume_storage_short';
      volume: Volume;
      /** The size the storage has now, below `volume.sizeBytes`. */
      storageBytes: number;
      /** Always set: nothing is fixed automatically (the data past the cut is gone; its owner decides). */
      skip: string;
    }
  | { kind: 'volume_status_mismatch'; volume: Volume; expected: VolumeStatus; skip?: string };


/** Attachments that hold something on a backend or a host (a detached one holds nothing). */
export function live(attachments: readonly Attachment[]): Attachment[] {
  return attachments.filter((a) => a.status !== 'detached');
}


/** Whether `attachment` accounts for an export to `initiator` (the connector's initiator or host). */
export function accountsForExport(attachment: Attachment, initiator: string | undefined): boolean {
  const connector = attachment.connector;
  if (!connector) return false;
  return initiator === undefined || connector.initiator === initiator || connector.host === initiator;
}

/** Whether an attachment on this host accounts for a device whose backing thing is `source`. */
function accountsForDevice(attachment: Attachment, localHostId: string, source: Readonly<Record<string, unknown>>, keys: readonly string[]): boolean {
  return attachment.hostId === localHostId && attachment.connectionInfo !== null && sourceMatches(source, attachment.connectionInfo.data, keys);
}

/**
 * Whether `device`, in `listing`, over the storage `attachment` reaches, is a device of its own
 * beside the attachment's: the attachment is attached through that listing's transport to another
 * device that the listing shows too (when its own is not there, `device` is where it went:
 * `attachment_device_gone`), and `device` is not one of its paths (a multipath map's).
 */
function secondDevice(attachment: Attachment, listing: TransportListing, device: Device): boolean {
  const own = attachment.device;
  if (attachment.status !== 'attached' || attachment.transport !== listing.transport || own === null) return false;
  if (sameDevice(own, device) || !listing.devices.some((d) => sameDevice(d.device, own))) return false;
  return !(own.paths ?? []).some((p) => p.device !== undefined && (p.device === device.path || `/dev/${p.device}` === device.path));
}

/**
 * The berth volume a device's source is, if any: a volume whose `providerLocation` is the value of
 * one of the transport's source keys (the file, the target IQN), or whose attachment's
 * connection_info names the source. A device that is none of these (a loop device someone made
 * over their own file) is not berth's; with no keys, no device is.
 */
export function volumeOfSource(
  source: Readonly<Record<string, unknown>>,
  volumes: readonly Volume[],
  attachments: readonly Attachment[],
  keys: readonly string[],
): Volume | undefined {
  const named = keys.map((key) => source[key]).filter((value): value is string => typeof value === 'string');
  const byLocation = volumes.find((v) => v.providerLocation !== null && named.includes(v.providerLocation));
  if (byLocation) return byLocation;
  const attachment = attachments.find((a) => a.connectionInfo !== null && sourceMatches(source, a.connectionInfo.data, keys));
  return attachment ? volumes.find((v) => v.id === attachment.volumeId) : undefined;
}

function matchingDevices(listing: TransportListing | undefined, attachment: Attachment): ConnectedDevice[] {
  const data = attachment.connectionInfo?.data;
  if (!listing || !data) return [];
  return listing.devices.filter((d) => sourceMatches(d.source, data, listing.sourceKeys));
}

/** The paths of a listed device that are in use and do not answer (`state: 'failed'`). */
export function failedPaths(listed: ConnectedDevice): NonNullable<Device['paths']> {
  return (listed.device.paths ?? []).filter((path) => path.state === 'failed');
}

/** Why a failed path of a transport without `repairPaths` is reported and left alone. */
function pathNotRepairable(transport: string, volume: Volume): string {
  return `${transport} has no other path to move it to; the host's initiator logs in again by itself once the target answers (until then the device's I/O waits, and after the session's replacement timeout fails): check the target and the network to it; if the volume's target is gone for good, \`berth detach ${volume.name} --force\``;
}

/** Why an attachment of a transport that declares no source keys is never reconnected. */
export const CANNOT_TELL =
  'its transport cannot tell which volume a device is (it declares no sourceKeys): not reconnected; check the device by hand, or `berth detach --force` and attach again';

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
  const roots = facts.transportRoots;
  const elsewhereRoot = (attachment: Attachment): string | undefined => {
    const mismatch = roots ? hostRootMismatch(attachment, (t) => roots[t]) : undefined;
    return mismatch ? hostRootSkip(mismatch) : undefined;
  };
  // A ledger record says where its device was connected too (migration 0007): its attachment row may be gone.
  const elsewhereRecordRoot = (record: HostDevice, volume: Volume): string | undefined => {
    const mismatch = roots
      ? hostRootMismatch({ id: record.volumeId, transport: record.transport, hostRoot: record.hostRoot ?? null }, (t) => roots[t], `the device record of volume ${volume.name}`)
      : undefined;
    return mismatch ? hostRootSkip(mismatch) : undefined;
  };

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
        busy(volume.id) ?? elsewhereRecordRoot(record, volume) ?? (connected?.storageGone !== undefined ? orphanStorageGoneSkip(connected.device.path) : undefined),
      ),
    );
  }

  // Whole devices of a berth volume that no record and no attachment on this host names: left by a
  // cut-short connect, an older berth, or someone attaching the volume file by hand. (A device over
  // a part of a file is not even listed by the loop transport: berth never makes one.)
  const claimed = new Set<string>();
  for (const listing of facts.listings) {
    for (const connected of listing.devices) {
      const volume = volumeOfSource(connected.source, facts.volumes, facts.attachments, listing.sourceKeys);
      if (!volume) continue;
      if (records.some((r) => sameDevice(r.device, connected.device))) continue;
      const accounting = hostAttachments.filter((a) => accountsForDevice(a, facts.localHostId, connected.source, listing.sourceKeys));
      // An attachment of this source accounts for its device — but not for a second whole device
      // of the same transport over the same storage beside it (someone's `losetup` of an attached
      // volume's file: two devices writing one file through caches of their own, which reconcile
      // used to call "no differences" — explorer, 2026-12-08). That one is reported, left alone.
      if (accounting.some((a) => !secondDevice(a, listing, connected.device))) continue;
      const beside = accounting[0];
      // Two transports may list one device (a path under a multipath map): one fix is enough.
      const key = `${connected.device.path}\u0000${JSON.stringify(connected.source)}`;
      if (claimed.has(key)) continue;
      claimed.add(key);
      // No record of this host names it, but a live attachment on another host reaches the same
      // source: that host's agent may run on this machine (a controller that is a compute node
      // too, an agent registered under another name), and this is then its live device.
      const elsewhere = live(facts.attachments).find(
        (a) => a.hostId !== facts.localHostId && a.connectionInfo !== null && sourceMatches(connected.source, a.connectionInfo.data, listing.sourceKeys),
      );
      const otherHost = elsewhere
        ? `volume ${volume.name} is ${elsewhere.status} on another host (${elsewhere.hostId}) through this source, and no record of this host names the device: if that host's agent runs on this machine, it is that attachment's device — left alone (reconcile that host with \`berth reconcile --host\`, or check the device by hand)`
        : undefined;
      // Its storage gone, the device is the only copy of the data: its disconnect would lose it.
      const gone = connected.storageGone !== undefined ? orphanStorageGoneSkip(connected.device.path) : undefined;
      const second = beside?.device
        ? `a second device over the storage of volume ${volume.name}, which is attached through ${beside.device.path}: two devices write it through caches of their own (made outside berth?) — left alone: disconnect it by hand once nothing uses it (\`fuser -v ${connected.device.path}\`)`
        : undefined;
      findings.push(
        withSkip({ kind: 'device_without_attachment', transport: listing.transport, protocol: listing.protocol, connected, volume }, busy(volume.id) ?? second ?? otherHost ?? gone),
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
    const listing = after.get(attachment.transport)!;
    if (listing.sourceKeys.length === 0) {
      // It lists devices but cannot say whose: "gone" would be a guess, and a reconnect a loop.
      const recorded = attachment.device;
      if (recorded && listing.devices.some((d) => sameDevice(d.device, recorded))) continue;
      findings.push({ kind: 'attachment_device_gone', attachment, volume, found: undefined, skip: busy(volume.id) ?? elsewhereRoot(attachment) ?? CANNOT_TELL });
      continue;
    }
    const now = matchingDevices(listing, attachment);
    const then = matchingDevices(before.get(attachment.transport), attachment);
    const recorded = attachment.device;
    // Present: the very device recorded (its identity, when it has one) is listed for this volume.
    const present = recorded ? now.find((d) => sameDevice(d.device, recorded)) : undefined;
    if (present && failedPaths(present).length > 0) {
      // A transport that cannot move the device to another path (one path, the kernel's initiator
      // reconnecting by itself) has it reported, not repaired.
      const cannotRepair = listing.repairsPaths === true ? undefined : pathNotRepairable(attachment.transport, volume);
      findings.push(withSkip({ kind: 'attachment_path_failed', attachment, volume, transport: attachment.transport, listed: present }, busy(volume.id) ?? elsewhereRoot(attachment) ?? cannotRepair));
      continue;
    }
    // Its very device is there, but what backs it is gone (a volume file deleted or replaced behind
    // berth's back): the device holds the only copy of the data. Reported, never fixed here — a
    // reconnect would attach what is at the path now, a disconnect would lose the data.
    const gone = present?.storageGone;
    if (present && gone !== undefined) {
      findings.push({ kind: 'attachment_storage_gone', attachment, volume, listed: { ...present, storageGone: gone }, skip: storageGoneSkip(present.device.path, volume) });
      continue;
    }
    if (recorded && [...now, ...then].some((d) => sameDevice(d.device, recorded))) continue;
    const found = now[0] ?? then[0];
    findings.push(withSkip({ kind: 'attachment_device_gone', attachment, volume, found }, busy(volume.id) ?? elsewhereRoot(attachment)));
  }

  // Attachments an interrupted attach or detach left in a transitional or error state.
  for (const attachment of facts.attachments) {
    const volume = volumesById.get(attachment.volumeId);
    if (!volume) continue;
    const elsewhere = attachment.hostId !== facts.localHostId ? 'it is on another host: reconcile that one (`berth reconcile --host <name>`, or on that host)' : undefined;
    // Its fix is a forced detach: never of a device that holds the only copy of the data.
    const device = attachment.hostId === facts.localHostId && attachment.device ? listed(attachment.device) : undefined;
    const gone = device?.storageGone !== undefined ? storageGoneSkip(device.device.path, volume) : undefined;
    if (TRANSITIONAL.includes(attachment.status)) {
      // One made by an outside orchestrator (the three-phase API) is waiting for it: not stuck.
      if (!madeByPipeline(attachment, facts.operations ?? [])) continue;
      findings.push(withSkip({ kind: 'attachment_stuck', attachment, volume }, busy(volume.id) ?? elsewhere ?? elsewhereRoot(attachment) ?? gone));
    } else if (attachment.status === 'error_attaching' || attachment.status === 'error_detaching') {
      findings.push(withSkip({ kind: 'attachment_error', attachment, volume }, busy(volume.id) ?? elsewhere ?? elsewhereRoot(attachment) ?? gone));
    }
  }

  findings.push(...findGuestDifferences(facts, busy, findings));
  findings.push(...findPublicationDifferences(facts, busy, findings));
  if (facts.missingStorage) findings.push(...findMissingStorage(facts.volumes, facts.attachments, facts.busyVolumeIds, facts.missingStorage));
  if (facts.shortStorage) {
    // A file deleted or replaced under a device (a short new one) is the device findings' (storage
    // gone: the device holds the data), not a volume cut short.
    const gone = new Set(findings.flatMap((f) => (f.kind === 'attachment_storage_gone' ? [f.attachment.volumeId] : [])));
    for (const listing of [...facts.listings, ...(facts.listingsAfter ?? [])]) {
      for (const d of listing.devices) {
        if (d.storageGone === undefined) continue;
        const volume = volumeOfSource(d.source, facts.volumes, facts.attachments, listing.sourceKeys);
        if (volume) gone.add(volume.id);
      }
    }
    findings.push(...findShortStorage(facts.volumes.filter((v) => !gone.has(v.id)), facts.busyVolumeIds, facts.shortStorage));
  }
  findings.push(...findStatusMismatches(facts.volumes, facts.attachments, facts.busyVolumeIds));
  return findings;
}

/**
 * What the guests have against what the attachments say: a disk whose serial is a berth volume's
 * id that no live attachment of that volume to that server accounts for (a disk berth did not
 * make — any other serial — is never looked at), and an attached attachment whose guest has no
 * disk with its volume's serial. `earlier` are the findings so far: an attachment whose host
 * device is gone is reconnected and published again by its own fix.
 */
function findGuestDifferences(facts: ReconcileFacts, busy: (volumeId: string) => string | undefined, earlier: readonly Finding[]): Finding[] {
  const findings: Finding[] = [];
  const volumesById = new Map(facts.volumes.map((v) => [v.id, v]));
  const reconnected = new Set(earlier.flatMap((f) => (f.kind === 'attachment_device_gone' ? [f.attachment.id] : [])));
  // Servers that reach one guest (records older than the refusal of a second one) are one guest:
  // the attachments of any of them account for its disks, and it is looked at once.
  const serversOf = new Map<string, Set<string>>();
  for (const guest of facts.guests ?? []) {
    const key = guest.key ?? guestKey(guest.server.hypervisor) ?? guest.server.id;
    serversOf.set(key, (serversOf.get(key) ?? new Set()).add(guest.server.id));
  }
  const seen = new Set<string>();
  for (const guest of facts.guests ?? []) {
    const key = guest.key ?? guestKey(guest.server.hypervisor) ?? guest.server.id;
    if (seen.has(key)) continue;
    seen.add(key);
    const servers = serversOf.get(key) ?? new Set([guest.server.id]);
    const own = live(facts.attachments).filter((a) => servers.has(a.serverId));
    for (const disk of guest.disks) {
      const volume = volumesById.get(disk.serial);
      if (!volume) continue;
      // A disk someone else plugged with an attached volume's serial is not that attachment's:
      // it opens whatever it opens. It is reported (and unplugged) as any disk no attachment
      // accounts for; berth's own disk for the attachment is looked for below.
      if (disk.plugged !== false && own.some((a) => a.volumeId === volume.id)) continue;
      findings.push({ kind: 'guest_disk_without_attachment', guest, disk, volume, ...skipOf(busy(volume.id)) });
    }
    for (const attachment of own) {
      if (attachment.status !== 'attached' || attachment.hostId !== facts.localHostId) continue;
      if (guest.disks.some((d) => d.serial === attachment.volumeId && d.plugged !== false)) continue;
      const volume = volumesById.get(attachment.volumeId);
      if (!volume) continue;
      const skip =
        busy(volume.id) ??
        (reconnected.has(attachment.id) || attachment.device === null ? 'its host device is gone: the reconnect fix publishes it into the guest again' : undefined) ??
        unconfirmedDevice(facts, attachment);
      findings.push({ kind: 'attachment_missing_from_guest', guest, attachment, volume, ...skipOf(skip) });
    }
  }
  return findings;
}

/**
 * Attached attachments whose consumer found what it published for them missing or leading
 * elsewhere (a `/dev/berth` link removed or re-pointed behind berth's back): published again,
 * but only at a device the transport lists as the one recorded — a link is never pointed at a
 * name that may be another volume's now. Not listed when the device itself is gone (its
 * reconnect fix publishes it) or the attachment was made on another host root.
 */
function findPublicationDifferences(facts: ReconcileFacts, busy: (volumeId: string) => string | undefined, earlier: readonly Finding[]): Finding[] {
  const findings: Finding[] = [];
  if (!facts.publications || facts.publications.size === 0) return findings;
  const volumesById = new Map(facts.volumes.map((v) => [v.id, v]));
  const reconnected = new Set(earlier.flatMap((f) => (f.kind === 'attachment_device_gone' ? [f.attachment.id] : [])));
  const roots = facts.transportRoots;
  for (const attachment of live(facts.attachments)) {
    const problem = facts.publications.get(attachment.id);
    const volume = volumesById.get(attachment.volumeId);
    if (problem === undefined || !volume || attachment.status !== 'attached' || attachment.hostId !== facts.localHostId) continue;
    // Not a difference of its own: its device is gone (the reconnect fix publishes it again), or
    // it was made on another host root (`--simulate` or not), where its names lead elsewhere by
    // design and the device finding already says to run the command as it was made.
    if (reconnected.has(attachment.id) || attachment.device === null) continue;
    if (roots && hostRootMismatch(attachment, (t) => roots[t])) continue;
    findings.push({ kind: 'attachment_not_published', attachment, volume, problem, ...skipOf(busy(volume.id) ?? unconfirmedDevice(facts, attachment)) });
  }
  return findings;
}

/**
 * Why the replug fix must not plug an attachment's recorded host device into its guest: its
 * transport's listing does not show that very device (its identity, when recorded) — the name may
 * be another volume's now — or there is no listing to check it against (the transport cannot list,
 * or failed to). `undefined` when it is listed.
 */
function unconfirmedDevice(facts: ReconcileFacts, attachment: Attachment): string | undefined {
  const recorded = attachment.device;
  if (!recorded) return undefined;
  // By the volume's own source keys when the transport declares them: a record without identity
  // compares by path alone, and another volume's device may be listed at that path now.
  const listed = (listing: TransportListing | undefined): boolean =>
    listing !== undefined && (listing.sourceKeys.length > 0 ? matchingDevices(listing, attachment) : listing.devices).some((d) => sameDevice(d.device, recorded));
  const before = facts.listings.find((l) => l.transport === attachment.transport);
  const after = (facts.listingsAfter ?? facts.listings).find((l) => l.transport === attachment.transport);
  if (before === undefined || after === undefined) {
    return `its transport (${attachment.transport ?? 'unknown'}) could not list its devices, so the recorded ${recorded.path} cannot be checked before a guest gets it: not plugged in`;
  }
  if (!listed(after)) return `its recorded host device ${recorded.path} is not listed as connected now (the name may be another device's): not plugged in`;
  return undefined;
}

/**
 * Available volumes whose backend says their storage is gone: reported, never fixed (berth cannot
 * bring the data back, and dropping the record is the user's call). Volumes with attachments are
 * left to the attachment findings (`attachment_storage_gone`: a device may still hold the data);
 * one with a running operation is skipped as busy.
 */
export function findMissingStorage(volumes: readonly Volume[], attachments: readonly Attachment[], busyVolumeIds: ReadonlySet<string>, missing: ReadonlySet<string>): Finding[] {
  const findings: Finding[] = [];
  for (const volume of volumes) {
    if (!missing.has(volume.id) || volume.status !== 'available') continue;
    if (live(attachments.filter((a) => a.volumeId === volume.id)).length > 0) continue;
    const skip = busyVolumeIds.has(volume.id)
      ? 'an operation on this volume is running; run reconcile again when it has finished'
      : `not fixed automatically: berth cannot bring the data back — restore the volume's storage from a backup (${volume.providerLocation ?? `backend ${volume.backend}`}), or drop the volume with \`berth volume delete ${volume.name}\``;
    findings.push({ kind: 'volume_storage_missing', volume, skip });
  }
  return findings;
}

/**
 * Volumes whose storage is smaller than the volume (`shortStorage`: a file cut short behind
 * berth's back), attached or not: an attach refuses such a volume (exit 16), an attached one reads
 * zeros past the cut — reconcile said "No differences" either way (an explorer's `truncate`).
 */
export function findShortStorage(volumes: readonly Volume[], busyVolumeIds: ReadonlySet<string>, short: ReadonlyMap<string, number>): Finding[] {
  const findings: Finding[] = [];
  for (const volume of volumes) {
    const storageBytes = short.get(volume.id);
    if (storageBytes === undefined || storageBytes >= volume.sizeBytes) continue;
    const skip = busyVolumeIds.has(volume.id)
      ? 'an operation on this volume is running; run reconcile again when it has finished'
      : `not fixed automatically: what was past ${storageBytes} bytes is gone — restore the volume's storage from a backup (${volume.providerLocation ?? `backend ${volume.backend}`}), or, to keep what is left, grow it back to the volume's ${volume.sizeBytes} bytes (for a file: \`truncate -s ${volume.sizeBytes} <file>\`; the rest reads as zeros), or \`berth volume delete ${volume.name}\``;
    findings.push({ kind: 'volume_storage_short', volume, storageBytes, skip });
  }
  return findings;
}

/** Why a device whose storage is gone is left alone, and what to do (`attachment_storage_gone`). */
function storageGoneSkip(device: string, volume: Volume): string {
  return `not fixed automatically: ${storageGoneHint(device, volume.name)}`;
}

/**
 * The same for a device no attachment uses: `berth detach` has nothing to detach, so the device
 * is let go of by hand once the data is off it (`reconcile` then drops berth's record of it).
 */
function orphanStorageGoneSkip(device: string): string {
  return `not fixed automatically: ${device} holds the only copy of what was written since its volume file went; copy it off first (dd if=${device} of=<somewhere> bs=1M), then detach the device by hand (\`losetup --detach ${device}\` for a loop device) and run \`berth reconcile\` to drop berth's record of it`;
}

function skipOf(skip: string | undefined): { skip?: string } {
  return skip === undefined ? {} : { skip };
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
    case 'attachment_storage_gone': {
      const { attachment, volume, listed } = finding;
      const storage = typeof listed.source.device_path === 'string' ? listed.source.device_path : 'its storage';
      return {
        kind: finding.kind,
        resource: `attachment ${attachment.id} (volume ${volume.name}) at ${listed.device.path}`,
        detail: `attachment ${attachment.id} of volume ${volume.name} is attached at ${listed.device.path}, but ${storageGoneText(storage, listed.storageGone)}: the device holds the only copy of the volume's data`,
        fix: 'none',
        fixDetail: `none (a reconnect would attach what is at the path now, a disconnect would lose the data): copy the data off ${listed.device.path}, then \`berth detach ${volume.name} --force\``,
        ...base(volume.id, attachment.id),
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
    case 'attachment_path_failed': {
      const failed = failedPaths(finding.listed).map((p) => `${p.portal ?? p.device ?? '?'}${p.detail === undefined ? '' : `: ${p.detail}`}`);
      const others = (finding.listed.device.paths ?? []).filter((p) => p.state === 'standby').length;
      return {
        kind: finding.kind,
        resource: `attachment ${finding.attachment.id} (volume ${finding.volume.name}) at ${finding.listed.device.path}`,
        detail: `the path in use of volume ${finding.volume.name}'s device ${finding.listed.device.path} does not answer (${failed.join(', ')}); ${others} other path(s) known`,
        fix: 'repair_paths',
        fixDetail: `move it to a live path (${finding.transport} repairPaths, on the device's host); I/O waiting on the dead path goes on there`,
        ...base(finding.volume.id, finding.attachment.id),
      };
    }
    case 'guest_disk_without_attachment': {
      const { guest, disk, volume } = finding;
      const where = `${disk.id}${disk.guestDevice ? ` (${disk.guestDevice})` : ''}`;
      return {
        kind: finding.kind,
        resource: `disk ${where} of server ${guest.server.name}`,
        detail: `the guest of server ${guest.server.name} has a disk with the serial of volume ${volume.name} (${where}), and no attachment of that volume to that server accounts for it`,
        fix: 'unplug',
        fixDetail: `unplug it from the guest (${guest.consumer}: waits until the guest lets go; the host side is left to the other findings)`,
        ...base(volume.id, null),
      };
    }
    case 'attachment_missing_from_guest': {
      const { guest, attachment, volume } = finding;
      return {
        kind: finding.kind,
        resource: `attachment ${attachment.id} (volume ${volume.name})`,
        detail: `attachment ${attachment.id} of volume ${volume.name} is attached to server ${guest.server.name}, whose running guest has no disk with its serial`,
        // The host side is intact and the record says the guest should have it: plug it back, as
        // a hard reboot does in Nova. Marking it error instead would have the next reconcile
        // force-detach a volume its user still wants.
        fix: 'replug',
        fixDetail: `plug it into the guest again (${guest.consumer} publish of the recorded host device); if that fails the attachment is left attached, the fix fails naming why`,
        ...base(volume.id, attachment.id),
      };
    }
    case 'attachment_not_published': {
      const { attachment, volume } = finding;
      return {
        kind: finding.kind,
        resource: `attachment ${attachment.id} (volume ${volume.name})`,
        detail: `attachment ${attachment.id} of volume ${volume.name} is attached at ${attachment.device?.path ?? 'its device'}, but ${finding.problem}`,
        fix: 'republish',
        fixDetail: `publish it again (its consumer's names for the recorded device ${attachment.device?.path ?? ''}, checked again first); the device is not touched`,
        ...base(volume.id, attachment.id),
      };
    }
    case 'volume_storage_missing': {
      const { volume } = finding;
      const where = volume.providerLocation ?? 'its storage';
      return {
        kind: finding.kind,
        resource: `volume ${volume.name}`,
        detail: `volume ${volume.name} is available, but backend ${volume.backend} no longer has its storage (${where}): an attach or extend would fail`,
        fix: 'none',
        fixDetail: `none: restore ${where} from a backup, or \`berth volume delete ${volume.name}\` to drop the record`,
        ...base(volume.id, null),
      };
    }
    case 'volume_storage_short': {
      const { volume, storageBytes } = finding;
      const where = volume.providerLocation ?? 'its storage';
      return {
        kind: finding.kind,
        resource: `volume ${volume.name}`,
        detail: `volume ${volume.name} is ${volume.status} and ${volume.sizeBytes} bytes, but backend ${volume.backend} has only ${storageBytes} bytes of its storage (${where}): ${volume.status === 'available' ? 'an attach would be refused' : 'its device reads zeros past the cut'}`,
        fix: 'none',
        fixDetail: `none: restore ${where} from a backup, grow it back to ${volume.sizeBytes} bytes, or \`berth volume delete ${volume.name}\``,
        ...base(volume.id, null),
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

