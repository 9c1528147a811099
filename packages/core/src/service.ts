import type { AgentOutcome, AgentRegistration, AgentSession, ClaimedWork } from './agent-protocol.js';
import type { ConnectionInfo, Connector } from './connection.js';
import type { DoctorEntry, ForgetHostReport, OperationPruneReport, PluginReport, ReconcileOptions, ReconcileReport, RecoveryOutcome } from './reports.js';
import type { Attachment, Host, Operation, OperationKind, OperationState, Server, Volume, VolumeStatus } from './model.js';
import type { HypervisorInput } from './hypervisor.js';
import type { ForgetHostOptions, OperationPruneRequest } from './requests.js';

/** A reference to a volume or server: its id, or its name within the project. */
export type Ref = string;

/** Options shared by requests made on behalf of a project. */
/** What `listOperations` lists. */
export interface OperationListFilter {
  state?: OperationState;
  kind?: OperationKind;
  /** Only the operations on this volume (its id). */
  volumeId?: string;
  limit?: number;
}

export interface ProjectScope {
  /** The project the request acts in (default: the config's `defaultProject`). */
  projectId?: string;
}

export interface CreateVolumeRequest extends ProjectScope {
  name: string;
  sizeBytes: number;
  /** Backend name (default: the config's `defaultBackend`). */
  backend?: string;
  multiattach?: boolean;
}

export interface CreateServerRequest extends ProjectScope {
  name: string;
  /** Host name (default: this host). */
  host?: string;
  /** What runs it (default: the host itself); `qemu`/`libvirt` servers get their volumes hot-plugged. */
  hypervisor?: HypervisorInput;
}

export interface AttachRequest extends ProjectScope {
  volume: Ref;
  /** Server; default: this host's own server (created on first use). */
  server?: Ref;
  mode?: 'rw' | 'ro';
  /** Ask for multipath (sets `multipath` in the connector). */
  multipath?: boolean;
  /** Connect with this transport (`iscsi-user`, `iscsi`, ...) over the automatic choice. */
  transport?: string;
  /** A retry with the same key returns the first operation. */
  idempotencyKey?: string;
}

export interface DetachRequest extends ProjectScope {
  volume: Ref;
  /** Which server to detach from, when the volume is attached to several. */
  server?: Ref;
  attachmentId?: string;
  /** Go on through driver/backend errors and report them all. */
  force?: boolean;
  idempotencyKey?: string;
}

/** Create an attachment record without connecting anything (Cinder's attachment create). */
export interface ReserveAttachmentRequest extends ProjectScope {
  volume: Ref;
  server: Ref;
  mode?: 'rw' | 'ro';
  /** When given, the connection is initialized at once (as Cinder does with a connector). */
  connector?: Connector;
}

/** An attachment and, once initialized, how to connect it (secrets included: for the host agent only). */
export interface AttachmentConnection {
  attachment: Attachment;
  connectionInfo: ConnectionInfo | undefined;
}

/** The outcome of a finished attach or detach. */
export interface OperationOutcome {
  operation: Operation;
  volume: Volume;
  /** The attachment (for a detach: as it was before it was deleted). */
  attachment: Attachment | undefined;
  /** What went wrong without stopping it (a journal write that the next command has to finish). */
  warnings?: string[];
}

/** A running operation and a promise of its outcome. */
export interface StartedOperation {
  operation: Operation;
  /** Resolves when the operation ends; rejects with a BerthError when it failed. */
  done: Promise<OperationOutcome>;
}

/** How long and how much one agent claim waits for. */
export interface ClaimOptions {
  /** Wait this long for work when there is none (the long-poll); 0 answers at once. */
  waitMs: number;
  /** Claim at most this many items. */
  limit: number;
  /** Ends the wait early (the client went away, the server shuts down). */
  signal?: AbortSignal;
}

/**
 * The API side of `berth agent` (many hosts): each call acts for the host the agent's token names,
 * never another. An agent registers, claims its host's work items (long-poll), renews their
 * leases and reports their outcomes; a worker that is not the host's registered agent is fenced
 * (CONFLICT).
 */
export interface AgentWork {
  /** Record the agent of `hostName` (found or created), requeue what its dead predecessor held. */
  register(hostName: string, registration: AgentRegistration): Promise<AgentSession>;
  /** Claim pending items of `hostName`, waiting up to `waitMs` for one; `payload`s may carry secrets. */
  claim(hostName: string, worker: string, options: ClaimOptions): Promise<ClaimedWork[]>;
  /** Extend the lease of an item `worker` holds; CONFLICT when it no longer holds it. */
  renew(hostName: string, worker: string, id: string): Promise<{ leaseExpiresAt: string }>;
  /** Record the outcome of an item `worker` holds and wake the replica waiting for it. */
  report(hostName: string, worker: string, id: string, outcome: AgentOutcome): Promise<void>;
}

/**
 * Everything the CLI and the HTTP app do, in one place: both call this and nothing else, so no step
 * has a second implementation.
 */
/** A volume just created, with what the user should know (a sparse size beyond the free space). */
export type CreatedVolumeResult = Volume & { warnings?: string[] };

export interface BerthService {
  /** Create a volume; `warnings` says what the user should know although it worked. */
  createVolume(request: CreateVolumeRequest): Promise<CreatedVolumeResult>;
  /** The volume's access secrets from its backend (CHAP), for a user who asks explicitly. */
  volumeCredentials(ref: Ref, scope?: ProjectScope): Promise<Record<string, string>>;
  listVolumes(filter?: ProjectScope & { status?: VolumeStatus }): Promise<Volume[]>;
  getVolume(ref: Ref, scope?: ProjectScope): Promise<Volume>;
  /** Delete an available volume (its storage too). */
  deleteVolume(ref: Ref, scope?: ProjectScope): Promise<void>;
  /** Grow an available volume. */
  extendVolume(ref: Ref, newSizeBytes: number, scope?: ProjectScope): Promise<Volume>;

  createServer(request: CreateServerRequest): Promise<Server>;
  listServers(filter?: ProjectScope): Promise<Server[]>;
  getServer(ref: Ref, scope?: ProjectScope): Promise<Server>;
  /** Delete a server with no attachments. */
  deleteServer(ref: Ref, scope?: ProjectScope): Promise<void>;
  listHosts(): Promise<Host[]>;
  /**
   * Forget a host that is gone for good (`berth host forget`): refused (CONFLICT) while its agent
   * is online, for the host berth runs on, and while an operation on it runs in a live process.
   * Otherwise every attachment there loses its export on the backend (the controller side only,
   * as a forced detach's `terminate`) and its record, its volume's status is recomputed, the
   * operations a dead process left there end, its open work items are cancelled, and the host goes
   * with its servers and device records. A host not known is success (`alreadyGone`).
   * `ref` is the host's id when UUID-shaped, else its name (`pickHost`).
   * A host with no agent record and attachments or running operations is refused (CONFLICT,
   * `liveness-unknown`) unless `options.assumeDead`; so is an operation owned by a berth process on
   * the host itself, judged by its lease (none: unless `assumeDead`). The agent is checked again
   * before each export is removed and before the host goes: back online, it stops there (CONFLICT).
   */
  forgetHost(ref: Ref, options?: ForgetHostOptions): Promise<ForgetHostReport>;

  /** Start an attach; the returned operation is journalled before this resolves. */
  startAttach(request: AttachRequest): Promise<StartedOperation>;
  /** Attach and wait for the outcome. */
  attach(request: AttachRequest): Promise<OperationOutcome>;
  startDetach(request: DetachRequest): Promise<StartedOperation>;
  detach(request: DetachRequest): Promise<OperationOutcome>;
  /**
   * Cancel an attach or detach this process runs (its caller gave up: Ctrl-C in the CLI): it stops
   * as at a passed deadline, with CANCELLED, and rolls back — an attach always, a detach before
   * its point of no return; one past it (the device let go) finishes — and its `done` settles once
   * that is done. False when it does not run in this process. Absent on a remote client (the
   * server's operation goes on when its caller goes away).
   */
  cancel?(operationId: string, reason: string): boolean;

  /**
   * The three-phase attachments API for outside orchestrators, which connect on the host
   * themselves: reserve (optionally initialize), initialize with a connector, complete, delete.
   */
  reserveAttachment(request: ReserveAttachmentRequest): Promise<AttachmentConnection>;
  /** Export the volume to `connector`; the attachment becomes `attaching`. */
  initializeAttachment(id: string, connector: Connector, scope?: ProjectScope): Promise<AttachmentConnection>;
  /** Mark an `attaching` attachment `attached` (a compare-and-swap, unlike Cinder's plain write). */
  completeAttachment(id: string, scope?: ProjectScope): Promise<Attachment>;
  /** Remove the export (if any) and the attachment; the volume's status is recomputed. */
  deleteAttachment(id: string, scope?: ProjectScope): Promise<Volume>;

  listAttachments(filter?: ProjectScope & { volume?: Ref; server?: Ref }): Promise<Attachment[]>;
  getAttachment(id: string, scope?: ProjectScope): Promise<Attachment>;

  getOperation(id: string): Promise<Operation>;
  /**
   * The operation journalled under this idempotency key (as given to `startAttach`/`startDetach`),
   * if any: the one a start with that key replays. Absent on a remote client.
   */
  findOperationByIdempotencyKey?(key: string): Promise<Operation | undefined>;
  /**
   * Newest first; `limit` keeps the newest that many — a journal of
   * months holds tens of thousands, each with its steps. Without it, all of them.
   */
  listOperations(filter?: OperationListFilter): Promise<Operation[]>;
  /**
   * Delete finished operations (with their journal and work items) that ended more than
   * `olderThanMs` ago — at least an hour; never a running one, nor one whose work item a host's
   * agent may still run or undo, nor one whose attachment still exists. With `dryRun`, count them
   * only. The journal otherwise grows by ~2.6 KB an operation for good.
   */
  pruneOperations(request: OperationPruneRequest): Promise<OperationPruneReport>;

  /** This host's connector properties, merged from every transport. */
  connector(): Promise<Connector>;
  /** Whether each transport, backend and consumer works on this host. */
  doctor(): Promise<DoctorEntry[]>;
  plugins(): PluginReport;

  /**
   * Finish every operation whose process died (resume or roll back, see core's README); run on
   * start by the embedded CLI and the server. Absent on a remote client: the server recovers.
   */
  recover?(): Promise<RecoveryOutcome[]>;

  /**
   * Compare the store with the backends' exports and this host's devices, list every difference
   * with its fix and, unless `dryRun`, apply the fixes (journalled as one `reconcile` operation).
   * Runs on the host whose devices it compares; absent on a client that cannot do that.
   */
  reconcile?(options?: ReconcileOptions): Promise<ReconcileReport>;

  /** The agent protocol (on a service with a shared store; absent on a remote client). */
  readonly agentWork?: AgentWork;

  /**
   * Act as one of several API replicas (`berth serve`): heart-beat the operations this process
   * owns and take over those whose owner stopped. Returns the function that stops it.
   */
  startReplica?(): () => Promise<void>;

  /**
   * Run every backend's upkeep now and every `upkeep.intervalMs` (`berth serve`): a tgtd that died
   * is restarted with its targets before hosts' sessions time out. While this process runs its own
   * host's steps (no agent registered for it), every transport's upkeep too (iscsi-user: a killed
   * dead-target watcher is started again while LUNs are connected). Also prunes the journal of
   * operations older than `journal.retainDays`, now and every `journal.pruneIntervalMs`. Returns
   * the function that stops both.
   */
  startUpkeep?(): () => Promise<void>;

  /**
   * Whether the store answers a read and takes a write (readiness): throws what it answered
   * otherwise. A store that reads but cannot write (a full disk, a read-only PostgreSQL after a
   * failover) fails every attach, so a load balancer must not send work here. Absent on a remote
   * client.
   */
  checkStore?(): Promise<void>;

  /** Close the store and stop plugins' background work. */
  close(): Promise<void>;
}
