import { inject, injectable } from 'tsyringe';
import { redactConnectionInfo, zConnector, type Connector } from './connection.js';
import { TOKENS } from './container.js';
import type { DriverCatalog } from './catalog.js';
import type { BerthConfig } from './config.js';
import { createDeadline, type Deadline } from './deadline.js';
import { BerthError, parseWith, toBerthError } from './errors.js';
import { FaultInjector } from './faults.js';
import type { HostIdentity } from './host-identity.js';
import { KeyedLock } from './keyed-lock.js';
import type { Logger } from './logger.js';
import { zId, zSizeBytes, type Attachment, type Host, type Operation, type OperationState, type Server, type Volume, type VolumeStatus } from './model.js';
import { attachSteps, reserveAttachmentRecord } from './pipeline/attach.js';
import type { PipelineContext, PipelineDeps } from './pipeline/context.js';
import { backendVolume, recomputeVolume } from './pipeline/context.js';
import { detachableFrom, detachSteps, markDetachFailed } from './pipeline/detach.js';
import { OperationRunner, summarize } from './pipeline/operation-runner.js';
import { ownerAlive, recoverOperation, type RecoveryDeps, type RecoveryOutcome } from './pipeline/recovery.js';
import { runReconcile, type ReconcileOptions, type ReconcileReport } from './reconcile.js';
import type { Step } from './pipeline/step.js';
import { zAttachRequest, zCreateServerRequest, zCreateVolumeRequest, zDetachRequest, zReserveAttachmentRequest } from './requests.js';
import type {
  AttachRequest,
  AttachmentConnection,
  BerthService,
  CreateServerRequest,
  CreateVolumeRequest,
  DetachRequest,
  DoctorEntry,
  OperationOutcome,
  PluginReport,
  ProjectScope,
  Ref,
  ReserveAttachmentRequest,
  StartedOperation,
} from './service.js';
import type { Store } from './store.js';

const isUuid = (ref: string): boolean => zId.safeParse(ref).success;

/** A host name made into a valid server name. */
function serverNameFor(hostname: string): string {
  const cleaned = hostname.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '');
  return (cleaned || 'localhost').slice(0, 63);
}

/**
 * The one implementation of every berth action, used by the CLI and the HTTP app alike.
 * Attach and detach run as journalled operations under a per-volume lock (queueing) and a
 * deadline; the server lock only covers the reservation.
 */
@injectable()
export class BerthServiceImpl implements BerthService {
  private readonly volumeLocks = new KeyedLock();
  private readonly serverLocks = new KeyedLock();
  private readonly inflight = new Map<string, Promise<OperationOutcome>>();
  private readonly runner: OperationRunner;
  private readonly deps: PipelineDeps;
  private localHostRecord: Host | undefined;
  private readonly owner: string;
  private readonly faults: FaultInjector;

  constructor(
    @inject(TOKENS.Config) private readonly config: BerthConfig,
    @inject(TOKENS.Store) private readonly store: Store,
    @inject(TOKENS.Catalog) private readonly catalog: DriverCatalog,
    @inject(TOKENS.HostIdentity) private readonly identity: HostIdentity,
    @inject(TOKENS.Logger) private readonly logger: Logger,
  ) {
    this.runner = new OperationRunner(store);
    this.owner = `${process.pid}@${identity.hostname}`;
    this.faults = new FaultInjector(config.faults);
    // Drivers pass their own points (between their commands) through the same injector.
    catalog.useFaults(this.faults);
    this.deps = {
      store,
      catalog,
      config,
      logger,
      localHost: () => this.localHost(),
      baseConnector: () => this.baseConnector(),
    };
  }

  // ---- volumes -------------------------------------------------------------------------------

  async createVolume(request: CreateVolumeRequest): Promise<Volume> {
    const req = parseWith(zCreateVolumeRequest, request, 'volume');
    const backendName = req.backend ?? this.config.defaultBackend;
    const backend = this.catalog.backend(backendName);
    const volume = await this.store.volumes.create({
      name: req.name,
      projectId: this.project(req),
      sizeBytes: req.sizeBytes,
      backend: backendName,
      multiattach: req.multiattach ?? false,
      status: 'creating',
    });
    const deadline = createDeadline(this.config.operationTimeoutMs);
    try {
      const created = await backend.create(backendVolume(volume), deadline.signal);
      return await this.store.volumes.transition(volume.id, ['creating'], 'available', {
        providerLocation: created.providerLocation,
      });
    } catch (error) {
      // Nothing was made that a user can use: remove the row (and whatever the backend made) so
      // the name is free for a retry, instead of leaving a volume in `error` to clean up by hand.
      await backend.delete(backendVolume(volume), AbortSignal.timeout(this.config.undoTimeoutMs)).catch(() => undefined);
      await this.store.volumes.delete(volume.id, ['creating']).catch(() => undefined);
      throw toBerthError(error, 'BACKEND_ERROR');
    } finally {
      deadline.dispose();
    }
  }

  async volumeCredentials(ref: Ref, scope: ProjectScope = {}): Promise<Record<string, string>> {
    const volume = await this.resolveVolume(ref, this.project(scope));
    const backend = this.catalog.backend(volume.backend);
    return backend.credentials ? backend.credentials(backendVolume(volume)) : {};
  }

  async listVolumes(filter: ProjectScope & { status?: VolumeStatus } = {}): Promise<Volume[]> {
    return this.store.volumes.list({ projectId: this.project(filter), ...(filter.status ? { status: filter.status } : {}) });
  }

  async getVolume(ref: Ref, scope: ProjectScope = {}): Promise<Volume> {
    return this.resolveVolume(ref, this.project(scope));
  }

  async deleteVolume(ref: Ref, scope: ProjectScope = {}): Promise<void> {
    const volume = await this.resolveVolume(ref, this.project(scope));
    await this.volumeLocks.withLock(volume.id, async () => {
      const attachments = await this.store.attachments.list({ volumeId: volume.id });
      if (attachments.length > 0) {
        throw new BerthError('CONFLICT', `volume ${volume.name} has ${attachments.length} attachment(s)`, {
          hint: `detach it first: berth detach ${volume.name}${attachments.some((a) => a.status.startsWith('error')) ? ' --force' : ''}`,
          details: { volumeId: volume.id, actual: volume.status },
        });
      }
      await this.store.volumes.transition(volume.id, ['available', 'error'], 'deleting');
      try {
        await this.catalog.backend(volume.backend).delete(backendVolume(volume), AbortSignal.timeout(this.config.operationTimeoutMs));
      } catch (error) {
        await this.store.volumes.transition(volume.id, ['deleting'], 'error').catch(() => undefined);
        throw toBerthError(error, 'BACKEND_ERROR');
      }
      await this.store.volumes.delete(volume.id, ['deleting']);
    });
  }

  async extendVolume(ref: Ref, newSizeBytes: number, scope: ProjectScope = {}): Promise<Volume> {
    const size = parseWith(zSizeBytes, newSizeBytes, 'size');
    const volume = await this.resolveVolume(ref, this.project(scope));
    return this.volumeLocks.withLock(volume.id, async () => {
      const current = await this.store.volumes.require(volume.id);
      if (size <= current.sizeBytes) {
        throw new BerthError('VALIDATION', `volume ${current.name} is already ${current.sizeBytes} bytes; a new size must be larger`, {
          details: { sizeBytes: current.sizeBytes, requested: size },
        });
      }
      const backend = this.catalog.backend(current.backend);
      if (!backend.extend) {
        throw new BerthError('UNPROCESSABLE', `backend ${current.backend} cannot extend volumes`);
      }
      if (current.status !== 'available') {
        throw new BerthError('CONFLICT', `volume ${current.name} is ${current.status}; only an available volume can be extended`, {
          hint: `detach it first: berth detach ${current.name}`,
          details: { volumeId: current.id, actual: current.status, expected: 'available' },
        });
      }
      await this.store.volumes.transition(current.id, ['available'], 'extending');
      try {
        await backend.extend(backendVolume(current), size, AbortSignal.timeout(this.config.operationTimeoutMs));
      } catch (error) {
        await this.store.volumes.transition(current.id, ['extending'], 'available');
        throw toBerthError(error, 'BACKEND_ERROR');
      }
      return this.store.volumes.transition(current.id, ['extending'], 'available', { sizeBytes: size });
    });
  }

  // ---- servers and hosts ---------------------------------------------------------------------

  async createServer(request: CreateServerRequest): Promise<Server> {
    const req = parseWith(zCreateServerRequest, request, 'server');
    const host = req.host === undefined || req.host === this.identity.hostname ? await this.localHost() : await this.findOrCreateHost(req.host);
    return this.store.servers.create({ name: req.name, projectId: this.project(req), hostId: host.id });
  }

  async listServers(filter: ProjectScope = {}): Promise<Server[]> {
    return this.store.servers.list({ projectId: this.project(filter) });
  }

  async getServer(ref: Ref, scope: ProjectScope = {}): Promise<Server> {
    return this.resolveServer(ref, this.project(scope));
  }

  async deleteServer(ref: Ref, scope: ProjectScope = {}): Promise<void> {
    const server = await this.resolveServer(ref, this.project(scope));
    await this.serverLocks.withLock(server.id, () => this.store.servers.delete(server.id));
  }

  async listHosts(): Promise<Host[]> {
    return this.store.hosts.list();
  }

  // ---- attach / detach -----------------------------------------------------------------------

  async startAttach(request: AttachRequest): Promise<StartedOperation> {
    const req = parseWith(zAttachRequest, request, 'attach request');
    const replay = await this.replay(req.idempotencyKey);
    if (replay) return replay;
    const project = this.project(req);
    const volume = await this.resolveVolume(req.volume, project);
    const server = req.server === undefined ? await this.localServer(project) : await this.resolveServer(req.server, project);
    await this.preflightAttach(volume, server);

    return this.launch({ kind: 'attach', volume, server, idempotencyKey: req.idempotencyKey }, async (operationId) => {
      const ctx = this.context(operationId, await this.store.volumes.require(volume.id), server);
      const steps = attachSteps(this.deps, {
        mode: req.mode ?? 'rw',
        ...(req.multipath === undefined ? {} : { multipath: req.multipath }),
        ...(req.transport === undefined ? {} : { transport: req.transport }),
      });
      // The server lock covers only the reservation (Nova's reserve_block_device_name):
      // attaches of different volumes to one server connect in parallel.
      const [reserve, ...rest] = steps as [Step<PipelineContext>, ...Array<Step<PipelineContext>>];
      const lockedReserve: Step<PipelineContext> = {
        ...reserve,
        run: (c, signal) => this.serverLocks.withLock(server.id, () => reserve.run(c, signal), signal),
      };
      return { ctx, steps: [lockedReserve, ...rest] };
    });
  }

  async attach(request: AttachRequest): Promise<OperationOutcome> {
    return (await this.startAttach(request)).done;
  }

  async startDetach(request: DetachRequest): Promise<StartedOperation> {
    const req = parseWith(zDetachRequest, request, 'detach request');
    const replay = await this.replay(req.idempotencyKey);
    if (replay) return replay;
    const project = this.project(req);
    const volume = await this.resolveVolume(req.volume, project);
    const attachment = await this.findAttachmentToDetach(volume, req.attachmentId, req.server, project, req.force ?? false);
    const server = await this.store.servers.require(attachment.serverId);

    return this.launch({ kind: 'detach', volume, server, attachment, idempotencyKey: req.idempotencyKey }, async (operationId) => {
      const ctx = this.context(operationId, await this.store.volumes.require(volume.id), server);
      ctx.attachment = await this.store.attachments.require(attachment.id);
      ctx.force = req.force ?? false;
      return { ctx, steps: detachSteps(this.deps) };
    });
  }

  /**
   * Journal a new operation, then run the steps `prepare` gives under the volume lock (queued,
   * never rejected) and a deadline that counts the wait for the lock too.
   */
  private async launch(
    what: { kind: 'attach' | 'detach'; volume: Volume; server: Server; attachment?: Attachment; idempotencyKey: string | undefined },
    prepare: (operationId: string) => Promise<{ ctx: PipelineContext; steps: Array<Step<PipelineContext>> }>,
  ): Promise<StartedOperation> {
    const operation = await this.store.operations.create({
      kind: what.kind,
      volumeId: what.volume.id,
      serverId: what.server.id,
      ...(what.attachment ? { attachmentId: what.attachment.id } : {}),
      hostId: what.attachment?.hostId ?? what.server.hostId,
      idempotencyKey: what.idempotencyKey ?? null,
      owner: this.owner,
      deadlineAt: new Date(Date.now() + this.config.operationTimeoutMs).toISOString(),
    });
    const deadline = createDeadline(this.config.operationTimeoutMs);
    const done = this.track(
      operation.id,
      this.volumeLocks.withLock(what.volume.id, () => this.execute(operation.id, what.kind, deadline, () => prepare(operation.id)), deadline.signal),
    );
    return { operation, done };
  }

  async detach(request: DetachRequest): Promise<OperationOutcome> {
    return (await this.startDetach(request)).done;
  }

  // ---- the three-phase attachments API -------------------------------------------------------

  async reserveAttachment(request: ReserveAttachmentRequest): Promise<AttachmentConnection> {
    const req = parseWith(zReserveAttachmentRequest, request, 'attachment');
    const project = this.project(req);
    const volume = await this.resolveVolume(req.volume, project);
    const server = await this.resolveServer(req.server, project);
    await this.preflightAttach(volume, server);
    return this.volumeLocks.withLock(volume.id, async () => {
      const attachment = await this.serverLocks.withLock(server.id, () => reserveAttachmentRecord(this.store, volume.id, server, req.mode ?? 'rw'));
      if (!req.connector) return { attachment, connectionInfo: undefined };
      try {
        return await this.initializeLocked(attachment, req.connector);
      } catch (error) {
        await this.store.attachments.delete(attachment.id);
        await recomputeVolume(this.store, volume.id);
        throw error;
      }
    });
  }

  async initializeAttachment(id: string, connector: Connector, scope: ProjectScope = {}): Promise<AttachmentConnection> {
    const parsed = parseWith(zConnector, connector, 'connector');
    const attachment = await this.getAttachment(id, scope);
    return this.volumeLocks.withLock(attachment.volumeId, async () => this.initializeLocked(await this.store.attachments.require(id), parsed));
  }

  async completeAttachment(id: string, scope: ProjectScope = {}): Promise<Attachment> {
    const attachment = await this.getAttachment(id, scope);
    return this.volumeLocks.withLock(attachment.volumeId, async () => {
      const done = await this.store.attachments.transition(id, ['attaching'], 'attached', { error: null });
      await recomputeVolume(this.store, attachment.volumeId);
      return done;
    });
  }

  async deleteAttachment(id: string, scope: ProjectScope = {}): Promise<Volume> {
    const attachment = await this.getAttachment(id, scope);
    return this.volumeLocks.withLock(attachment.volumeId, async () => {
      let current = await this.store.attachments.require(id);
      if (current.status === 'attached' || current.status === 'error_detaching') {
        // Through `detaching`, as a detach goes: the volume never jumps from in-use to available.
        current = await this.store.attachments.transition(id, [current.status], 'detaching');
        await recomputeVolume(this.store, current.volumeId);
      }
      const volume = await this.store.volumes.require(current.volumeId);
      if (current.connector && current.connectionInfo) {
        try {
          await this.catalog
            .backend(volume.backend)
            .terminateConnection(backendVolume(volume), current.connector, AbortSignal.timeout(this.config.operationTimeoutMs));
        } catch (error) {
          const failed = toBerthError(error, 'BACKEND_ERROR');
          if (current.status === 'detaching') {
            await this.store.attachments.transition(id, ['detaching'], 'error_detaching', { error: failed.message });
            await recomputeVolume(this.store, volume.id);
          }
          throw failed;
        }
      }
      await this.store.attachments.delete(id);
      return recomputeVolume(this.store, volume.id);
    });
  }

  private async initializeLocked(attachment: Attachment, connector: Connector): Promise<AttachmentConnection> {
    if (attachment.status !== 'reserved' && attachment.status !== 'attaching') {
      throw new BerthError('CONFLICT', `attachment ${attachment.id} is ${attachment.status}; only a reserved or attaching one can be initialized`, {
        details: { attachmentId: attachment.id, actual: attachment.status },
      });
    }
    const volume = await this.store.volumes.require(attachment.volumeId);
    const connectionInfo = await this.catalog
      .backend(volume.backend)
      .initializeConnection(backendVolume(volume), connector, AbortSignal.timeout(this.config.operationTimeoutMs));
    const info = attachment.mode === 'ro' ? { ...connectionInfo, data: { ...connectionInfo.data, access_mode: 'ro' as const } } : connectionInfo;
    const patch = { connector, connectionInfo: redactConnectionInfo(info) };
    const updated =
      attachment.status === 'reserved'
        ? await this.store.attachments.transition(attachment.id, ['reserved'], 'attaching', patch)
        : await this.store.attachments.update(attachment.id, patch);
    await recomputeVolume(this.store, volume.id);
    return { attachment: updated, connectionInfo: info };
  }

  // ---- attachments and operations ------------------------------------------------------------

  async listAttachments(filter: ProjectScope & { volume?: Ref; server?: Ref } = {}): Promise<Attachment[]> {
    const project = this.project(filter);
    const volumeId = filter.volume === undefined ? undefined : (await this.resolveVolume(filter.volume, project)).id;
    const serverId = filter.server === undefined ? undefined : (await this.resolveServer(filter.server, project)).id;
    return this.store.attachments.list({
      projectId: project,
      ...(volumeId ? { volumeId } : {}),
      ...(serverId ? { serverId } : {}),
    });
  }

  async getAttachment(id: string, scope: ProjectScope = {}): Promise<Attachment> {
    const notFound = new BerthError('NOT_FOUND', `no attachment ${id}`, { hint: 'list them with `berth attachment list`' });
    if (!isUuid(id)) throw notFound;
    const attachment = await this.store.attachments.get(id);
    if (!attachment) throw notFound;
    const volume = await this.store.volumes.get(attachment.volumeId);
    if (volume?.projectId !== this.project(scope)) throw notFound;
    return attachment;
  }

  async getOperation(id: string): Promise<Operation> {
    const operation = isUuid(id) ? await this.store.operations.get(id) : undefined;
    if (!operation) throw new BerthError('NOT_FOUND', `no operation ${id}`, { hint: 'list them with `berth operation list`' });
    return operation;
  }

  async listOperations(filter: { state?: OperationState } = {}): Promise<Operation[]> {
    return this.store.operations.list(filter.state ? { state: filter.state } : {});
  }

  // ---- host ----------------------------------------------------------------------------------

  async connector(): Promise<Connector> {
    const merged: Record<string, unknown> = { ...this.baseConnector() };
    for (const transport of this.catalog.transports()) {
      try {
        Object.assign(merged, await transport.connectorProperties());
      } catch (error) {
        this.logger.warn({ transport: transport.name, err: toBerthError(error).message }, 'connector properties failed');
      }
    }
    merged.multipath = this.config.connector.multipath;
    merged.enforce_multipath = this.config.connector.enforce_multipath;
    return zConnector.parse(merged);
  }

  async doctor(): Promise<DoctorEntry[]> {
    const entries: DoctorEntry[] = [];
    const check = async (kind: DoctorEntry['kind'], name: string, fn: () => Promise<DoctorEntry['result']>): Promise<void> => {
      try {
        entries.push({ kind, name, result: await fn() });
      } catch (error) {
        const e = toBerthError(error);
        entries.push({ kind, name, result: { ok: false, summary: e.message, ...(e.hint ? { fix: e.hint } : {}) } });
      }
    };
    for (const name of this.catalog.transportNames()) await check('transport', name, () => this.catalog.transport(name).check());
    for (const name of this.catalog.backendNames()) await check('backend', name, () => this.catalog.backend(name).check());
    for (const name of this.catalog.consumerNames()) {
      await check('consumer', name, async () => {
        const consumer = this.catalog.consumer(name);
        return consumer.check ? consumer.check() : { ok: true, summary: 'no checks' };
      });
    }
    await check('store', this.config.store.kind, async () => {
      await this.store.volumes.list({ projectId: this.config.defaultProject });
      return { ok: true, summary: `${this.config.store.kind} store reachable` };
    });
    for (const failure of this.catalog.plugins().failed) {
      entries.push({ kind: 'plugin', name: failure.packageName, result: { ok: false, summary: failure.error, fix: 'reinstall or remove it: berth plugins' } });
    }
    return entries;
  }

  async recover(): Promise<RecoveryOutcome[]> {
    const outcomes: RecoveryOutcome[] = [];
    for (const operation of await this.store.operations.list({ state: 'running' })) {
      if (ownerAlive(operation.owner, this.identity.hostname, this.owner)) continue;
      try {
        // A compare-and-swap on the owner: of two processes starting at once, one recovers it.
        await this.store.operations.setOwner(operation.id, this.owner, operation.owner);
      } catch {
        continue;
      }
      const log = this.logger.child({ operationId: operation.id, recovery: true });
      const recover = async (): Promise<RecoveryOutcome> => {
        try {
          return await recoverOperation(this.recoveryDeps(), await this.store.operations.require(operation.id), log);
        } catch (error) {
          const e = toBerthError(error);
          await this.store.operations.finish(operation.id, { state: 'failed', error: summarize(e) }).catch(() => undefined);
          return { operationId: operation.id, kind: operation.kind, action: 'failed', detail: e.message };
        }
      };
      const outcome = operation.volumeId ? await this.volumeLocks.withLock(operation.volumeId, recover) : await recover();
      log.warn({ action: outcome.action, detail: outcome.detail }, 'recovered an interrupted operation');
      outcomes.push(outcome);
    }
    return outcomes;
  }

  async reconcile(options: ReconcileOptions = {}): Promise<ReconcileReport> {
    // Operations a dead process left are finished first: what they hold is theirs to undo, and a
    // volume with a running operation is left alone by reconcile.
    if (!options.dryRun) await this.recover();
    return runReconcile(
      {
        ...this.deps,
        owner: this.owner,
        consumer: () => this.catalog.consumer(this.config.consumer),
        withVolumeLock: (volumeId, fn) => this.volumeLocks.withLock(volumeId, fn),
      },
      options,
    );
  }

  private recoveryDeps(): RecoveryDeps {
    return {
      ...this.deps,
      runner: this.runner,
      consumer: () => this.catalog.consumer(this.config.consumer),
      owner: this.owner,
      hostname: this.identity.hostname,
      undoTimeoutMs: this.config.undoTimeoutMs,
      faults: this.faults,
    };
  }

  plugins(): PluginReport {
    return this.catalog.plugins();
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()]);
    for (const backend of this.catalog.instantiatedBackends()) await backend.close?.().catch(() => undefined);
    await this.store.close();
  }

  // ---- internals -----------------------------------------------------------------------------

  private project(scope: ProjectScope): string {
    return scope.projectId ?? this.config.defaultProject;
  }

  private baseConnector(): Connector {
    return {
      host: this.identity.hostname,
      ...(this.identity.ips[0] ? { ip: this.identity.ips[0] } : {}),
      platform: this.identity.platform,
      os_type: this.identity.osType,
      multipath: this.config.connector.multipath,
      enforce_multipath: this.config.connector.enforce_multipath,
    };
  }

  private context(operationId: string, volume: Volume, server: Server): PipelineContext {
    return {
      operationId,
      volume,
      server,
      consumer: this.catalog.consumer(this.config.consumer),
      backend: this.catalog.backend(volume.backend),
      forcedErrors: [],
    };
  }

  /** Run the steps `prepare` gives, journal the outcome and settle the operation. */
  private async execute(
    operationId: string,
    kind: 'attach' | 'detach',
    deadline: Deadline,
    prepare: () => Promise<{ ctx: PipelineContext; steps: Array<Step<PipelineContext>> }>,
  ): Promise<OperationOutcome> {
    const log = this.logger.child({ operationId });
    let ctx: PipelineContext | undefined;
    try {
      const prepared = await prepare();
      ctx = prepared.ctx;
      const outcome = await this.runner.run(prepared.steps, ctx, {
        operationId,
        signal: deadline.signal,
        undoTimeoutMs: this.config.undoTimeoutMs,
        logger: log,
        faults: this.faults,
        pipeline: kind,
      });
      if (outcome.ok) {
        if (kind === 'attach' && ctx.attachment) {
          ctx.attachment = await this.store.attachments.update(ctx.attachment.id, { timings: outcome.timings });
        }
        const operation = await this.store.operations.finish(operationId, {
          state: 'succeeded',
          result: {
            timings: outcome.timings,
            ...(ctx.attachment ? { attachmentId: ctx.attachment.id } : {}),
            ...(ctx.device ?? ctx.attachment?.device ? { device: (ctx.device ?? ctx.attachment?.device)?.path } : {}),
            ...(ctx.publishedPath ? { publishedPath: ctx.publishedPath } : {}),
          },
        });
        return { operation, volume: await this.store.volumes.require(ctx.volume.id), attachment: ctx.attachment };
      }
      if (outcome.forward) await markDetachFailed(this.deps, ctx, outcome.error).catch(() => undefined);
      const error = outcome.undoErrors.length
        ? new BerthError(outcome.error.code, `${outcome.error.message} (and the rollback failed: ${outcome.undoErrors.map((e) => e.message).join('; ')})`, {
            hint: 'run `berth reconcile` to find and fix what was left behind',
            details: { ...outcome.error.details, operationId },
            cause: outcome.error,
          })
        : outcome.error;
      error.details.operationId = operationId;
      await this.store.operations.finish(operationId, {
        state: outcome.rolledBack ? 'rolled_back' : 'failed',
        error: summarize(error),
        result: { timings: outcome.timings },
      });
      throw error;
    } finally {
      deadline.dispose();
    }
  }

  private track(operationId: string, running: Promise<OperationOutcome>): Promise<OperationOutcome> {
    // An operation that never reached its first step (cancelled or timed out while queued on the
    // volume lock) must not stay `running`.
    const promise = running.catch(async (raw: unknown) => {
      const error = toBerthError(raw);
      error.details.operationId ??= operationId;
      const current = await this.store.operations.get(operationId);
      if (current?.state === 'running') {
        await this.store.operations.finish(operationId, { state: 'rolled_back', error: summarize(error) }).catch(() => undefined);
      }
      throw error;
    });
    this.inflight.set(operationId, promise);
    const untrack = (): void => {
      this.inflight.delete(operationId);
    };
    promise.then(untrack, untrack);
    return promise;
  }

  /** A retry with a used idempotency key gets the first operation back. */
  private async replay(key: string | undefined): Promise<StartedOperation | undefined> {
    if (key === undefined) return undefined;
    const operation = await this.store.operations.findByIdempotencyKey(key);
    if (!operation) return undefined;
    const running = this.inflight.get(operation.id);
    return { operation, done: running ?? this.settled(operation) };
  }

  private async settled(operation: Operation): Promise<OperationOutcome> {
    if (operation.error) {
      throw new BerthError(operation.error.code as BerthError['code'], operation.error.message, {
        ...(operation.error.hint ? { hint: operation.error.hint } : {}),
        details: { operationId: operation.id },
      });
    }
    const volume = await this.store.volumes.require(operation.volumeId ?? '');
    const attachment = operation.attachmentId ? await this.store.attachments.get(operation.attachmentId) : undefined;
    return { operation, volume, attachment };
  }

  /** Refuse early what the reserve CAS would refuse anyway, so callers get a 409 at once. */
  private async preflightAttach(volume: Volume, server: Server): Promise<void> {
    const active = (await this.store.attachments.list({ volumeId: volume.id })).filter((a) => a.status !== 'detached');
    if (active.some((a) => a.serverId === server.id)) {
      throw new BerthError('CONFLICT', `volume ${volume.name} is already attached to server ${server.name}`, {
        hint: `detach it first: berth detach ${volume.name}`,
        details: { volumeId: volume.id, serverId: server.id, actual: volume.status },
      });
    }
    const ok = volume.multiattach ? ['available', 'reserved', 'attaching', 'in-use'].includes(volume.status) : volume.status === 'available';
    if (!ok) {
      throw new BerthError('CONFLICT', `volume ${volume.name} is ${volume.status}; it must be available to attach`, {
        hint: volume.status === 'in-use' ? `detach it first (berth detach ${volume.name}), or create volumes with --multiattach` : 'wait for the running operation, see `berth operation list --state running`',
        details: { volumeId: volume.id, actual: volume.status, expected: 'available' },
      });
    }
  }

  private async findAttachmentToDetach(volume: Volume, attachmentId: string | undefined, serverRef: Ref | undefined, project: string, force: boolean): Promise<Attachment> {
    let candidates = (await this.store.attachments.list({ volumeId: volume.id })).filter((a) => a.status !== 'detached');
    if (attachmentId) candidates = candidates.filter((a) => a.id === attachmentId);
    if (serverRef !== undefined) {
      const server = await this.resolveServer(serverRef, project);
      candidates = candidates.filter((a) => a.serverId === server.id);
    }
    if (candidates.length === 0) {
      throw new BerthError('CONFLICT', `volume ${volume.name} is not attached${serverRef ? ` to ${serverRef}` : ''}`, {
        hint: 'see where it is attached with `berth attachment list`',
        details: { volumeId: volume.id, actual: volume.status },
      });
    }
    if (candidates.length > 1) {
      throw new BerthError('VALIDATION', `volume ${volume.name} is attached to ${candidates.length} servers; name one with --server`, {
        details: { servers: candidates.map((a) => a.serverId) },
      });
    }
    const attachment = candidates[0]!;
    if (!detachableFrom(force).includes(attachment.status)) {
      throw new BerthError('CONFLICT', `attachment ${attachment.id} is ${attachment.status}${force ? '' : '; only an attached volume can be detached'}`, {
        hint: attachment.status.startsWith('error') ? `clean it up with: berth detach ${volume.name} --force` : 'wait for the running operation to finish',
        details: { attachmentId: attachment.id, actual: attachment.status },
      });
    }
    return attachment;
  }

  private async resolveVolume(ref: Ref, project: string): Promise<Volume> {
    const volume = isUuid(ref) ? await this.store.volumes.get(ref) : await this.store.volumes.findByName(project, ref);
    if (!volume || volume.projectId !== project) {
      throw new BerthError('NOT_FOUND', `no volume ${JSON.stringify(ref)}`, { hint: 'list volumes with `berth volume list`' });
    }
    return volume;
  }

  private async resolveServer(ref: Ref, project: string): Promise<Server> {
    const server = isUuid(ref) ? await this.store.servers.get(ref) : await this.store.servers.findByName(project, ref);
    if (!server || server.projectId !== project) {
      throw new BerthError('NOT_FOUND', `no server ${JSON.stringify(ref)}`, { hint: 'list servers with `berth server list`' });
    }
    return server;
  }

  private async localHost(): Promise<Host> {
    this.localHostRecord ??= await this.findOrCreateHost(this.identity.hostname);
    return this.localHostRecord;
  }

  private async findOrCreateHost(name: string): Promise<Host> {
    const found = await this.store.hosts.findByName(name);
    if (found) return found;
    try {
      return await this.store.hosts.create({ name });
    } catch (error) {
      // Another process created it between our read and our insert.
      const again = await this.store.hosts.findByName(name);
      if (again) return again;
      throw error;
    }
  }

  /** This host's own server in `project`, created on first use. */
  private async localServer(project: string): Promise<Server> {
    const host = await this.localHost();
    const name = serverNameFor(this.identity.hostname);
    const found = await this.store.servers.findByName(project, name);
    if (found) return found;
    try {
      return await this.store.servers.create({ name, projectId: project, hostId: host.id });
    } catch (error) {
      const again = await this.store.servers.findByName(project, name);
      if (again) return again;
      throw error;
    }
  }
}

