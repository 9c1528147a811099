import { inject, injectable } from 'tsyringe';
import { processStartTicksSync } from '@berth/host';
import type { Connector } from './connection.js';
import { TOKENS } from './container.js';
import type { DriverCatalog } from './catalog.js';
import type { BerthConfig } from './config.js';
import { FaultInjector } from './faults.js';
import type { HostIdentity } from './host-identity.js';
import { hostStepsFor, type AgentHost, type HostSteps } from './host-steps/host-step-executor.js';
import { agentStore, OperationDeadlines, remoteHostSteps } from './host-steps/remote-host-steps.js';
import { WorkItemWaiter } from './host-steps/work-item-waiter.js';
import { KeyedLock } from './keyed-lock.js';
import type { Logger } from './logger.js';
import type { Attachment, Host, Operation, Server, Volume, VolumeStatus } from './model.js';
import type { PipelineDeps } from './pipeline/context.js';
import { OperationRunner } from './pipeline/operation-runner.js';
import { serverConsumer } from './pipeline/server-consumer.js';
import { runReconcile } from './reconcile/index.js';
import { zOperationListFilter, zOperationPruneRequest, type ForgetHostOptions, type OperationPruneRequest } from './requests.js';
import { parseWith } from './errors.js';
import type { DoctorEntry, ForgetHostReport, OperationPruneReport, PluginReport, ReconcileOptions, ReconcileReport, RecoveryOutcome } from './reports.js';
import * as attachments from './service/attachments.js';
import { AgentWorkService } from './service/agent-work.js';
import { forgetHost } from './service/hosts.js';
import { hostConnector } from './service/connector.js';
import { runDoctor } from './service/doctor.js';
import { LocalHost } from './service/local-host.js';
import { startAttach, startDetach } from './service/operations/attach-detach.js';
import { OperationLauncher } from './service/operations/launcher.js';
import { recoverDeadOperations } from './service/operations/recover.js';
import { ReplicaMaintenance } from './service/replica.js';
import { startJournalRetention } from './service/journal-retention.js';
import { runsOwnHostSteps, startBackendUpkeep, startTransportUpkeep } from './service/upkeep.js';
import type { ServiceParts } from './service/parts.js';
import { projectOf, resolveAttachment, resolveOperation, resolveServer, resolveVolume } from './service/resolve.js';
import * as servers from './service/servers.js';
import * as volumes from './service/volumes.js';
import type {
  OperationListFilter,
  AttachRequest,
  AttachmentConnection,
  BerthService,
  CreateServerRequest,
  CreateVolumeRequest,
  CreatedVolumeResult,
  DetachRequest,
  OperationOutcome,
  ProjectScope,
  Ref,
  ReserveAttachmentRequest,
  StartedOperation,
} from './service.js';
import type { Store } from './store.js';
import { isoTimestamp } from './monotonic-clock.js';
import { operationPruneFilter } from './store-rows.js';

/** How many operations one prune statement deletes (a few MB of journal at most). */
const PRUNE_BATCH = 1000;

/**
 * The one implementation of every berth action, used by the CLI and the HTTP app alike. It only
 * delegates: each job lives in its own file under `service/` (see core's README).
 */
@injectable()
export class BerthServiceImpl implements BerthService {
  private readonly parts: ServiceParts;
  private readonly launcher: OperationLauncher;
  /** The API side of `berth agent` (its routes call it). */
  readonly agentWork: AgentWorkService;
  /** Waits for the work items of hosts with an agent (made on first use). */
  private waiter: WorkItemWaiter | undefined;
  /** Operations' deadlines read by the remote host steps (one read per operation). */
  private readonly deadlines = new OperationDeadlines();
  /** Stops the replica heartbeat, once `startReplica` ran. */
  private replicaStop: (() => Promise<void>) | undefined;
  /** Stops the backends' and transports' upkeep and the journal retention, once `startUpkeep` ran. */
  private upkeepStop: (() => Promise<void>) | undefined;

  constructor(
    @inject(TOKENS.Config) config: BerthConfig,
    @inject(TOKENS.Store) store: Store,
    @inject(TOKENS.Catalog) catalog: DriverCatalog,
    @inject(TOKENS.HostIdentity) identity: HostIdentity,
    @inject(TOKENS.Logger) logger: Logger,
  ) {
    // `pid@host#start-time`: the start time (clock ticks since boot) tells this process from one
    // that reuses its pid after it died (`ownerState`).
    const ticks = processStartTicksSync(process.pid);
    const owner = `${process.pid}@${identity.hostname}${ticks === undefined ? '' : `#${ticks}`}`;
    const faults = new FaultInjector(config.faults);
    // Drivers pass their own points (between their commands) through the same injector.
    catalog.useFaults(faults);
    const localHost = new LocalHost(store, identity, config);
    const deps: PipelineDeps = {
      store,
      catalog,
      config,
      logger,
      localHost: () => localHost.host(),
      baseConnector: () => localHost.baseConnector(),
      owner,
      hostname: identity.hostname,
      hostSteps: (hostId) => hostStepsFor(deps, hostId, (host) => this.remoteSteps(host)),
    };
    this.parts = {
      config,
      store,
      catalog,
      identity,
      logger,
      volumeLocks: new KeyedLock(),
      serverLocks: new KeyedLock(),
      owner,
      faults,
      runner: new OperationRunner(store),
      localHost,
      deps,
    };
    this.launcher = new OperationLauncher(this.parts);
    this.agentWork = new AgentWorkService(this.parts);
  }

  // ---- volumes -------------------------------------------------------------------------------

  createVolume(request: CreateVolumeRequest): Promise<CreatedVolumeResult> {
    return volumes.createVolume(this.parts, request);
  }

  volumeCredentials(ref: Ref, scope: ProjectScope = {}): Promise<Record<string, string>> {
    return volumes.volumeCredentials(this.parts, ref, scope);
  }

  listVolumes(filter: ProjectScope & { status?: VolumeStatus } = {}): Promise<Volume[]> {
    return volumes.listVolumes(this.parts, filter);
  }

  getVolume(ref: Ref, scope: ProjectScope = {}): Promise<Volume> {
    return resolveVolume(this.parts.store, ref, this.project(scope));
  }

  deleteVolume(ref: Ref, scope: ProjectScope = {}): Promise<void> {
    return volumes.deleteVolume(this.parts, ref, scope);
  }

  extendVolume(ref: Ref, newSizeBytes: number, scope: ProjectScope = {}): Promise<Volume> {
    return volumes.extendVolume(this.parts, ref, newSizeBytes, scope);
  }

  // ---- servers and hosts ---------------------------------------------------------------------

  createServer(request: CreateServerRequest): Promise<Server> {
    return servers.createServer(this.parts, request);
  }

  listServers(filter: ProjectScope = {}): Promise<Server[]> {
    return this.parts.store.servers.list({ projectId: this.project(filter) });
  }

  getServer(ref: Ref, scope: ProjectScope = {}): Promise<Server> {
    return resolveServer(this.parts.store, ref, this.project(scope));
  }

  deleteServer(ref: Ref, scope: ProjectScope = {}): Promise<void> {
    return servers.deleteServer(this.parts, ref, scope);
  }

  listHosts(): Promise<Host[]> {
    return this.parts.store.hosts.list();
  }

  forgetHost(ref: Ref, options?: ForgetHostOptions): Promise<ForgetHostReport> {
    return forgetHost(this.parts, ref, options);
  }

  // ---- attach / detach -----------------------------------------------------------------------

  startAttach(request: AttachRequest): Promise<StartedOperation> {
    return startAttach(this.parts, this.launcher, request);
  }

  async attach(request: AttachRequest): Promise<OperationOutcome> {
    return (await this.startAttach(request)).done;
  }

  startDetach(request: DetachRequest): Promise<StartedOperation> {
    return startDetach(this.parts, this.launcher, request);
  }

  async detach(request: DetachRequest): Promise<OperationOutcome> {
    return (await this.startDetach(request)).done;
  }

  cancel(operationId: string, reason: string): boolean {
    return this.launcher.cancel(operationId, reason);
  }

  // ---- the three-phase attachments API -------------------------------------------------------

  reserveAttachment(request: ReserveAttachmentRequest): Promise<AttachmentConnection> {
    return attachments.reserveAttachment(this.parts, request);
  }

  initializeAttachment(id: string, connector: Connector, scope: ProjectScope = {}): Promise<AttachmentConnection> {
    return attachments.initializeAttachment(this.parts, id, connector, scope);
  }

  completeAttachment(id: string, scope: ProjectScope = {}): Promise<Attachment> {
    return attachments.completeAttachment(this.parts, id, scope);
  }

  deleteAttachment(id: string, scope: ProjectScope = {}): Promise<Volume> {
    return attachments.deleteAttachment(this.parts, id, scope);
  }

  // ---- attachments and operations ------------------------------------------------------------

  listAttachments(filter: ProjectScope & { volume?: Ref; server?: Ref } = {}): Promise<Attachment[]> {
    return attachments.listAttachments(this.parts, filter);
  }

  getAttachment(id: string, scope: ProjectScope = {}): Promise<Attachment> {
    return resolveAttachment(this.parts.store, id, this.project(scope));
  }

  getOperation(id: string): Promise<Operation> {
    return resolveOperation(this.parts.store, id);
  }

  findOperationByIdempotencyKey(key: string): Promise<Operation | undefined> {
    return this.parts.store.operations.findByIdempotencyKey(key);
  }

  listOperations(filter: OperationListFilter = {}): Promise<Operation[]> {
    const f = parseWith(zOperationListFilter, filter, 'operation listing');
    return this.parts.store.operations.list({
      ...(f.state ? { state: f.state } : {}),
      ...(f.kind ? { kind: f.kind } : {}),
      ...(f.volumeId ? { volumeId: f.volumeId } : {}),
      ...(f.limit === undefined ? {} : { limit: f.limit }),
    });
  }

  async checkStore(): Promise<void> {
    const { store, owner } = this.parts;
    await store.operations.list({ state: 'running', limit: 1 });
    // A lease row of this process's own, written and removed: two small commits.
    const key = `readiness:${owner}`;
    const holder = `${owner}/readiness`;
    const held = await store.locks.tryAcquire(key, holder, new Date(Date.now() + 60_000).toISOString());
    // One an earlier probe could not remove (its release failed) is ours to take back.
    if (held !== undefined && held.owner !== holder) await store.locks.takeOver(key, holder, held.owner, new Date(Date.now() + 60_000).toISOString());
    await store.locks.release(key, holder);
  }

  /** `signal` (journal retention at shutdown) stops it between two batches. */
  async pruneOperations(request: OperationPruneRequest, signal?: AbortSignal): Promise<OperationPruneReport> {
    const { olderThanMs, endedBefore: confirmed, dryRun = false } = parseWith(zOperationPruneRequest, request, 'operation prune');
    const byAge = isoTimestamp(Date.now() - olderThanMs);
    const endedBefore = confirmed === undefined || Date.parse(confirmed) >= Date.parse(byAge) ? byAge : operationPruneFilter({ endedBefore: confirmed }).endedBefore;
    const { operations } = this.parts.store;
    if (dryRun) return { pruned: await operations.prune({ endedBefore, dryRun }), endedBefore, dryRun };
    // In batches: each one statement (a transaction), so that a journal of months does not hold
    // the store's writer for seconds while attaches wait behind it.
    let pruned = 0;
    for (;;) {
      const batch = await operations.prune({ endedBefore, limit: PRUNE_BATCH });
      pruned += batch;
      if (batch < PRUNE_BATCH || signal?.aborted === true) break;
    }
    if (pruned > 0) this.parts.logger.info({ pruned, endedBefore }, `pruned ${pruned} finished operations that ended before ${endedBefore}`);
    return { pruned, endedBefore, dryRun };
  }

  // ---- host ----------------------------------------------------------------------------------

  connector(): Promise<Connector> {
    return hostConnector(this.parts);
  }

  doctor(): Promise<DoctorEntry[]> {
    return runDoctor(this.parts);
  }

  startReplica(): () => Promise<void> {
    const { operations } = this.parts.store;
    if (!operations.heartbeat || !operations.claimExpired) {
      // One server on a store without leases (the memory store): nothing to share or take over.
      this.parts.logger.warn({}, 'this store has no operation leases: running as the only replica');
      return () => Promise.resolve();
    }
    this.replicaStop ??= new ReplicaMaintenance(this.parts, this.launcher).start();
    return this.replicaStop;
  }

  startUpkeep(): () => Promise<void> {
    if (this.upkeepStop === undefined) {
      const stopBackends = startBackendUpkeep(this.parts);
      // Host-side: only while this process runs its own host's steps (no agent registered for it),
      // as `hostStepsFor` decides for each step; a host with an agent has it run there.
      const stopTransports = startTransportUpkeep(this.parts, { when: () => runsOwnHostSteps(this.parts) });
      const stopRetention = startJournalRetention(this.parts, (request, signal) => this.pruneOperations(request, signal));
      this.upkeepStop = async () => {
        await Promise.all([stopBackends(), stopTransports(), stopRetention()]);
      };
    }
    return this.upkeepStop;
  }

  async recover(): Promise<RecoveryOutcome[]> {
    // A volume a killed create, delete or extend left `creating` / `deleting` / `extending` (no
    // operation journals those): finished or undone first, logged (`recoverVolumeLifecycles`).
    await volumes.recoverVolumeLifecycles(this.parts);
    return recoverDeadOperations(this.parts, this.launcher);
  }

  async reconcile(options: ReconcileOptions = {}): Promise<ReconcileReport> {
    const { parts } = this;
    // Operations a dead process left are finished first: what they hold is theirs to undo, and a
    // volume with a running operation is left alone by reconcile.
    if (!options.dryRun) await this.recover();
    return runReconcile(
      {
        ...parts.deps,
        consumer: (server, host) => serverConsumer(parts, server, host),
        runner: parts.runner,
        withVolumeLock: (volumeId, fn) => parts.volumeLocks.withLock(volumeId, fn),
      },
      options,
    );
  }

  plugins(): PluginReport {
    return this.parts.catalog.plugins();
  }

  async close(): Promise<void> {
    // Operations in flight keep their leases renewed until they end.
    await this.launcher.drain();
    await this.replicaStop?.();
    await this.upkeepStop?.();
    await this.waiter?.close();
    for (const backend of this.parts.catalog.instantiatedBackends()) await backend.close?.().catch(() => undefined);
    await this.parts.store.close();
  }

  /** The executor of a host whose agent registered: its steps become work items. */
  private remoteSteps(host: AgentHost): HostSteps {
    const { store, config, logger } = this.parts;
    this.waiter ??= new WorkItemWaiter(agentStore(store, host), logger, config.agent.leaseMs);
    const waiter = this.waiter;
    return remoteHostSteps({ store, waiter, undoTimeoutMs: config.undoTimeoutMs, offlineAfterMs: config.agent.offlineAfterMs, deadlines: this.deadlines }, host);
  }

  private project(scope: ProjectScope): string {
    return projectOf(this.parts.config, scope);
  }
}
