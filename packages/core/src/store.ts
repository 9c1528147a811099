import type { ConnectionInfo, Connector, Device } from './connection.js';
import type { Hypervisor } from './hypervisor.js';
import type {
  AgentTransportInfo,
  Attachment,
  AttachmentStatus,
  ErrorSummary,
  Host,
  HostDevice,
  Operation,
  OperationKind,
  OperationState,
  OperationStep,
  Server,
  Volume,
  VolumeStatus,
} from './model.js';
import type { WorkItem, WorkItemError, WorkItemState } from './work-item.js';

/**
 * The persistence port. `@berth/store` implements it on SQLite and PostgreSQL; core and the apps
 * only see this interface. Rules every implementation keeps:
 * - `transition*` methods are one conditional `UPDATE ... WHERE id = ? AND status IN (...)`:
 *   when no row matches they throw `BerthError` NOT_FOUND (no such row) or CONFLICT (the row is in
 *   another status; `details.actual` holds it). They check the transition table first.
 * - `get*` methods return `undefined` for a missing row; `require*` throw NOT_FOUND.
 * - Timestamps are ISO-8601 strings set by the store.
 */
export interface Store {
  readonly volumes: VolumeRepository;
  readonly hosts: HostRepository;
  readonly servers: ServerRepository;
  readonly attachments: AttachmentRepository;
  readonly operations: OperationRepository;
  /**
   * Host steps with leases, run by the agent of another host (many hosts). Optional: a store
   * without it serves one host only. `@berth/store` has it on SQLite and PostgreSQL.
   */
  readonly workItems?: WorkItemRepository;
  /**
   * Wake-ups between the processes sharing this store (PostgreSQL `LISTEN/NOTIFY`; within this
   * process on SQLite). Optional, like `workItems`.
   */
  readonly notifications?: StoreNotifications;
  /** berth's ledger of the devices it connected on each host (one per volume per host). */
  readonly devices: HostDeviceRepository;
  /** Named leases that serialise work across processes (the host-side share/refcount decision). */
  readonly locks: LockRepository;
  /**
   * Run `fn` in one database transaction, serialisable on both engines: it behaves as if no other
   * transaction ran at the same time. Where the engine aborts a transaction that lost a race
   * (PostgreSQL's serialization failures), `fn` is run again, so it must only touch the store.
   */
  transaction<T>(fn: (store: Store) => Promise<T>): Promise<T>;
  /**
   * Run `fn` with its commits *deferred-durable*: each is committed at once, seen by every reader
   * and kept through a crash of any berth process, but a power cut, an OS crash or (PostgreSQL) a
   * crash of the database server before the next durable commit may lose it — and then only
   * together with every commit after it (both engines recover a prefix of their write-ahead log,
   * and a durable commit flushes everything before it).
   * For writes that nothing outside the store acts on before the next durable commit: the journal
   * row of a step that only touches the store, a lease. A transaction already open when `fn` runs
   * keeps its own durability. Optional: a store without it commits everything durably.
   */
  deferDurability?<T>(fn: () => Promise<T>): Promise<T>;
  /** Close the connection. */
  close(): Promise<void>;
}

/** Fields of a new volume. */
export interface NewVolume {
  id?: string;
  name: string;
  projectId: string;
  sizeBytes: number;
  backend: string;
  multiattach: boolean;
  status: VolumeStatus;
}

/** Filter of a volume listing. */
export interface VolumeFilter {
  projectId?: string;
  status?: VolumeStatus;
}

export interface VolumeRepository {
  /** Insert; throws CONFLICT when the name is taken in the project. */
  create(volume: NewVolume): Promise<Volume>;
  get(id: string): Promise<Volume | undefined>;
  require(id: string): Promise<Volume>;
  /** Look a volume up by name within a project. */
  findByName(projectId: string, name: string): Promise<Volume | undefined>;
  list(filter?: VolumeFilter): Promise<Volume[]>;
  /**
   * CAS: set `status` to `to` (and apply `patch`) only if it is one of `from`.
   * Returns the updated row.
   */
  transition(
    id: string,
    from: readonly VolumeStatus[],
    to: VolumeStatus,
    patch?: Partial<Pick<Volume, 'sizeBytes' | 'providerLocation'>>,
  ): Promise<Volume>;
  /** Delete the row only if its status is one of `from` (CAS); throws like `transition`. */
  delete(id: string, from: readonly VolumeStatus[]): Promise<void>;
}

/** Fields of a new host. */
export interface NewHost {
  id?: string;
  name: string;
  connector?: Connector | null;
}

export interface HostRepository {
  create(host: NewHost): Promise<Host>;
  get(id: string): Promise<Host | undefined>;
  require(id: string): Promise<Host>;
  findByName(name: string): Promise<Host | undefined>;
  list(): Promise<Host[]>;
  /** Store the host's latest connector (callers strip secrets first). */
  setConnector(id: string, connector: Connector): Promise<Host>;
  /**
   * Record that agent `instance` registered for the host (it replaces any earlier one, whose
   * claims are then refused): `agent` becomes `{instance, version, lastSeenAt: now}`.
   */
  recordAgent(id: string, agent: NewHostAgent): Promise<Host>;
  /**
   * The registered agent `instance` was heard from: refresh `agent.lastSeenAt`. A compare-and-swap
   * on the instance: CONFLICT when another agent registered for the host since (fences the old one
   * off), NOT_FOUND for a missing host.
   */
  touchAgent(id: string, instance: string): Promise<Host>;
  /**
   * Remove a host nothing needs any more (`berth host forget`), together with what only records
   * it: its finished (`done`/`failed`) work items and berth's device records on it
   * (`Store.devices`), in one atomic write. CONFLICT (`hostInUse`, `details.reason` `host-in-use`
   * with the counts) while a server, an attachment or a `pending`/`claimed` work item still
   * references it: nothing is removed then. Succeeds when the host is already gone.
   */
  delete(id: string): Promise<void>;
}

/** An agent registering for a host. */
export interface NewHostAgent {
  instance: string;
  version: string;
  transports: readonly string[];
  /** What each transport connects (`HostAgent.transportInfo`). */
  transportInfo?: readonly AgentTransportInfo[];
  consumers: readonly string[];
}

/** Fields of a new server. */
export interface NewServer {
  id?: string;
  name: string;
  projectId: string;
  hostId: string;
  /** What runs it (absent: the host itself); stored as given, checked with `zHypervisor`. */
  hypervisor?: Hypervisor;
}

export interface ServerRepository {
  /** Insert; throws CONFLICT when the name is taken in the project. */
  create(server: NewServer): Promise<Server>;
  get(id: string): Promise<Server | undefined>;
  require(id: string): Promise<Server>;
  findByName(projectId: string, name: string): Promise<Server | undefined>;
  list(filter?: { projectId?: string; hostId?: string }): Promise<Server[]>;
  /** Delete; throws CONFLICT when attachments still reference it. */
  delete(id: string): Promise<void>;
}

/** Fields of a new attachment (always created `reserved`). */
export interface NewAttachment {
  id?: string;
  volumeId: string;
  serverId: string;
  hostId: string;
  mode: 'rw' | 'ro';
  connector?: Connector | null;
}

/** Fields that may change on an attachment besides its status. */
export interface AttachmentPatch {
  transport?: string | null;
  connector?: Connector | null;
  connectionInfo?: ConnectionInfo | null;
  device?: Device | null;
  publishedPath?: string | null;
  /** A guest consumer's name of the disk in the guest (`/dev/vdb`). */
  guestDevice?: string | null;
  /** A guest consumer's serial of the disk (the volume id). */
  serial?: string | null;
  /** The root of the host services the transport connected it on (recorded at connect). */
  hostRoot?: string | null;
  timings?: Record<string, number>;
  error?: string | null;
}

/** Filter of an attachment listing. */
export interface AttachmentFilter {
  volumeId?: string;
  serverId?: string;
  hostId?: string;
  status?: AttachmentStatus | readonly AttachmentStatus[];
  projectId?: string;
}

export interface AttachmentRepository {
  create(attachment: NewAttachment): Promise<Attachment>;
  get(id: string): Promise<Attachment | undefined>;
  require(id: string): Promise<Attachment>;
  list(filter?: AttachmentFilter): Promise<Attachment[]>;
  /** CAS on status, applying `patch` in the same statement. */
  transition(
    id: string,
    from: readonly AttachmentStatus[],
    to: AttachmentStatus,
    patch?: AttachmentPatch,
  ): Promise<Attachment>;
  /** Update fields other than status. */
  update(id: string, patch: AttachmentPatch): Promise<Attachment>;
  /** Delete; succeeds when already gone. */
  delete(id: string): Promise<void>;
  /**
   * The devices recorded on `hostId` for volumes other than `volumeId`: those of its live (not
   * `detached`) attachments and of berth's device records (`Store.devices`), each device once, in
   * no particular order — what a disconnect there must never touch. One read, only the devices,
   * however many attachments the host has.
   */
  devicesOfOtherVolumes(hostId: string, volumeId: string): Promise<Device[]>;
}

/** Fields of a new operation (always created `running`). */
export interface NewOperation {
  id?: string;
  kind: OperationKind;
  volumeId?: string | null;
  serverId?: string | null;
  attachmentId?: string | null;
  hostId?: string | null;
  idempotencyKey?: string | null;
  owner?: string | null;
  deadlineAt: string;
  /**
   * Give the owner a lease of this many milliseconds, renewed by `operations.heartbeat`; once it
   * passes, `operations.claimExpired` may hand the operation to another process. Needs `owner`.
   * Without it the operation has no lease (the single-host default: recovery checks the pid).
   */
  leaseMs?: number;
}

/** How a journal row ends: `done` (with data) or `failed` (with error). */
export interface StepOutcome {
  state: 'done' | 'failed';
  data?: Record<string, unknown> | null;
  error?: ErrorSummary | null;
}

/** Filter of an operation listing. */
export interface OperationFilter {
  state?: OperationState | readonly OperationState[];
  kind?: OperationKind;
  volumeId?: string;
  limit?: number;
}

export interface OperationRepository {
  /** Insert; throws CONFLICT when the idempotency key is already used (details.operationId). */
  create(operation: NewOperation): Promise<Operation>;
  /** The operation with its journal (steps ordered by seq). */
  get(id: string): Promise<Operation | undefined>;
  require(id: string): Promise<Operation>;
  findByIdempotencyKey(key: string): Promise<Operation | undefined>;
  /** Newest first. */
  list(filter?: OperationFilter): Promise<Operation[]>;
  /** Set the attachment id once the reserve step made it. */
  setAttachment(id: string, attachmentId: string): Promise<void>;
  /**
   * Append a journal row (state `running`); returns its seq.
   *
   * `owner` (here and on `endStep` and `advanceStep`) fences the write: it is made only while the
   * operation is `running` and `owner`'s, checked in the same atomic write, ordered against every
   * change of the operation's owner or state (on PostgreSQL one statement holding the operation's
   * row `FOR SHARE`: an update in progress makes it wait and re-check, and an update waits for it);
   * otherwise nothing is written and it throws CONFLICT with `details.reason` `not-owner`
   * (`notOwner`) when another owner has it, or a plain CONFLICT when it ended as `owner`'s. A
   * replica journals with its owner so that, frozen past its lease and resumed, it cannot write
   * over a journal another replica took over. A store written to the contract before `owner`
   * existed ignores it and fences nothing: its conformance suite (many hosts) says so.
   */
  startStep(id: string, name: string, phase: 'do' | 'undo', owner?: string): Promise<number>;
  /**
   * Close a running journal row as `done` (with data) or `failed` (with error); its duration is
   * taken from its `startedAt`. NOT_FOUND for a missing row, CONFLICT for one already closed;
   * with `owner`, fenced as `startStep` is.
   */
  endStep(id: string, seq: number, outcome: StepOutcome, owner?: string): Promise<void>;
  /**
   * A step boundary as one write: close row `seq` as `endStep` does and append the next row
   * (state `running`) as `startStep` does, atomically — either both are in the journal or
   * neither (same errors as `endStep`; nothing is written when it fails). Returns the new seq.
   * With `owner`, fenced as `startStep` is.
   */
  advanceStep(id: string, seq: number, outcome: StepOutcome, next: { name: string; phase: 'do' | 'undo' }, owner?: string): Promise<number>;
  /** Finish the operation (CAS from `running`). */
  finish(
    id: string,
    outcome: { state: Exclude<OperationState, 'running'>; error?: ErrorSummary | null; result?: Record<string, unknown> | null },
  ): Promise<Operation>;
  /**
   * Hand a running operation to a new owner (recovery after a crash): a compare-and-swap on the
   * owner, so that of two processes recovering at once exactly one takes it (CONFLICT otherwise).
   */
  setOwner(id: string, owner: string, expectedOwner: string | null): Promise<void>;
  /**
   * Renew for `leaseMs` the lease of every running operation `owner` holds; returns their ids.
   * An operation missing from the answer was taken over: its owner must stop working on it.
   */
  heartbeat?(owner: string, leaseMs: number): Promise<string[]>;
  /**
   * Take over up to `limit` (default 10) running operations whose lease passed (their owner
   * stopped heart-beating): each becomes `owner`'s with a fresh lease of `leaseMs`. Concurrent
   * callers never take the same operation (row locks skipped on PostgreSQL, one writer on SQLite).
   * Operations without a lease are never taken.
   */
  claimExpired?(owner: string, leaseMs: number, limit?: number): Promise<ClaimedOperation[]>;
  /**
   * When the operation's lease passes (ISO-8601): null for one without a lease, undefined for a
   * missing operation. Optional (many hosts): a store without it has no leases to tell.
   */
  leaseExpiry?(id: string): Promise<string | null | undefined>;
  /**
   * Delete finished operations (any state but `running`) that ended before `endedBefore`, oldest
   * first, at most `limit` of them (all without it), each with its journal and its work items —
   * but never one that still has a work item `pending` or `claimed` (its host's agent may yet run
   * or undo that step, and needs the item to report back), nor one whose attachment still exists
   * (its journal may be the only record of whom the volume was exported to: a forced detach of an
   * attachment that recorded no connector reads it). With `dryRun`, count what would go and
   * delete nothing. Returns how many (were or would be) deleted. An operation's idempotency key
   * goes with it: a retry with that key afterwards starts a new operation.
   */
  prune(filter: OperationPruneFilter): Promise<number>;
}

/** Which finished operations `OperationRepository.prune` deletes. */
export interface OperationPruneFilter {
  /** ISO-8601: only operations that ended (and started) before this. */
  endedBefore: string;
  /** At most this many (a whole number ≥ 1), oldest first; all of them without it. */
  limit?: number;
  /** Count them only. */
  dryRun?: boolean;
}

/** An operation `claimExpired` took: owned by the claimer now, and whom it took it from. */
export type ClaimedOperation = Operation & {
  /** The owner before the claim (the process that stopped renewing it): what recovery's error names. */
  previousOwner: string | null;
};

/** Fields of a new work item (always created `pending`). */
export interface NewWorkItem {
  id?: string;
  operationId: string;
  hostId: string;
  /** The host step to run (`connect`, `publish`, ...). */
  step: string;
  payload?: Record<string, unknown>;
}

/** Filter of a work item listing. */
export interface WorkItemFilter {
  hostId?: string;
  operationId?: string;
  state?: WorkItemState | readonly WorkItemState[];
}

/** How an agent finished a work item. */
export interface WorkItemOutcome {
  state: 'done' | 'failed';
  result?: Record<string, unknown> | null;
  /** Why it failed; `untouched` when the step said it changed nothing on the host. */
  error?: WorkItemError | null;
}

/**
 * Host steps waiting for, or held by, the agent of their host. Every change is a compare-and-swap
 * on state (and lease owner): NOT_FOUND for a missing item, CONFLICT when it is in another state
 * or another agent holds it.
 */
export interface WorkItemRepository {
  /** Insert a `pending` item; NOT_FOUND when its operation or host does not exist. */
  create(item: NewWorkItem): Promise<WorkItem>;
  get(id: string): Promise<WorkItem | undefined>;
  require(id: string): Promise<WorkItem>;
  /** Oldest first. */
  list(filter?: WorkItemFilter): Promise<WorkItem[]>;
  /**
   * Claim up to `limit` (default 1) pending items of `hostId` for `worker`, oldest first, with a
   * lease of `leaseMs`; `attempts` goes up by one. Concurrent claimers never get the same item.
   * Fenced by the host's agent record: when the host has a registered agent (`hosts.recordAgent`)
   * other than `worker`, CONFLICT (`agentReplaced`) and nothing is claimed — checked atomically
   * with the claim, so a registration either comes after the claim (and requeues what it took)
   * or before it (and the claim is refused).
   */
  claim(hostId: string, worker: string, leaseMs: number, limit?: number): Promise<WorkItem[]>;
  /**
   * Extend the lease of an item `worker` holds; CONFLICT when it no longer holds it, or when its
   * host's registered agent is another one (fenced as `claim`).
   */
  renew(id: string, worker: string, leaseMs: number): Promise<WorkItem>;
  /**
   * Record the outcome of an item `worker` holds; CONFLICT when it no longer holds it, or when its
   * host's registered agent is another one (fenced as `claim`).
   */
  complete(id: string, worker: string, outcome: WorkItemOutcome): Promise<WorkItem>;
  /** Put up to `limit` (default 100) claimed items whose lease passed back to `pending`; returns them. */
  expire(limit?: number): Promise<WorkItem[]>;
  /**
   * Give up on an item (its operation's deadline passed, or the operation is being undone): CAS
   * `pending|claimed → failed` with `error`, lease cleared, so no agent runs or reports it any more
   * (a holder's `renew`/`complete` become CONFLICT). `attempts` is kept: `attempts > 0` means an
   * agent claimed it, so the step may have run on the host. CONFLICT when it is already
   * done/failed (the returned error's `details.actual` says which), NOT_FOUND when missing.
   */
  cancel(id: string, error: ErrorSummary): Promise<WorkItem>;
  /**
   * Put back to `pending` every claimed item of `hostId` held by a worker other than
   * `exceptWorker`, lease or not: a newly registered agent's dead predecessor held them, and the
   * new agent runs them again. Returns them, oldest first.
   */
  requeue(hostId: string, exceptWorker: string): Promise<WorkItem[]>;
}

/**
 * Wake-ups between processes: a notification is a hint that something changed ("work for host
 * h-2"), never the data itself; a listener re-reads the store. Sent inside a transaction, it is
 * delivered when (and only if) the transaction commits.
 */
export interface StoreNotifications {
  /** Wake every listener of `channel` (`[a-z_][a-z0-9_]*`, at most 63 chars); `payload` ≤ 7999 bytes. */
  notify(channel: string, payload?: string): Promise<void>;
  /**
   * Call `listener` with each notification's payload on `channel` until the returned function is
   * called. After a lost connection is re-established, listeners are called once with `''`:
   * notifications may have been missed meanwhile.
   */
  listen(channel: string, listener: (payload: string) => void): Promise<() => Promise<void>>;
}

/** Fields of a device record (`put` inserts or replaces the one of its host and volume). */
export interface NewHostDevice {
  hostId: string;
  volumeId: string;
  transport: string;
  connectionInfo: ConnectionInfo;
  device: Device;
  operationId?: string | null;
  /** Where the transport connected it (`Attachment.hostRoot`). */
  hostRoot?: string | null;
}

export interface HostDeviceRepository {
  get(hostId: string, volumeId: string): Promise<HostDevice | undefined>;
  /** Oldest first. */
  list(filter?: { hostId?: string; volumeId?: string }): Promise<HostDevice[]>;
  /** Insert or replace the record of (hostId, volumeId); secrets are dropped from connection_info. */
  put(record: NewHostDevice): Promise<HostDevice>;
  /** Remove the record; succeeds when it is already gone. */
  delete(hostId: string, volumeId: string): Promise<void>;
}

/** Who holds a lease, and until when it counts. */
export interface LockHolder {
  owner: string;
  acquiredAt: string;
  expiresAt: string;
}

/**
 * Leases in the store: one row per key, so two processes (two `berth attach` commands) serialise
 * on it where an in-process lock cannot. The store only compares and swaps; whether a holder is
 * dead (its process gone, its lease expired) is the caller's call.
 */
export interface LockRepository {
  /** Take `key` for `owner` when nobody holds it; resolves undefined when taken, else the holder. */
  tryAcquire(key: string, owner: string, expiresAt: string): Promise<LockHolder | undefined>;
  /** Take `key` from `expectedOwner` (dead or expired): a compare-and-swap; false when it changed meanwhile. */
  takeOver(key: string, owner: string, expectedOwner: string, expiresAt: string): Promise<boolean>;
  /** Give `key` back; does nothing unless `owner` holds it. */
  release(key: string, owner: string): Promise<void>;
  /** The current holder of `key`, if any. */
  holder(key: string): Promise<LockHolder | undefined>;
}

export type { OperationStep };

/**
 * `fn` with `store`'s commits deferred-durable (`Store.deferDurability`), or as it is when the
 * store has no such mode.
 */
export function withDeferredDurability<T>(store: Store, fn: () => Promise<T>): Promise<T> {
  return store.deferDurability === undefined ? fn() : store.deferDurability(fn);
}
