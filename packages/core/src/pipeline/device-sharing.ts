import { redactConnectionInfo, type ConnectionInfo, type Connector, type Device } from '../connection.js';
import type { Consumer, Publication } from '../contracts/consumer.js';
import { sameDevice } from '../device-identity.js';
import { consumerNameFor } from '../hypervisor.js';
import { BerthError, toBerthError } from '../errors.js';
import type { HostSteps } from '../host-steps/host-steps.js';
import { deviceLeaseKey, exportLeaseKey, withLease, type HeldLease, type LeaseOptions } from '../lease.js';
import type { Attachment, Server, Volume } from '../model.js';
import type { Store } from '../store.js';
import type { PipelineDeps } from './context.js';

// The host-side share and reference count: attachments of one volume on one host share one
// connected device (os-brick's and Kubernetes' lesson: log out or detach only when the last user
// goes). The count is read from the store (attachments of the volume on the host with a device
// recorded), and every decision on it runs under a lease in the store, because two `berth`
// processes do not see each other's in-process locks.

/** A write to a row that is gone, taken as done; any other error passes. */
function ignoreNotFound(error: unknown): undefined {
  if (BerthError.is(error) && error.code === 'NOT_FOUND') return undefined;
  throw error;
}

/** Attachment statuses that hold a device berth connected (a detached one holds nothing). */
function live(attachment: Attachment): boolean {
  return attachment.status !== 'detached';
}

/** Other attachments of `volumeId` on `hostId` that have a device recorded: the device's other users. */
export async function deviceSharers(store: Store, hostId: string, volumeId: string, exceptId?: string): Promise<Attachment[]> {
  const attachments = await store.attachments.list({ volumeId, hostId });
  return attachments.filter((a) => a.id !== exceptId && live(a) && a.device !== null);
}

/**
 * Devices on this host that belong to other volumes (their attachments' and berth's records): a
 * disconnect must never touch them, even one that has to find what a cut-short connect left. One
 * store read of the devices only: with N attachments on the host, N detaches read N devices each,
 * not every attachment row and record.
 */
export function devicesInUse(store: Store, hostId: string, volumeId: string): Promise<Device[]> {
  return store.attachments.devicesOfOtherVolumes(hostId, volumeId);
}

/** How this process takes a lease of the pipelines' (`what`: for messages). */
export function leaseOptions(deps: Pick<PipelineDeps, 'owner' | 'hostname' | 'replicaLeases' | 'config' | 'logger'>, signal: AbortSignal, what: string): LeaseOptions {
  return {
    owner: deps.owner,
    hostname: deps.hostname,
    ...(deps.replicaLeases
      ? { ttlMs: deps.replicaLeases.ttlMs, renewEveryMs: deps.replicaLeases.renewEveryMs }
      : { ttlMs: deps.config.operationTimeoutMs + deps.config.undoTimeoutMs }),
    signal,
    what,
    logger: deps.logger,
  };
}

/** Run `fn` holding the lease of `volume`'s device on `hostId`. */
export function withDeviceLease<T>(deps: PipelineDeps, hostId: string, volume: Volume, signal: AbortSignal, fn: (lease: HeldLease) => Promise<T>): Promise<T> {
  return withLease(deps.store, deviceLeaseKey(hostId, volume.id), leaseOptions(deps, signal, `volume ${volume.name} on this host`), fn);
}

/**
 * Run `fn` holding the lease of `volume`'s exports: the export's users are decided under it
 * (`exportSharers`), so an attach's export and its record never fall between a detach's count and
 * its removal. A write that records an export confirms the lease in its transaction
 * (`HeldLease.confirm`). Never taken with a device lease held (nor the other way round).
 */
export function withExportLease<T>(deps: PipelineDeps, volume: Volume, signal: AbortSignal, fn: (lease: HeldLease) => Promise<T>): Promise<T> {
  return withLease(deps.store, exportLeaseKey(volume.id), leaseOptions(deps, signal, `the exports of volume ${volume.name}`), fn);
}

/**
 * Remove `volume`'s export to the host `connector` names unless another attachment there uses
 * it, deciding and removing under the export's lease. Returns how many others use it (0: removed).
 */
export function terminateUnshared(
  deps: PipelineDeps,
  volume: Volume,
  connector: Connector,
  exceptId: string | undefined,
  signal: AbortSignal,
  terminate: () => Promise<void>,
): Promise<number> {
  return withExportLease(deps, volume, signal, async () => {
    const sharing = await exportSharers(deps.store, volume.id, connector, exceptId);
    if (sharing.length === 0) await terminate();
    return sharing.length;
  });
}

/** What `connectShared` connects. */
export interface ConnectRequest {
  /** Who runs the transport's connect on the attachment's host. */
  steps: HostSteps;
  attachment: Attachment;
  volume: Volume;
  /** The transport's name. */
  transport: string;
  connection: ConnectionInfo;
  connector?: Connector;
  operationId?: string;
  signal: AbortSignal;
  /** Called with the device as soon as the transport returned it (before it is recorded). */
  onDevice?(device: Device): void;
  /**
   * Record the device deferred-durable (`Store.deferDurability`): the caller's next write is a
   * durable journal row, before anything acts on the record (the attach's `connect` step, whose
   * boundary to `publish` is durable). A power cut before it loses the record only as a crash
   * mid-connect would, which the journal's durable row that started `connect` already covers.
   */
  deferRecord?: boolean;
}

/**
 * Connect `attachment`'s volume on its host, sharing the device other attachments of the volume
 * there already use: under the lease, the transport's `connect` run by the host's executor
 * (`connect` host step; idempotent: an already connected
 * volume gives back its device), then the device is recorded on the attachment and in berth's
 * ledger in one transaction. A read-only attachment never shares a read-write device, nor the
 * other way round, and two transports never share one volume on one host: both are refused
 * (CONFLICT) before anything is touched.
 */
export async function connectShared(deps: PipelineDeps, request: ConnectRequest): Promise<{ device: Device; attachment: Attachment; sharers: number }> {
  const { store, logger } = deps;
  const { attachment, volume, transport, connection } = request;
  return withDeviceLease(deps, attachment.hostId, volume, request.signal, async (lease) => {
    const sharers = await deviceSharers(store, attachment.hostId, volume.id, attachment.id);
    const other = sharers[0];
    if (other && other.mode !== attachment.mode) {
      throw new BerthError(
        'CONFLICT',
        `volume ${volume.name} is attached ${other.mode === 'ro' ? 'read-only' : 'read-write'} on this host (attachment ${other.id}); a ${attachment.mode === 'ro' ? 'read-only' : 'read-write'} attachment would share that device`,
        {
          hint: `attach it with --mode ${other.mode}, or detach the other one first (berth detach ${volume.name} --server <server>)`,
          details: { reason: 'mode-mismatch', volumeId: volume.id, attachmentId: other.id, untouched: true },
        },
      );
    }
    if (other?.transport && other.transport !== transport) {
      throw new BerthError('CONFLICT', `volume ${volume.name} is connected on this host by transport ${other.transport}, not ${transport}`, {
        hint: `attach it the same way as attachment ${other.id} (same --multipath setting), or detach that one first`,
        details: { reason: 'transport-mismatch', volumeId: volume.id, attachmentId: other.id, untouched: true },
      });
    }
    const { device, hostRoot } = await request.steps.run(
      'connect',
      { transport, connection, volumeId: volume.id, ...(request.connector ? { connector: request.connector } : {}) },
      { ...(request.operationId === undefined ? {} : { operationId: request.operationId }), signal: request.signal },
    );
    // The device another volume's records hold (same identity, or same path where either has no
    // identity): a transport that answers with it would give this volume's attachment the other
    // volume's data — a third-party plugin did, and both volumes' links led to one loop device.
    // Refused before it is recorded or published; the undo's disconnect gets no device (it is
    // not this volume's) and the other volumes' devices as `inUse`.
    const foreign = (await devicesInUse(store, attachment.hostId, volume.id)).find((recorded) => sameDevice(recorded, device));
    if (foreign) {
      throw new BerthError('DRIVER_ERROR', `transport ${transport} connected volume ${volume.name} as ${device.path}, which is the device of another volume on this host; refused (it would give this volume's attachment that volume's data)`, {
        hint: `either the ${transport} transport returned a device it did not make for this volume (report it to its author), or the other volume's device went behind berth's back and its record is stale: \`berth reconcile\` sorts that out, then attach again`,
        details: { volumeId: volume.id, device: device.path, transport, reason: 'device-of-another-volume' },
      });
    }
    request.onDevice?.(device);
    if (other?.device && !sameDevice(other.device, device)) {
      // The device the others recorded is gone (removed behind berth's back) and this is a new
      // one; reconcile reconnects them to it.
      logger.warn({ volumeId: volume.id, was: other.device.path, now: device.path }, 'the shared device was replaced');
    }
    // Only when this connect made the volume's device on the host: a device others already
    // share had its names checked when it was made (and an agent older than `unpublish_orphan`'s
    // `keep` would take the sharers' links with the stale ones).
    if (sharers.length === 0) await dropStaleNames(deps, request, device);
    // A device others share that took names since they recorded theirs (a multipath connect adds
    // a path an earlier attach missed; a degraded device rebuilt as a map; a replaced device): the
    // new names only — the sharers' links lead to names they recorded, which are not checked.
    else await dropStaleNames(deps, request, device, new Set(sharers.flatMap((s) => (s.device ? [...takenNames(s.device)] : []))));
    // The device's records and the lease's release: one commit.
    const updated = await lease.releaseWith(async (tx) => {
      await tx.devices.put({
        hostId: attachment.hostId,
        volumeId: volume.id,
        transport,
        connectionInfo: redactConnectionInfo(connection),
        device,
        operationId: request.operationId ?? null,
        hostRoot: hostRoot ?? null,
      });
      // Where the transport ran (this process's, or the host's agent's answer): a berth whose
      // transport runs on another root refuses to act on it.
      return tx.attachments.update(attachment.id, { device, hostRoot: hostRoot ?? null });
    }, { deferred: request.deferRecord === true });
    return { device, attachment: updated, sharers: sharers.length };
  });
}

/**
 * Another volume's records on this host naming `device`'s path — or, for a map over paths, one of
 * its paths' disks — as that volume's device: the disk they recorded went behind berth's back (a
 * `losetup --detach` by hand, a LUN removed on the array) and the kernel gave its name to this
 * volume's disk — so what was published for them
 * (`/dev/berth/<their ids>`) leads to this volume's data now. Those names go (the consumer's
 * `unpublish_orphan`, never a name of this volume or of an attachment that does not record the
 * path) before this volume's are made; `berth reconcile` reconnects the other attachments
 * (`attachment_device_gone`). Best effort: a failure is logged, the connect goes on. One cheap
 * read when nothing names the path (every attach): the devices of the other volumes on the host.
 */
async function dropStaleNames(deps: PipelineDeps, request: ConnectRequest, device: Device, already: ReadonlySet<string> = new Set()): Promise<void> {
  const { store, logger } = deps;
  const { attachment, volume } = request;
  const hostId = attachment.hostId;
  // The names this device took (but those it held `already`, when its sharers recorded it).
  const taken = new Set([...takenNames(device)].filter((name) => !already.has(name)));
  if (taken.size === 0) return;
  const stale = (recorded: Device | null | undefined): boolean => recorded !== null && recorded !== undefined && taken.has(recorded.path) && !sameDevice(recorded, device);
  if (!(await devicesInUse(store, hostId, volume.id)).some(stale)) return;
  const onHost = await store.attachments.list({ hostId });
  // A detach that disconnected the device (its record still names it until the detach ends) took
  // its names down before that, at its `unpublish`: nothing of it is left to drop.
  const detaching = new Set(onHost.filter((a) => a.status === 'detaching').map((a) => a.volumeId));
  const records = (await store.devices.list({ hostId })).filter((r) => r.volumeId !== volume.id && !detaching.has(r.volumeId) && stale(r.device));
  const lost = onHost.filter((a) => a.volumeId !== volume.id && a.status !== 'detaching' && stale(a.device));
  const lostNames = new Set([...lost.flatMap((a) => [a.id, a.volumeId]), ...records.map((r) => r.volumeId)]);
  const keep = [...new Set(onHost.flatMap((a) => [a.id, a.volumeId]))].filter((name) => !lostNames.has(name));
  // Per lost volume and recorded path, the device it recorded (its names lead to that path) and
  // the transport that made it: two of a volume's records may name two paths this device took.
  const lostDevices = new Map<string, { volumeId: string; device: Device; transport: string | null }>();
  const note = (volumeId: string, device: Device, transport: string | null): void => {
    const key = `${volumeId}\n${device.path}`;
    if (!lostDevices.has(key)) lostDevices.set(key, { volumeId, device, transport });
  };
  for (const a of lost) if (a.device) note(a.volumeId, a.device, a.transport);
  for (const r of records) if (r.device) note(r.volumeId, r.device, r.transport);
  for (const { volumeId, ...recorded } of lostDevices.values()) {
    logger.warn({ volumeId, device: recorded.device.path, now: volume.id }, "another volume's recorded device is gone and its name is this volume's disk now: removing the names published for it");
    try {
      // The consumer that published for it: its server's (a guest consumer for a VM), else the default.
      const server = await firstServerOf(store, lost.filter((a) => a.volumeId === volumeId));
      const consumer = server ? consumerNameFor(server, deps.config.consumer) : deps.config.consumer;
      const call = { ...(request.operationId === undefined ? {} : { operationId: request.operationId }), signal: request.signal };
      const transport = recorded.transport ?? request.transport;
      const { supported } = await request.steps.run('unpublish_orphan', { consumer, volumeId, device: recorded.device, transport, keep }, call);
      if (!supported) logger.warn({ volumeId, device: recorded.device.path }, 'the consumer cannot drop names without a record: they still lead to this device until `berth reconcile`');
    } catch (error) {
      logger.warn({ volumeId, device: recorded.device.path, err: toBerthError(error).message }, 'could not remove the names of a lost device');
    }
  }
}

/**
 * The names a device takes on its host: its node and, for a map over paths (dm-multipath), each
 * path's disk (`/dev/sdb` under `/dev/dm-0`: a link to it reaches the map's volume past the map).
 */
function takenNames(device: Device): Set<string> {
  return new Set([device.path, ...(device.paths ?? []).flatMap((p) => (p.device === undefined ? [] : [p.device]))]);
}

/** The server of the first of `attachments` whose server record is there. */
async function firstServerOf(store: Store, attachments: readonly Attachment[]): Promise<Server | undefined> {
  for (const attachment of attachments) {
    const server = await store.servers.get(attachment.serverId);
    if (server) return server;
  }
  return undefined;
}

/** What `releaseShared` releases. */
export interface ReleaseRequest {
  /** Who runs the transport's disconnect on the host. */
  steps: HostSteps;
  /** `release` (an attach's connect undone) or `disconnect` (a detach, reconcile); default `disconnect`. */
  step?: 'release' | 'disconnect';
  hostId: string;
  volume: Volume;
  /** The attachment letting go (undefined for a device no attachment references). */
  attachment?: Attachment;
  /** The transport's name. */
  transport: string;
  connection: ConnectionInfo;
  /** The device as recorded (undefined when a connect was cut short before it was). */
  device?: Device;
  force: boolean;
  signal: AbortSignal;
  operationId?: string;
  /**
   * Write the removal of the device's record deferred-durable: the caller's next write is a
   * durable journal row (the detach's `disconnect` step, whose boundary to `terminate` is
   * durable). Lost to a power cut, the record names a device already gone, and the journal's
   * durable row that started `disconnect` has recovery run it again (idempotent).
   */
  deferRecord?: boolean;
  /**
   * This attachment's unpublish kept the volume's own name (`/dev/berth/<volume-id>`) for another
   * attachment that used the device then (`stillShared`). If that one has let go since and this
   * is the device's last user, the name goes with the device (`dropVolumeName`): kept by both
   * sides of a race — an attach rolling back beside a detach of the same volume — it would lead
   * to whatever disk the kernel gives the freed name next.
   */
  volumeNameKept?: boolean;
}

/** What `releaseShared` did. */
export interface ReleaseOutcome {
  /** The transport disconnected the device (this was its last user). */
  disconnected: boolean;
  /** Other attachments still using the device (it was kept for them). */
  sharers: number;
  /** What was at the device's path was another device: it was not touched, and the device counts as gone. */
  identityMismatch: boolean;
}

/**
 * Let go of the device for `attachment`: under the lease, when other attachments of the volume on
 * this host still use it, only this attachment's claim is dropped (the reference count goes down);
 * when it was the last, the transport disconnects it — identity-checked, never touching the
 * devices other volumes use (`inUse`) — and berth's record of it is removed. A device whose path
 * now names another device (the kernel reused the name) is left alone and counts as gone.
 */
export async function releaseShared(deps: PipelineDeps, request: ReleaseRequest): Promise<ReleaseOutcome> {
  const { store } = deps;
  const { hostId, volume, attachment } = request;
  return withDeviceLease(deps, hostId, volume, request.signal, async (lease) => {
    const sharers = await deviceSharers(store, hostId, volume.id, attachment?.id);
    if (sharers.length > 0) {
      const claim = attachment?.device ? attachment : undefined;
      if (claim) await lease.releaseWith((tx) => tx.attachments.update(claim.id, { device: null }), { deferred: request.deferRecord === true });
      return { disconnected: false, sharers: sharers.length, identityMismatch: false };
    }
    const record = await store.devices.get(hostId, volume.id);
    const device = record?.device ?? request.device;
    if (request.volumeNameKept === true && device) await dropVolumeName(deps, request, device);
    const inUse = await devicesInUse(store, hostId, volume.id);
    const { identityMismatch } = await request.steps.run(
      request.step ?? 'disconnect',
      { transport: request.transport, connection: request.connection, ...(device ? { device } : {}), force: request.force, inUse, volumeId: volume.id },
      { ...(request.operationId === undefined ? {} : { operationId: request.operationId }), signal: request.signal, ...(request.step === 'release' ? { undo: true } : {}) },
    );
    // The device's records and the lease's release: one commit.
    await lease.releaseWith(
      async (tx) => {
        await tx.devices.delete(hostId, volume.id);
        // An attachment already gone has no claim to drop: its update's NOT_FOUND (a write that
        // matched nothing) is the answer a read before it would have given.
        if (attachment) await tx.attachments.update(attachment.id, { device: null }).catch(ignoreNotFound);
      },
      { deferred: request.deferRecord === true },
    );
    return { disconnected: true, sharers: 0, identityMismatch };
  });
}

/**
 * Remove the volume's own name when it still leads to `device`, which its last user is about to
 * disconnect (`ReleaseRequest.volumeNameKept`): the consumer's `unpublish_orphan`, keeping every
 * name a live record on the host holds but this volume's. Best effort: a failure is logged (the
 * name then waits for `berth reconcile`), the disconnect goes on.
 */
async function dropVolumeName(deps: PipelineDeps, request: ReleaseRequest, device: Device): Promise<void> {
  const { store, logger } = deps;
  const { hostId, volume } = request;
  try {
    const onHost = await store.attachments.list({ hostId });
    const keep = [...new Set(onHost.flatMap((a) => [a.id, a.volumeId]))].filter((name) => name !== volume.id);
    const server = request.attachment ? await store.servers.get(request.attachment.serverId) : undefined;
    const consumer = server ? consumerNameFor(server, deps.config.consumer) : deps.config.consumer;
    const call = { ...(request.operationId === undefined ? {} : { operationId: request.operationId }), signal: request.signal, ...(request.step === 'release' ? { undo: true } : {}) };
    await request.steps.run('unpublish_orphan', { consumer, volumeId: volume.id, device, transport: request.transport, keep }, call);
  } catch (error) {
    logger.warn({ volumeId: volume.id, device: device.path, err: toBerthError(error).message }, "could not remove the volume's name before disconnecting its last user's device");
  }
}

/** What `unpublishShared` takes down. */
export interface UnpublishRequest {
  /** Who runs the consumer's unpublish on the host. */
  steps: HostSteps;
  consumer: Consumer;
  server: Server;
  attachment: Attachment;
  volume: Volume;
  signal: AbortSignal;
  operationId?: string;
  /** Called from an undo (its deadline is `undoTimeoutMs`). */
  undo?: boolean;
}

/**
 * Unpublish one attachment, telling the consumer whether other attachments of the volume on this
 * host still use the device (then the volume's own name stays). Under the lease, so that an attach
 * publishing at the same moment is never undone by it.
 */
export async function unpublishShared(deps: PipelineDeps, request: UnpublishRequest): Promise<{ stillShared: boolean }> {
  const { attachment } = request;
  return withDeviceLease(deps, attachment.hostId, request.volume, request.signal, async () => {
    const others = await deviceSharers(deps.store, attachment.hostId, attachment.volumeId, attachment.id);
    const stillShared = others.some((a) => a.status === 'attached' || a.status === 'attaching');
    await request.steps.run('unpublish', { consumer: consumerName(deps, request.consumer), server: request.server, attachment, stillShared }, { ...(request.operationId === undefined ? {} : { operationId: request.operationId }), signal: request.signal, ...(request.undo ? { undo: true } : {}) });
    return { stillShared };
  });
}

/** Publish one attachment's device, under the lease (see `unpublishShared`); resolves with the host path. */
export async function publishShared(
  deps: PipelineDeps,
  request: PublishRequest,
): Promise<string> {
  return (await publishSharedPublication(deps, request)).path;
}

/** `publishShared`, with all the consumer said: a guest consumer's `guestDevice` and `serial` too. */
export async function publishSharedPublication(deps: PipelineDeps, request: PublishRequest): Promise<Publication> {
  const consumer = consumerName(deps, request.consumer);
  return withDeviceLease(deps, request.attachment.hostId, request.volume, request.signal, async () => {
    await request.beforePublish?.(consumer);
    return request.steps.run(
      'publish',
      { consumer, server: request.server, attachment: request.attachment, device: request.device },
      { ...(request.operationId === undefined ? {} : { operationId: request.operationId }), signal: request.signal, ...(request.undo ? { undo: true } : {}) },
    );
  });
}

/** What `publishShared` publishes. */
export interface PublishRequest {
  /** Who runs the consumer's publish on the host. */
  steps: HostSteps;
  consumer: Consumer;
  server: Server;
  attachment: Attachment;
  volume: Volume;
  device: Device;
  signal: AbortSignal;
  operationId?: string;
  /** Called from an undo (its deadline is `undoTimeoutMs`). */
  undo?: boolean;
  /**
   * Run under the lease before the publish (a reconcile fix checks there that it is still
   * needed: a detach in another process holds the lease while it takes the names down).
   */
  beforePublish?: (consumerName: string) => Promise<void>;
}

/**
 * The name the host's executor looks `consumer` up by: the configured consumer's name when it is
 * that one (a consumer's own `name` need not be the name it is registered under).
 */
function consumerName(deps: PipelineDeps, consumer: Consumer): string {
  return deps.catalog.consumerNames().includes(deps.config.consumer) && deps.catalog.consumer(deps.config.consumer) === consumer ? deps.config.consumer : consumer.name;
}

/** Whether two connectors are the same host (same initiator when both name one, else same host name). */
function sameConnectorHost(a: Connector, b: Connector): boolean {
  if (a.initiator !== undefined && b.initiator !== undefined) return a.initiator === b.initiator;
  return a.host === b.host;
}

/**
 * Other live attachments of `volumeId` exported to the same host as `connector`: the export is
 * theirs too, so removing it (terminateConnection) waits for the last of them.
 */
export async function exportSharers(store: Store, volumeId: string, connector: Connector, exceptId?: string): Promise<Attachment[]> {
  const attachments = await store.attachments.list({ volumeId });
  return attachments.filter((a) => a.id !== exceptId && live(a) && a.connector !== null && a.connectionInfo !== null && sameConnectorHost(a.connector, connector));
}
