import { WORK_DONE_CHANNEL, workDoneNotice } from '../agent-protocol.js';
import { zHostName } from '../config.js';
import { zConnector, type Connector } from '../connection.js';
import { BerthError, parseWith, toBerthError } from '../errors.js';
import type { Attachment, AttachmentStatus, Host, Operation } from '../model.js';
import { ownerHost, ownerState } from '../owner.js';
import { backendVolume, deleteAttachmentRecord, transitionAttachment } from '../pipeline/context.js';
import { terminateUnshared } from '../pipeline/device-sharing.js';
import { summarize } from '../pipeline/operation-runner.js';
import type { ForgetHostReport, ForgottenAttachment } from '../reports.js';
import { zForgetHostOptions, zHostRef, type ForgetHostOptions } from '../requests.js';
import type { Store } from '../store.js';
import type { ServiceParts } from './parts.js';
import { isUuid } from './resolve.js';

// `berth host forget`: a host that is gone for good (the machine dead, never coming back) must
// not keep its volumes for good. Nova deletes a dead compute service's records and Cinder's
// `attachment-delete`/`force-detach` drop an attachment without the host; Kubernetes removes the
// VolumeAttachments of a deleted node. Here the controller side of every attachment on the host
// is finished as a forced detach finishes it (the backend's export removed), nothing is asked of
// the host, and what the host's agent was to run is called off — never under a live process.

/** The journal row that ends an operation a dead process left on a forgotten host. */
const FORGET_STEP = 'forget_host';

/** Attachment statuses that go through `detaching` before their record goes (as a detach does). */
const DETACH_FIRST: readonly AttachmentStatus[] = ['attached', 'error_detaching', 'error_attaching'];

/**
 * The host `ref` names, as `berth host forget` and every client resolve it (`pickHost`): the host
 * with that id when `ref` is UUID-shaped, else the host with that name.
 */
async function findHost(store: Store, ref: string): Promise<Host | undefined> {
  // An id-shaped ref is an id only, as for volumes and servers: a host *named* like another
  // host's id (made through a server's `host`) would otherwise be forgotten by a repeated
  // `DELETE /v1/hosts/<that id>` — "safe to repeat" — once the real one was gone (an explorer).
  return isUuid(ref) ? store.hosts.get(ref) : store.hosts.findByName(ref);
}

/** Forget host `ref` (name or id): see `BerthService.forgetHost`. */
export async function forgetHost(parts: ServiceParts, ref: string, options: ForgetHostOptions = {}): Promise<ForgetHostReport> {
  const { store, config, logger } = parts;
  const wanted = parseWith(zHostRef, ref, 'host');
  const assumeDead = parseWith(zForgetHostOptions, options, 'host forget options').assumeDead === true;
  const host = await findHost(store, wanted);
  const report: ForgetHostReport = {
    host: { id: host?.id ?? null, name: host?.name ?? wanted },
    alreadyGone: host === undefined,
    removed: false,
    attachments: [],
    operations: [],
    workItems: [],
    servers: [],
    deviceRecords: 0,
    // The tokens live in the config file, which berth does not write: the user removes them.
    agentTokens: config.api.tokens.filter((t) => t.role === 'agent' && t.host !== undefined && t.host === (host?.name ?? wanted)).map((t) => t.name),
  };
  if (host === undefined) {
    // Not "already gone" when no host could ever have been called that: a typo'd ref is an error.
    if (!isUuid(wanted) && !zHostName.safeParse(wanted).success) parseWith(zHostName, wanted, 'host (a name or an id)');
    return report;
  }
  refuseLiveHost(parts, host);
  const deviceRecords = (await store.devices.list({ hostId: host.id })).length;

  const onHost = await store.attachments.list({ hostId: host.id });
  const servers = await store.servers.list({ hostId: host.id });
  const running = await operationsOn(store, host, onHost, servers.map((s) => s.id));
  // No agent record: nothing tells whether the machine runs (another replica's or an embedded
  // berth's own host, a host only servers named). With something at stake, only the caller can say.
  if (host.agent === null && !assumeDead && (onHost.length > 0 || running.length > 0)) throw livenessUnknown(host, onHost.length);
  // Nothing is touched while a live process works on the host: its operation ends by its deadline
  // (the agent is silent, so its host steps give up then), and forget is run again.
  const live: Operation[] = [];
  for (const op of running) if (await ownerLive(parts, host, op, assumeDead)) live.push(op);
  if (live.length > 0) throw busy(host, live);

  for (const operation of running) {
    await endAbandoned(parts, host, operation, assumeDead);
    report.operations.push({ id: operation.id, kind: operation.kind });
  }
  report.workItems = await cancelOpenWork(parts, host);

  for (const attachment of onHost) report.attachments.push(await dropAttachment(parts, host, attachment, assumeDead, report));
  if (report.attachments.some((a) => a.state !== 'dropped')) {
    logger.warn({ hostId: host.id, host: host.name, kept: report.attachments.filter((a) => a.state !== 'dropped').map((a) => a.id) }, 'host forget: some attachments could not be dropped; the host is kept');
    return report;
  }

  for (const server of servers) {
    await parts.serverLocks.withLock(server.id, () => store.servers.delete(server.id)).catch((error: unknown) => {
      if (!(BerthError.is(error) && error.code === 'NOT_FOUND')) throw error;
    });
    report.servers.push({ id: server.id, name: server.name, projectId: server.projectId });
  }
  // The last word is the store's: a server, attachment or work item made meanwhile keeps the host.
  await stillGone(parts, host, report);
  await store.hosts.delete(host.id);
  report.removed = true;
  report.deviceRecords = deviceRecords;
  logger.warn(
    { hostId: host.id, host: host.name, attachments: report.attachments.length, operations: report.operations.length, servers: report.servers.length },
    'host forgotten: its attachments were dropped without it',
  );
  return report;
}

/** CONFLICT for the host berth runs on, or one whose agent was heard from lately. */
function refuseLiveHost(parts: ServiceParts, host: Host): void {
  if (host.name === parts.identity.hostname) {
    throw new BerthError('CONFLICT', `host ${host.name} is the host this berth runs on; it is not gone`, {
      hint: 'forget a host from a berth running elsewhere (another machine, or the API with --api); to free a volume here, use `berth detach --force`',
      details: { hostId: host.id, reason: 'this-host' },
    });
  }
  const seen = host.agent === null ? Number.NaN : Date.parse(host.agent.lastSeenAt);
  const silentMs = Date.now() - seen;
  const { offlineAfterMs } = parts.config.agent;
  if (Number.isFinite(seen) && silentMs <= offlineAfterMs) {
    throw new BerthError('CONFLICT', `host ${host.name}'s agent is online (last heard from ${Math.max(0, Math.round(silentMs / 1000))} s ago); forget is for a host that is gone`, {
      hint: `while the host runs, detach its volumes (\`berth detach <volume> --force\`); if it is really gone, make sure \`berth agent\` no longer runs there and try again once it has been silent for ${Math.round(offlineAfterMs / 1000)} s (agent.offlineAfterMs)`,
      details: { hostId: host.id, reason: 'agent-online', lastSeenAt: host.agent?.lastSeenAt ?? null, offlineAfterMs },
    });
  }
}

/** CONFLICT for a host with no agent record and something at stake, unless the caller says it is dead. */
function livenessUnknown(host: Host, attachments: number): BerthError {
  return new BerthError('CONFLICT', `host ${host.name} has no berth agent: berth cannot tell whether it still runs (and writes to its ${attachments} attached volume(s)); nothing was changed`, {
    hint: `fence the machine first (power it off, or cut it from the storage network), then run \`berth host forget ${host.name} --assume-dead\` (API: DELETE /v1/hosts/{host}?assumeDead=true)`,
    details: { hostId: host.id, reason: 'liveness-unknown' },
  });
}

/**
 * Re-read the host and check again that its agent is silent, right before an export is removed
 * and before the host goes: the check before the work is minutes old by then. CONFLICT, with
 * what was done so far in `details`, when it came back (or the host went meanwhile).
 */
async function stillGone(parts: ServiceParts, host: Host, report: ForgetHostReport): Promise<void> {
  const now = await parts.store.hosts.get(host.id);
  const done = { dropped: report.attachments.filter((a) => a.state === 'dropped').map((a) => a.id), operations: report.operations.map((o) => o.id) };
  if (now === undefined) {
    throw new BerthError('CONFLICT', `host ${host.name} was removed by another process while it was being forgotten; nothing more was changed`, {
      hint: 'see `berth host list`',
      details: { hostId: host.id, reason: 'host-gone', ...done },
    });
  }
  try {
    refuseLiveHost(parts, now);
  } catch (error) {
    const e = toBerthError(error);
    throw new BerthError('CONFLICT', `host ${host.name} came back while it was being forgotten (${e.message}); nothing more was changed`, {
      hint: `the host runs: detach its remaining volumes with it (\`berth detach <volume>\`); what was dropped so far is listed in details`,
      details: { ...e.details, ...done },
      cause: e,
    });
  }
}

/**
 * Whether the operation's owner may still be acting. An owner on the host being forgotten (a berth
 * that ran there: embedded on a shared store, or a replica) is judged by the operation's lease,
 * since the agent's silence says nothing of it and this process cannot look at its pid: alive
 * until the lease passed; without a lease, alive unless the caller asserts the machine is dead.
 * Any other owner as everywhere (`ownerState`).
 */
async function ownerLive(parts: ServiceParts, host: Host, op: Operation, assumeDead: boolean, store: Store = parts.store): Promise<boolean> {
  if (host.name !== parts.identity.hostname && ownerHost(op.owner) === host.name) {
    const expiry = await store.operations.leaseExpiry?.(op.id);
    if (typeof expiry === 'string') return Date.parse(expiry) > Date.now();
    return !assumeDead;
  }
  return ownerState(op.owner, parts.identity.hostname, parts.owner).state !== 'dead';
}

/** The running operations on the host: by its id, or through one of its attachments or servers. */
async function operationsOn(store: Store, host: Host, attachments: readonly Attachment[], serverIds: readonly string[]): Promise<Operation[]> {
  const attachmentIds = new Set(attachments.map((a) => a.id));
  const servers = new Set(serverIds);
  return (await store.operations.list({ state: 'running' })).filter(
    (op) => op.hostId === host.id || (op.attachmentId !== null && attachmentIds.has(op.attachmentId)) || (op.serverId !== null && servers.has(op.serverId)),
  );
}

/** CONFLICT naming the operations live processes run on the host. */
function busy(host: Host, operations: readonly Operation[]): BerthError {
  const latest = operations.map((op) => op.deadlineAt).sort().at(-1) ?? '';
  const ids = operations.map((op) => op.id);
  // Owned by a berth process on the host itself without a lease: nothing here can tell it died.
  const there = operations.some((op) => ownerHost(op.owner) === host.name);
  return new BerthError('CONFLICT', `${operations.length} operation(s) on host ${host.name} are still running in a live process (${operations.map((op) => `${op.kind} ${op.id}`).join(', ')}); nothing was changed`, {
    hint:
      `they end by their deadline (the last at ${latest}, plus the time their undo takes), since the host's agent does not answer; see \`berth operation list --state running\`, then run \`berth host forget ${host.name}\` again` +
      (there ? `; those a berth on ${host.name} itself owns end with it: once the machine is fenced (powered off), run \`berth host forget ${host.name} --assume-dead\`` : ''),
    details: { hostId: host.id, reason: 'operations-running', operations: ids },
  });
}

/**
 * End an operation on the host whose process died: taken over (a compare-and-swap on its owner:
 * of two processes, one gets it), its open work items cancelled, a `forget_host` row journalled
 * and the operation finished `failed` (CANCELLED) — its host steps were never undone, the host is
 * gone; its attachment is dropped next, with the rest.
 */
async function endAbandoned(parts: ServiceParts, host: Host, operation: Operation, assumeDead: boolean): Promise<void> {
  const { store, owner } = parts;
  // One transaction: taken over, items cancelled, journalled and finished, or nothing of it (a
  // failure leaves the operation its dead owner's, for a later forget or recovery to take).
  const end = (): Promise<void> =>
    store.transaction(async (tx) => {
      // Judged again inside the transaction that takes it: an owner judged by its lease may have
      // renewed it since (a stalled event loop, a database blip), and the compare-and-swap below
      // checks the owner, not the lease. SQLite's transactions run one at a time and PostgreSQL's
      // are serializable, so a renewal cannot slip in between this read and the swap.
      if (await ownerLive(parts, host, operation, assumeDead, tx)) throw busy(host, [operation]);
      try {
        await tx.operations.setOwner(operation.id, owner, operation.owner);
      } catch (error) {
        const e = toBerthError(error);
        throw new BerthError('CONFLICT', `operation ${operation.id} on host ${host.name} was taken over by another process meanwhile; nothing more was changed`, {
          hint: `let it finish (\`berth operation show ${operation.id}\`), then run \`berth host forget ${host.name}\` again`,
          details: { hostId: host.id, reason: 'operations-running', operations: [operation.id] },
          cause: e,
        });
      }
      for (const item of (await tx.workItems?.list({ operationId: operation.id, state: ['pending', 'claimed'] })) ?? []) {
        const cancelled = await tx.workItems?.cancel(item.id, { code: 'CANCELLED', message: `cancelled: host ${host.name} was forgotten` });
        if (cancelled !== undefined) await tx.notifications?.notify(WORK_DONE_CHANNEL, workDoneNotice(cancelled));
      }
      // Fenced by this process's ownership, as every journal write of a process that took an operation over.
      const seq = await tx.operations.startStep(operation.id, FORGET_STEP, 'undo', owner);
      await tx.operations.endStep(operation.id, seq, { state: 'done', data: { hostId: host.id, host: host.name } }, owner);
      await tx.operations.finish(operation.id, {
        state: 'failed',
        error: summarize(
          new BerthError('CANCELLED', `host ${host.name} was forgotten (berth host forget) while this ${operation.kind} was unfinished: its host steps were not undone`, {
            hint: 'the attachment was dropped and the export removed with the host; attach the volume elsewhere',
          }),
        ),
      });
    });
  await (operation.volumeId === null ? end() : parts.volumeLocks.withLock(operation.volumeId, end));
}

/**
 * Cancel a work item no agent will run, and say so on `work_done` as an agent's report would (a
 * waiter, if any, learns it at once); one that ended meanwhile is left as it ended.
 */
async function cancelItem(store: Store, id: string, host: Host): Promise<boolean> {
  try {
    await store.transaction(async (tx) => {
      const cancelled = await tx.workItems?.cancel(id, { code: 'CANCELLED', message: `cancelled: host ${host.name} was forgotten` });
      if (cancelled !== undefined) await tx.notifications?.notify(WORK_DONE_CHANNEL, workDoneNotice(cancelled));
    });
    return true;
  } catch (error) {
    if (BerthError.is(error) && (error.code === 'CONFLICT' || error.code === 'NOT_FOUND')) return false;
    throw error;
  }
}

/**
 * Cancel the host's open work items whose operation is not running any more (a stray one), or was
 * just ended here. One of a running operation (made by a live process since the check) is left:
 * the store then keeps the host, and forget says so.
 */
async function cancelOpenWork(parts: ServiceParts, host: Host): Promise<Array<{ id: string; step: string }>> {
  const { store } = parts;
  const cancelled: Array<{ id: string; step: string }> = [];
  for (const item of (await store.workItems?.list({ hostId: host.id, state: ['pending', 'claimed'] })) ?? []) {
    const operation = await store.operations.get(item.operationId);
    if (operation?.state === 'running') continue;
    if (await cancelItem(store, item.id, host)) cancelled.push({ id: item.id, step: item.step });
  }
  return cancelled;
}

/**
 * Whom the attachment's volume was exported to: its recorded connector, else the one its attach
 * journalled (an `initialize` that exported and failed before its commit), else — for one that
 * records an export — the host's registered connector. Never this machine's: the export is the
 * forgotten host's.
 */
async function exportedTo(store: Store, attachment: Attachment, host: Host): Promise<Connector | undefined> {
  if (attachment.connector !== null) return attachment.connector;
  for (const op of await store.operations.list({ kind: 'attach', volumeId: attachment.volumeId })) {
    if (op.attachmentId !== attachment.id) continue;
    const journalled = zConnector.safeParse(op.steps.find((s) => s.phase === 'do' && s.name === 'connector' && s.data?.connector !== undefined)?.data?.connector);
    if (journalled.success) return journalled.data;
  }
  return attachment.connectionInfo !== null && host.connector !== null ? host.connector : undefined;
}

/**
 * Drop one attachment of the host, under its volume's lock: through `detaching` (as a detach
 * goes), the backend's export for its connector removed unless another attachment there still
 * uses it (decided under the export's lease, as `terminate` does), then the record goes with
 * the volume's status recomputed and — with the volume's last attachment there — berth's device
 * record, in one transaction. A failed export removal keeps the record (`error_detaching` /
 * `error_attaching`, with the reason) and so the host: running forget again finishes it.
 */
async function dropAttachment(parts: ServiceParts, host: Host, found: Attachment, assumeDead: boolean, report: ForgetHostReport): Promise<ForgottenAttachment> {
  const { store, catalog, config } = parts;
  const volume = await store.volumes.get(found.volumeId);
  const server = await store.servers.get(found.serverId);
  const entry: ForgottenAttachment = {
    id: found.id,
    volumeId: found.volumeId,
    volume: volume?.name ?? found.volumeId,
    server: server?.name ?? null,
    status: found.status,
    export: 'none',
    state: 'dropped',
    volumeStatus: null,
    error: null,
    errorCode: null,
  };
  const failed = (state: 'failed' | 'skipped', error: BerthError): ForgottenAttachment => ({ ...entry, state, error: error.message, errorCode: error.code });
  return parts.volumeLocks.withLock(found.volumeId, async () => {
    let attachment = await store.attachments.get(found.id);
    if (attachment === undefined) return { ...entry, volumeStatus: (await store.volumes.get(found.volumeId))?.status ?? null };
    const owners: Operation[] = [];
    for (const op of await store.operations.list({ state: 'running', volumeId: attachment.volumeId })) {
      if (op.attachmentId === attachment.id && (await ownerLive(parts, host, op, assumeDead))) owners.push(op);
    }
    if (owners.length > 0) return failed('skipped', busy(host, owners));
    // Right before its export goes: the host may have come back since forget began (CONFLICT, the rest left).
    await stillGone(parts, host, report);
    try {
      const current = await store.volumes.require(attachment.volumeId);
      if (DETACH_FIRST.includes(attachment.status)) {
        attachment = (await transitionAttachment(store, attachment.id, [attachment.status], 'detaching')).attachment;
      }
      const connector = await exportedTo(store, attachment, host);
      if (connector !== undefined) {
        const signal = AbortSignal.timeout(config.operationTimeoutMs);
        const backend = catalog.backend(current.backend);
        try {
          const sharing = await terminateUnshared(parts.deps, current, connector, attachment.id, signal, () => backend.terminateConnection(backendVolume(current), connector, signal));
          entry.export = sharing > 0 ? 'shared' : 'terminated';
        } catch (error) {
          const e = toBerthError(error, 'BACKEND_ERROR');
          const into = attachment.status === 'detaching' ? 'error_detaching' : attachment.status === 'reserved' || attachment.status === 'attaching' ? 'error_attaching' : undefined;
          if (into !== undefined) await transitionAttachment(store, attachment.id, [attachment.status], into, { error: `host ${host.name} forgotten; its export could not be removed: ${e.message}` });
          return { ...failed('failed', e), export: 'failed' };
        }
      }
      const dropped = attachment;
      const after = await store.transaction(async (tx) => {
        const recomputed = await deleteAttachmentRecord(tx, dropped.id, dropped.volumeId);
        if ((await tx.attachments.list({ volumeId: dropped.volumeId, hostId: host.id })).length === 0) await tx.devices.delete(host.id, dropped.volumeId);
        return recomputed;
      });
      return { ...entry, volumeStatus: after.status };
    } catch (error) {
      return failed('failed', toBerthError(error));
    }
  });
}
