import { randomUUID } from 'node:crypto';
import {
  BerthError,
  MAX_OPERATION_LIST,
  parseWith,
  zAttachment,
  zAttachRequest,
  zConnectionInfo,
  zConnector,
  zCreateServerRequest,
  zCreateVolumeRequest,
  zDetachRequest,
  zForgetHostOptions,
  zForgetHostReport,
  zHostRef,
  zOperation,
  zOperationPruneReport,
  zOperationPruneRequest,
  zReserveAttachmentRequest,
  zServer,
  zSizeBytes,
  zVolume,
  type AttachRequest,
  type Attachment,
  type AttachmentConnection,
  type BerthService,
  type Connector,
  type CreateServerRequest,
  type CreateVolumeRequest,
  type DetachRequest,
  type DoctorEntry,
  type ForgetHostOptions,
  type ForgetHostReport,
  type Host,
  type Operation,
  type OperationOutcome,
  type OperationListFilter,
  type OperationPruneReport,
  type OperationPruneRequest,
  type PluginReport,
  type ProjectScope,
  type ReconcileOptions,
  type ReconcileReport,
  type Ref,
  type ReserveAttachmentRequest,
  type Server,
  type StartedOperation,
  type Volume,
  type VolumeStatus,
} from '@berth/core';
import { checked } from './checked-answer.js';
import { apiPath, HttpClient, type HttpClientOptions } from './http-client.js';
import {
  zAttachmentList,
  zCredentials,
  zDoctorReport,
  zHostList,
  zOperationList,
  zOperationOutcomeBody,
  zPluginReport,
  zReconcileOptions,
  zReconcileReport,
  zServerList,
  zVolumeList,
} from './wire.js';

/** Options of `RemoteBerthService`. */
export interface RemoteBerthOptions extends HttpClientOptions {
  /** How long one long-poll of an operation waits on the server (default 30 s; the server caps it). */
  pollWaitSeconds?: number;
  /** How long a reconcile may run on the server before the client gives up (default 10 min). */
  reconcileTimeoutMs?: number;
}

const EMPTY_REPORT: PluginReport = { loaded: [], failed: [] };

function field(body: unknown, key: string): unknown {
  return typeof body === 'object' && body !== null ? (body as Record<string, unknown>)[key] : undefined;
}

function projectQuery(scope: ProjectScope | undefined): Record<string, string | undefined> {
  return { projectId: scope?.projectId };
}

/**
 * What begins the `Idempotency-Key` the client gives a start its caller gave none (then a UUID):
 * the API knows such a key for the client's own, replays by it, and shows it to no one (an
 * operation's `idempotencyKey` reads null, as a start without a key does). A caller's own key
 * should not begin with it.
 */
export const CLIENT_KEY_PREFIX = 'berth-client:';

/**
 * BerthService over HTTP: every method is one call (or, for attach and detach, a start — which
 * carries the outcome when the operation ends within `Prefer: wait` — and else long-polls) to the berth API, and every error answer becomes the BerthError it stands for. The
 * same request checks as the embedded service run first, so a bad request fails with the same
 * message either way. Used by `berth --api`.
 */
export class RemoteBerthService implements BerthService {
  private readonly http: HttpClient;
  private readonly pollWaitSeconds: number;
  private readonly reconcileTimeoutMs: number;
  private pluginReport: PluginReport = EMPTY_REPORT;

  constructor(options: RemoteBerthOptions) {
    this.http = new HttpClient(options);
    this.pollWaitSeconds = Math.max(1, Math.min(600, Math.floor(options.pollWaitSeconds ?? 30)));
    this.reconcileTimeoutMs = Math.max(0, options.reconcileTimeoutMs ?? 600_000);
  }

  /** The API's base URL. */
  get url(): string {
    return this.http.url;
  }

  /** Fetch the server's plugin report (what `plugins()` returns); a token that may not see it gets an empty one. */
  async refreshPlugins(): Promise<PluginReport> {
    try {
      const { body } = await this.http.request({ method: 'GET', path: '/v1/plugins' });
      this.pluginReport = checked(zPluginReport, body, 'plugin report');
    } catch (error) {
      if (!(BerthError.is(error) && error.code === 'FORBIDDEN')) throw error;
      this.pluginReport = EMPTY_REPORT;
    }
    return this.pluginReport;
  }

  // ---- volumes -------------------------------------------------------------------------------

  async createVolume(request: CreateVolumeRequest): Promise<Volume> {
    const { projectId, ...body } = parseWith(zCreateVolumeRequest, request, 'volume');
    const answer = await this.http.request({ method: 'POST', path: '/v1/volumes', query: { projectId }, body });
    return checked(zVolume, answer.body, 'volume');
  }

  async volumeCredentials(ref: Ref, scope?: ProjectScope): Promise<Record<string, string>> {
    const answer = await this.http.request({ method: 'GET', path: apiPath`/v1/volumes/${ref}/credentials`, query: projectQuery(scope) });
    return checked(zCredentials, answer.body, 'credentials').credentials;
  }

  async listVolumes(filter: ProjectScope & { status?: VolumeStatus } = {}): Promise<Volume[]> {
    const answer = await this.http.request({ method: 'GET', path: '/v1/volumes', query: { projectId: filter.projectId, status: filter.status } });
    return checked(zVolumeList, answer.body, 'volume list').volumes;
  }

  async getVolume(ref: Ref, scope?: ProjectScope): Promise<Volume> {
    const answer = await this.http.request({ method: 'GET', path: apiPath`/v1/volumes/${ref}`, query: projectQuery(scope) });
    return checked(zVolume, answer.body, 'volume');
  }

  async deleteVolume(ref: Ref, scope?: ProjectScope): Promise<void> {
    await this.http.request({ method: 'DELETE', path: apiPath`/v1/volumes/${ref}`, query: projectQuery(scope) });
  }

  async extendVolume(ref: Ref, newSizeBytes: number, scope?: ProjectScope): Promise<Volume> {
    const sizeBytes = parseWith(zSizeBytes, newSizeBytes, 'size');
    const answer = await this.http.request({ method: 'POST', path: apiPath`/v1/volumes/${ref}/extend`, query: projectQuery(scope), body: { sizeBytes } });
    return checked(zVolume, answer.body, 'volume');
  }

  // ---- servers and hosts ---------------------------------------------------------------------

  async createServer(request: CreateServerRequest): Promise<Server> {
    const { projectId, ...body } = parseWith(zCreateServerRequest, request, 'server');
    const answer = await this.http.request({ method: 'POST', path: '/v1/servers', query: { projectId }, body });
    return checked(zServer, answer.body, 'server');
  }

  async listServers(filter: ProjectScope = {}): Promise<Server[]> {
    const answer = await this.http.request({ method: 'GET', path: '/v1/servers', query: projectQuery(filter) });
    return checked(zServerList, answer.body, 'server list').servers;
  }

  async getServer(ref: Ref, scope?: ProjectScope): Promise<Server> {
    const answer = await this.http.request({ method: 'GET', path: apiPath`/v1/servers/${ref}`, query: projectQuery(scope) });
    return checked(zServer, answer.body, 'server');
  }

  async deleteServer(ref: Ref, scope?: ProjectScope): Promise<void> {
    await this.http.request({ method: 'DELETE', path: apiPath`/v1/servers/${ref}`, query: projectQuery(scope) });
  }

  async listHosts(): Promise<Host[]> {
    const answer = await this.http.request({ method: 'GET', path: '/v1/hosts' });
    return checked(zHostList, answer.body, 'host list').hosts;
  }

  /** `DELETE /v1/hosts/{host}` (admin): forget a host that is gone; the report of what was done. */
  async forgetHost(ref: Ref, options: ForgetHostOptions = {}): Promise<ForgetHostReport> {
    const host = parseWith(zHostRef, ref, 'host');
    const { assumeDead } = parseWith(zForgetHostOptions, options, 'host forget options');
    // Each attachment's export is removed on the backend: as long as a reconcile may take.
    const answer = await this.http.request({ method: 'DELETE', path: apiPath`/v1/hosts/${host}`, query: { assumeDead }, extraTimeoutMs: this.reconcileTimeoutMs });
    return checked(zForgetHostReport, answer.body, 'host forget report');
  }

  // ---- attach / detach -----------------------------------------------------------------------

  async startAttach(request: AttachRequest): Promise<StartedOperation> {
    return this.attachRequest(request, false);
  }

  /** Attach and wait: the start asks `Prefer: wait`, so an attach that ends in time is one request. */
  async attach(request: AttachRequest): Promise<OperationOutcome> {
    return (await this.attachRequest(request, true)).done;
  }

  async startDetach(request: DetachRequest): Promise<StartedOperation> {
    return this.detachRequest(request, false);
  }

  /** Detach and wait, in one request when it ends in time (as `attach`). */
  async detach(request: DetachRequest): Promise<OperationOutcome> {
    return (await this.detachRequest(request, true)).done;
  }

  private attachRequest(request: AttachRequest, wait: boolean): Promise<StartedOperation> {
    const { volume, projectId, idempotencyKey, ...body } = parseWith(zAttachRequest, request, 'attach request');
    return this.start(apiPath`/v1/volumes/${volume}/attach`, projectId, idempotencyKey, body, wait);
  }

  private detachRequest(request: DetachRequest, wait: boolean): Promise<StartedOperation> {
    const { volume, projectId, idempotencyKey, ...body } = parseWith(zDetachRequest, request, 'detach request');
    return this.start(apiPath`/v1/volumes/${volume}/detach`, projectId, idempotencyKey, body, wait);
  }

  // ---- the three-phase attachments API -------------------------------------------------------

  async reserveAttachment(request: ReserveAttachmentRequest): Promise<AttachmentConnection> {
    const { projectId, ...body } = parseWith(zReserveAttachmentRequest, request, 'attachment');
    const answer = await this.http.request({ method: 'POST', path: '/v1/attachments', query: { projectId }, body });
    return this.connection(answer.body);
  }

  async initializeAttachment(id: string, connector: Connector, scope?: ProjectScope): Promise<AttachmentConnection> {
    const parsed = parseWith(zConnector, connector, 'connector');
    const answer = await this.http.request({ method: 'PUT', path: apiPath`/v1/attachments/${id}`, query: projectQuery(scope), body: { connector: parsed } });
    return this.connection(answer.body);
  }

  async completeAttachment(id: string, scope?: ProjectScope): Promise<Attachment> {
    const answer = await this.http.request({ method: 'POST', path: apiPath`/v1/attachments/${id}/complete`, query: projectQuery(scope) });
    return checked(zAttachment, answer.body, 'attachment');
  }

  async deleteAttachment(id: string, scope?: ProjectScope): Promise<Volume> {
    const answer = await this.http.request({ method: 'DELETE', path: apiPath`/v1/attachments/${id}`, query: projectQuery(scope) });
    return checked(zVolume, field(answer.body, 'volume'), 'volume');
  }

  async listAttachments(filter: ProjectScope & { volume?: Ref; server?: Ref } = {}): Promise<Attachment[]> {
    const answer = await this.http.request({
      method: 'GET',
      path: '/v1/attachments',
      query: { projectId: filter.projectId, volume: filter.volume, server: filter.server },
    });
    return checked(zAttachmentList, answer.body, 'attachment list').attachments;
  }

  async getAttachment(id: string, scope?: ProjectScope): Promise<Attachment> {
    const answer = await this.http.request({ method: 'GET', path: apiPath`/v1/attachments/${id}`, query: projectQuery(scope) });
    return checked(zAttachment, answer.body, 'attachment');
  }

  // ---- operations and host -------------------------------------------------------------------

  async getOperation(id: string): Promise<Operation> {
    const answer = await this.http.request({ method: 'GET', path: apiPath`/v1/operations/${id}` });
    return checked(zOperation, answer.body, 'operation');
  }

  async listOperations(filter: OperationListFilter = {}): Promise<Operation[]> {
    // The API's own default is the newest 100: a caller that names no limit asks for what the API allows.
    const limit = filter.limit === undefined ? MAX_OPERATION_LIST : Math.min(filter.limit, MAX_OPERATION_LIST);
    const answer = await this.http.request({ method: 'GET', path: '/v1/operations', query: { state: filter.state, kind: filter.kind, volumeId: filter.volumeId, limit: String(limit) } });
    return checked(zOperationList, answer.body, 'operation list').operations;
  }

  /** `POST /v1/operations/prune` (admin). The API takes an age as text: whole seconds, rounded up. */
  async pruneOperations(request: OperationPruneRequest): Promise<OperationPruneReport> {
    const { olderThanMs, endedBefore, dryRun } = parseWith(zOperationPruneRequest, request, 'operation prune');
    const body = { olderThan: `${Math.ceil(olderThanMs / 1000)}s`, ...(endedBefore === undefined ? {} : { endedBefore }), ...(dryRun === undefined ? {} : { dryRun }) };
    const answer = await this.http.request({ method: 'POST', path: '/v1/operations/prune', body });
    return checked(zOperationPruneReport, answer.body, 'operation prune report');
  }

  async connector(): Promise<Connector> {
    const answer = await this.http.request({ method: 'GET', path: '/v1/connector' });
    return checked(zConnector, answer.body, 'connector');
  }

  async doctor(): Promise<DoctorEntry[]> {
    // Its checks run commands on the API's host one after another: the answer may be slow to come.
    const answer = await this.http.request({ method: 'GET', path: '/v1/doctor', extraTimeoutMs: 0 });
    return checked(zDoctorReport, answer.body, 'doctor report').entries;
  }

  plugins(): PluginReport {
    return this.pluginReport;
  }

  /**
   * `berth reconcile` on the API's host (`POST /v1/reconcile`, an admin token): the server compares
   * its store with the backends and its own devices. The answer comes once every fix is applied,
   * so this request may take as long as they do (`reconcileTimeoutMs`).
   */
  async reconcile(options: ReconcileOptions = {}): Promise<ReconcileReport> {
    const body = parseWith(zReconcileOptions, options, 'reconcile options');
    const answer = await this.http.request({ method: 'POST', path: '/v1/reconcile', body, extraTimeoutMs: this.reconcileTimeoutMs });
    return checked(zReconcileReport, answer.body, 'reconcile report');
  }

  /** Close the kept-alive connections; the operations run on the server and are not touched. */
  async close(): Promise<void> {
    this.http.close();
  }

  // ---- internals -----------------------------------------------------------------------------

  private connection(body: unknown): AttachmentConnection {
    const attachment = checked(zAttachment, field(body, 'attachment'), 'attachment');
    const info = field(body, 'connectionInfo');
    return { attachment, connectionInfo: info === null || info === undefined ? undefined : checked(zConnectionInfo, info, 'connection_info') };
  }

  /**
   * POST the start. With `wait` it asks `Prefer: wait=<pollWaitSeconds>`: a server that honours it
   * answers 200 with the outcome of an operation that succeeded in that time (no long-poll at all);
   * a 202 (still running, failed, or a server without `Prefer` support) is followed by long-polls.
   */
  private async start(
    path: string,
    projectId: string | undefined,
    idempotencyKey: string | undefined,
    body: Record<string, unknown>,
    wait: boolean,
  ): Promise<StartedOperation> {
    const answer = await this.http.request({
      method: 'POST',
      path,
      query: { projectId },
      body,
      // Every start carries a key: the caller's, or one of the client's own (`berth-client:<uuid>`),
      // so a start a replica took and then froze on goes to the next one, which replays the
      // operation if the first journalled it (keys live in the shared store). The API shows the
      // client's own key as null, as embedded mode shows a start without one.
      idempotencyKey: idempotencyKey ?? `${CLIENT_KEY_PREFIX}${randomUUID()}`,
      ...(wait ? { headers: { prefer: `wait=${this.pollWaitSeconds}` }, waitMs: this.pollWaitSeconds * 1000 } : {}),
    });
    if (answer.status === 200) {
      const outcome = checked(zOperationOutcomeBody, answer.body, 'operation outcome');
      const done: OperationOutcome = { operation: outcome.operation, volume: outcome.volume, attachment: outcome.attachment ?? undefined };
      return { operation: outcome.operation, done: Promise.resolve(done) };
    }
    const operation = checked(zOperation, answer.body, 'operation');
    const done = this.outcome(operation, projectId);
    // A caller that only wants the operation must not get an unhandled rejection; awaiting `done`
    // still sees the error.
    done.catch(() => undefined);
    return { operation, done };
  }

  /** Long-poll the operation's outcome until it ends: the same outcome, or error, as embedded. */
  private async outcome(operation: Operation, projectId: string | undefined): Promise<OperationOutcome> {
    const deadline = Date.parse(operation.deadlineAt);
    // The server ends every operation by its deadline; past that (plus slack) something is wrong.
    const giveUpAt = (Number.isFinite(deadline) ? deadline : Date.now() + 3_600_000) + 120_000;
    for (;;) {
      const answer = await this.http
        .request({
          method: 'GET',
          path: apiPath`/v1/operations/${operation.id}/outcome`,
          query: { wait: `${this.pollWaitSeconds}s`, projectId },
          waitMs: this.pollWaitSeconds * 1000,
        })
        .catch((error: unknown) => {
          throw lostWhileWaiting(error, operation);
        });
      if (answer.status === 200) {
        const outcome = checked(zOperationOutcomeBody, answer.body, 'operation outcome');
        return { operation: outcome.operation, volume: outcome.volume, attachment: outcome.attachment ?? undefined };
      }
      if (Date.now() > giveUpAt) {
        throw new BerthError('TIMEOUT', `operation ${operation.id} is still running past its deadline`, {
          hint: `look at it with: berth operation show ${operation.id}`,
          details: { operationId: operation.id },
        });
      }
    }
  }
}

/**
 * The API gone silent or unreachable while an operation it started was waited for: the operation
 * exists and may still run (or have ended) — the error says which one and how to see it, instead
 * of only "cannot reach the berth API" over an attach that had started.
 */
function lostWhileWaiting(error: unknown, operation: Operation): unknown {
  // Only the client's own "no answer" errors: a problem the API answered (the operation's own TIMEOUT) is the outcome.
  if (!BerthError.is(error) || !(error.details.unreachable === true || error.details.unanswered === true)) return error;
  return new BerthError(error.code, `${operation.kind} ${operation.id} was started, and then ${error.message}`, {
    hint: `it may still run, or have ended: \`berth operation show ${operation.id}\` once the API answers (${error.hint ?? 'check `berth serve`'})`,
    details: { ...error.details, operationId: operation.id, outcomeUnknown: true },
    cause: error,
  });
}
