import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { connectorWithoutSecrets, redactConnectionInfo, zConnector } from './connection.js';
import { BerthError, parseWith } from './errors.js';
import { Mutex } from './keyed-lock.js';
import { lazySchema } from './lazy-schema.js';
import {
  zAttachment,
  zErrorSummary,
  zHost,
  zHostAgent,
  zId,
  zOperation,
  zOperationState,
  zOperationStep,
  zVolume,
  type Attachment,
  type Host,
  type HostDevice,
  type Operation,
  type Server,
  type Volume,
} from './model.js';
import { createMonotonicClock, isoTimestamp } from './monotonic-clock.js';
import { createNotificationHub } from './notification-hub.js';
import { distinctDevices, hostDeviceRow, newAttachmentRow, newOperationRow, newServerRow, newWorkItemRow, operationLeaseMs, operationPruneFilter, workItemOutcomeRow, zLeaseMs } from './store-rows.js';
import type {
  AttachmentPatch,
  AttachmentRepository,
  HostDeviceRepository,
  HostRepository,
  LockHolder,
  LockRepository,
  OperationRepository,
  ServerRepository,
  StepOutcome,
  Store,
  StoreNotifications,
  VolumeRepository,
  WorkItemRepository,
} from './store.js';
import { agentReplaced, alreadyExists, hostInUse, notFound, notOwner, stateConflict } from './store-errors.js';
import { assertAttachmentTransition, assertVolumeTransition } from './transitions.js';
import { zWorkItemState, type WorkItem } from './work-item.js';

const zVolumePatch = lazySchema(() => zVolume.unwrap().pick({ sizeBytes: true, providerLocation: true }).partial());
const zAttachmentPatch = lazySchema(() => zAttachment
  .unwrap()
  .pick({ transport: true, connector: true, connectionInfo: true, device: true, publishedPath: true, guestDevice: true, serial: true, hostRoot: true, timings: true, error: true })
  .partial());
const zStepOutcome = lazySchema(() => zOperationStep.unwrap().pick({ error: true, data: true }).partial());
const zStepStart = lazySchema(() => zOperationStep.unwrap().pick({ name: true, phase: true }));
const zFinishOutcome = lazySchema(() => zOperation.unwrap().pick({ error: true, result: true }).partial());
const zLockField = z.string().min(1).max(300);
const zNewHostAgent = lazySchema(() => zHostAgent.unwrap().omit({ lastSeenAt: true }));
const zLimit = z.number().int().positive().max(10_000);
// Built once, not at every call (a zod schema costs more to build than to run).
const zEndState = lazySchema(() => zOperationState.exclude(['running']));
const zClaimLimit = lazySchema(() => z.number().int().positive());
const zWorker = z.string().min(1);

/** How many operations `claimExpired` takes at most when the caller names no limit (as on SQL). */
const DEFAULT_CLAIM_LIMIT = 10;
/** How many items `expire` resets at most when the caller names no limit (as on SQL). */
const DEFAULT_EXPIRE_LIMIT = 100;

/** Everything a memory store holds; a transaction's rollback puts back a copy taken at its start. */
interface Tables {
  volumes: Map<string, Volume>;
  hosts: Map<string, Host>;
  servers: Map<string, Server>;
  attachments: Map<string, Attachment>;
  operations: Map<string, Operation>;
  devices: Map<string, HostDevice>;
  locks: Map<string, LockHolder>;
  /** When each leased operation's lease passes (ISO-8601); operations without a lease are absent. */
  operationLeases: Map<string, string>;
  workItems: Map<string, WorkItem>;
}

/** An open transaction: notifications sent inside it wait for its commit. */
interface Scope {
  afterCommit: Array<() => void>;
}

const emptyTables = (): Tables => ({
  volumes: new Map(),
  hosts: new Map(),
  servers: new Map(),
  attachments: new Map(),
  operations: new Map(),
  devices: new Map(),
  locks: new Map(),
  operationLeases: new Map(),
  workItems: new Map(),
});

const copy = <T>(value: T): T => structuredClone(value);
const statuses = <T extends string>(wanted: T | readonly T[] | undefined): readonly T[] | undefined =>
  wanted === undefined ? undefined : typeof wanted === 'string' ? [wanted as T] : (wanted as readonly T[]);

/**
 * A `Store` in this process's memory that keeps every rule of the store conformance suite
 * (`@berth/store/conformance`): compare-and-swaps, validation, secrets dropped, transactions that
 * roll back and run one after the other. For fast unit tests of the pipelines, the operation runner
 * and recovery; it keeps nothing across processes, so berth itself never runs on it. It has the
 * many-hosts members too (operation leases, work items, notifications within the process), for
 * the remote executor's and the agent protocol's unit tests.
 */
export function createMemoryStore(): Store {
  let tables = emptyTables();
  const now = createMonotonicClock();
  const mutex = new Mutex();
  // Set while a transaction runs: calls made inside it (on `tx` or on the store itself) join it.
  const inTransaction = new AsyncLocalStorage<Scope>();
  const hub = createNotificationHub();
  /** The instant `ms` after the store's clock now. */
  const leaseUntil = (ms: number): string => isoTimestamp(Date.parse(now()) + ms);

  /** Run one call alone: a running transaction (another caller's) finishes first. */
  const alone = <T>(fn: () => T): Promise<T> => (inTransaction.getStore() ? Promise.resolve().then(fn) : mutex.run(async () => fn()));

  const requireRow = <T>(map: Map<string, T>, kind: Parameters<typeof notFound>[0], id: string): T => {
    const row = map.get(id);
    if (row === undefined) throw notFound(kind, id);
    return row;
  };

  const volumes: VolumeRepository = {
    create: (input) =>
      alone(() => {
        const at = now();
        const volume = parseWith(
          zVolume,
          { ...input, id: input.id ?? randomUUID(), providerLocation: null, createdAt: at, updatedAt: at },
          'volume',
        );
        if (tables.volumes.has(volume.id)) throw alreadyExists(`a volume with id ${volume.id} already exists`, { id: volume.id }, undefined);
        if ([...tables.volumes.values()].some((v) => v.projectId === volume.projectId && v.name === volume.name)) {
          throw alreadyExists(`a volume named ${volume.name} already exists in project ${volume.projectId}`, { name: volume.name, projectId: volume.projectId }, undefined);
        }
        tables.volumes.set(volume.id, volume);
        return copy(volume);
      }),
    get: (id) => alone(() => copy(tables.volumes.get(id))),
    require: (id) => alone(() => copy(requireRow(tables.volumes, 'volume', id))),
    findByName: (projectId, name) => alone(() => copy([...tables.volumes.values()].find((v) => v.projectId === projectId && v.name === name))),
    list: (filter = {}) =>
      alone(() =>
        copy(
          [...tables.volumes.values()].filter(
            (v) => (filter.projectId === undefined || v.projectId === filter.projectId) && (filter.status === undefined || v.status === filter.status),
          ),
        ),
      ),
    transition: (id, from, to, patch = {}) =>
      alone(() => {
        assertVolumeTransition(from, to);
        const valid = parseWith(zVolumePatch, patch, 'volume change');
        const volume = requireRow(tables.volumes, 'volume', id);
        if (!from.includes(volume.status)) throw stateConflict('volume', volume.name, id, volume.status, from);
        const next: Volume = { ...volume, ...valid, status: to, updatedAt: now() };
        tables.volumes.set(id, next);
        return copy(next);
      }),
    delete: (id, from) =>
      alone(() => {
        const volume = requireRow(tables.volumes, 'volume', id);
        if (!from.includes(volume.status)) throw stateConflict('volume', volume.name, id, volume.status, from);
        if ([...tables.attachments.values()].some((a) => a.volumeId === id)) {
          throw new BerthError('CONFLICT', `volume ${volume.name} still has attachments`, {
            hint: 'detach it from every server first (`berth detach`)',
            details: { id },
          });
        }
        tables.volumes.delete(id);
      }),
  };

  const hosts: HostRepository = {
    create: (input) =>
      alone(() => {
        const at = now();
        const host = parseWith(
          zHost,
          {
            id: input.id ?? randomUUID(),
            name: input.name,
            connector: input.connector == null ? null : connectorWithoutSecrets(input.connector),
            agent: null,
            createdAt: at,
            updatedAt: at,
          },
          'host',
        );
        if ([...tables.hosts.values()].some((h) => h.name === host.name)) throw alreadyExists(`a host named ${host.name} already exists`, { name: host.name }, undefined);
        if (tables.hosts.has(host.id)) throw alreadyExists(`a host with id ${host.id} already exists`, { id: host.id }, undefined);
        tables.hosts.set(host.id, host);
        return copy(host);
      }),
    get: (id) => alone(() => copy(tables.hosts.get(id))),
    require: (id) => alone(() => copy(requireRow(tables.hosts, 'host', id))),
    findByName: (name) => alone(() => copy([...tables.hosts.values()].find((h) => h.name === name))),
    list: () => alone(() => copy([...tables.hosts.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)))),
    setConnector: (id, connector) =>
      alone(() => {
        const valid = connectorWithoutSecrets(parseWith(zConnector, connector, 'connector'));
        const host = requireRow(tables.hosts, 'host', id);
        const next: Host = { ...host, connector: valid, updatedAt: now() };
        tables.hosts.set(id, next);
        return copy(next);
      }),
    recordAgent: (id, agent) =>
      alone(() => {
        const valid = parseWith(zNewHostAgent, agent, 'host agent');
        const host = requireRow(tables.hosts, 'host', id);
        const at = now();
        const next: Host = { ...host, agent: { ...valid, lastSeenAt: at }, updatedAt: at };
        tables.hosts.set(id, next);
        return copy(next);
      }),
    touchAgent: (id, instance) =>
      alone(() => {
        const host = requireRow(tables.hosts, 'host', id);
        if (host.agent?.instance !== instance) throw agentReplaced(id, instance, host.agent?.instance ?? null);
        const next: Host = { ...host, agent: { ...host.agent, lastSeenAt: now() } };
        tables.hosts.set(id, next);
        return copy(next);
      }),
    delete: (id) =>
      alone(() => {
        const host = tables.hosts.get(id);
        if (host === undefined) return;
        const counts = {
          servers: [...tables.servers.values()].filter((s) => s.hostId === id).length,
          attachments: [...tables.attachments.values()].filter((a) => a.hostId === id).length,
          openWorkItems: [...tables.workItems.values()].filter((w) => w.hostId === id && (w.state === 'pending' || w.state === 'claimed')).length,
        };
        if (counts.servers + counts.attachments + counts.openWorkItems > 0) throw hostInUse(host.name, id, counts);
        // Nothing can fail past the check: the removals below land together.
        for (const [key, item] of tables.workItems) if (item.hostId === id) tables.workItems.delete(key);
        for (const [key, record] of tables.devices) if (record.hostId === id) tables.devices.delete(key);
        tables.hosts.delete(id);
      }),
  };

  const servers: ServerRepository = {
    create: (input) =>
      alone(() => {
        const at = now();
        const server = newServerRow(input, input.id ?? randomUUID(), at);
        if (!tables.hosts.has(server.hostId)) throw notFound('host', server.hostId);
        if ([...tables.servers.values()].some((s) => s.projectId === server.projectId && s.name === server.name)) {
          throw alreadyExists(`a server named ${server.name} already exists in project ${server.projectId}`, { name: server.name, projectId: server.projectId }, undefined);
        }
        if (tables.servers.has(server.id)) throw alreadyExists(`a server with id ${server.id} already exists`, { id: server.id }, undefined);
        tables.servers.set(server.id, server);
        return copy(server);
      }),
    get: (id) => alone(() => copy(tables.servers.get(id))),
    require: (id) => alone(() => copy(requireRow(tables.servers, 'server', id))),
    findByName: (projectId, name) => alone(() => copy([...tables.servers.values()].find((s) => s.projectId === projectId && s.name === name))),
    list: (filter = {}) =>
      alone(() =>
        copy(
          [...tables.servers.values()].filter(
            (s) => (filter.projectId === undefined || s.projectId === filter.projectId) && (filter.hostId === undefined || s.hostId === filter.hostId),
          ),
        ),
      ),
    delete: (id) =>
      alone(() => {
        const server = requireRow(tables.servers, 'server', id);
        const count = [...tables.attachments.values()].filter((a) => a.serverId === id).length;
        if (count > 0) {
          throw new BerthError('CONFLICT', `server ${server.name} still has ${count === 1 ? 'an attachment' : `${count} attachments`}`, {
            hint: 'detach its volumes first (`berth detach`)',
            details: { id, attachments: count },
          });
        }
        tables.servers.delete(id);
      }),
  };

  /** A patch made valid and secret-free, as the stored row takes it. */
  const attachmentChange = (patch: AttachmentPatch): Partial<Attachment> => {
    const valid = parseWith(zAttachmentPatch, patch, 'attachment change');
    const change: Partial<Attachment> = {};
    for (const [key, value] of Object.entries(valid)) if (value !== undefined) (change as Record<string, unknown>)[key] = value;
    if (valid.connector) change.connector = connectorWithoutSecrets(valid.connector);
    if (valid.connectionInfo) change.connectionInfo = redactConnectionInfo(valid.connectionInfo);
    return change;
  };

  const attachments: AttachmentRepository = {
    create: (input) =>
      alone(() => {
        if (!tables.volumes.has(input.volumeId)) throw notFound('volume', input.volumeId);
        if (!tables.servers.has(input.serverId)) throw notFound('server', input.serverId);
        if (!tables.hosts.has(input.hostId)) throw notFound('host', input.hostId);
        const attachment = newAttachmentRow(input, input.id ?? randomUUID(), now());
        if (tables.attachments.has(attachment.id)) throw alreadyExists(`an attachment with id ${attachment.id} already exists`, { id: attachment.id }, undefined);
        tables.attachments.set(attachment.id, attachment);
        return copy(attachment);
      }),
    get: (id) => alone(() => copy(tables.attachments.get(id))),
    require: (id) => alone(() => copy(requireRow(tables.attachments, 'attachment', id))),
    list: (filter = {}) =>
      alone(() => {
        const wanted = statuses(filter.status);
        return copy(
          [...tables.attachments.values()].filter(
            (a) =>
              (filter.volumeId === undefined || a.volumeId === filter.volumeId) &&
              (filter.serverId === undefined || a.serverId === filter.serverId) &&
              (filter.hostId === undefined || a.hostId === filter.hostId) &&
              (wanted === undefined || wanted.includes(a.status)) &&
              (filter.projectId === undefined || tables.volumes.get(a.volumeId)?.projectId === filter.projectId),
          ),
        );
      }),
    transition: (id, from, to, patch = {}) =>
      alone(() => {
        assertAttachmentTransition(from, to);
        const change = attachmentChange(patch);
        const attachment = requireRow(tables.attachments, 'attachment', id);
        if (!from.includes(attachment.status)) throw stateConflict('attachment', id, id, attachment.status, from);
        const next: Attachment = { ...attachment, ...change, status: to, updatedAt: now() };
        tables.attachments.set(id, next);
        return copy(next);
      }),
    update: (id, patch) =>
      alone(() => {
        const change = attachmentChange(patch);
        const attachment = requireRow(tables.attachments, 'attachment', id);
        const next: Attachment = { ...attachment, ...change, updatedAt: now() };
        tables.attachments.set(id, next);
        return copy(next);
      }),
    delete: (id) =>
      alone(() => {
        tables.attachments.delete(id);
      }),
    devicesOfOtherVolumes: (hostId, volumeId) =>
      alone(() => {
        const devices = [
          ...[...tables.attachments.values()].filter((a) => a.hostId === hostId && a.volumeId !== volumeId && a.status !== 'detached').map((a) => a.device),
          ...[...tables.devices.values()].filter((d) => d.hostId === hostId && d.volumeId !== volumeId).map((d) => d.device),
        ];
        return copy(distinctDevices(devices));
      }),
  };

  /** Append a running journal row; returns its seq (run inside `alone`). */
  const startStep = (id: string, name: string, phase: 'do' | 'undo', owner?: string): number => {
    const valid = parseWith(zStepStart, { name, phase }, 'operation step');
    requireOwner(id, owner);
    const operation = requireRow(tables.operations, 'operation', id);
    const seq = operation.steps.length + 1;
    operation.steps.push({ seq, ...valid, state: 'running', startedAt: now(), endedAt: null, durationMs: null, error: null, data: null });
    return seq;
  };

  /** A fenced journal write's check: operation `id` runs and is `owner`'s (none: no check; run inside `alone`). */
  const requireOwner = (id: string, owner: string | undefined): void => {
    if (owner === undefined) return;
    const operation = requireRow(tables.operations, 'operation', id);
    if (operation.owner !== owner) throw notOwner(id, owner, operation);
    if (operation.state !== 'running') throw stateConflict('operation', id, id, operation.state, ['running']);
  };

  /** Close running journal row `seq` (run inside `alone`). */
  const endStep = (id: string, seq: number, outcome: StepOutcome, owner?: string): void => {
    if (outcome.state !== 'done' && outcome.state !== 'failed') {
      throw new BerthError('VALIDATION', `invalid step outcome: state must be done or failed, got ${String(outcome.state)}`);
    }
    const valid = parseWith(zStepOutcome, { data: outcome.data, error: outcome.error }, 'step outcome');
    requireOwner(id, owner);
    const step = tables.operations.get(id)?.steps.find((s) => s.seq === seq);
    if (step === undefined) throw notFound('operation', `${id} step ${seq}`);
    if (step.state !== 'running') {
      throw new BerthError('CONFLICT', `step ${seq} (${step.name}) of operation ${id} is already ${step.state}`, {
        hint: 'a journal row is closed once; start a new step to record another attempt',
        details: { id, seq, actual: step.state, expected: ['running'] },
      });
    }
    const endedAt = now();
    Object.assign(step, {
      state: outcome.state,
      endedAt,
      durationMs: Math.max(0, Date.parse(endedAt) - Date.parse(step.startedAt)),
      data: valid.data ?? null,
      error: valid.error ?? null,
    });
  };

  const operations: OperationRepository = {
    create: (input) =>
      alone(() => {
        const leaseMs = operationLeaseMs(input);
        const operation = newOperationRow(input, input.id ?? randomUUID(), now());
        const key = operation.idempotencyKey;
        const existing = key === null ? undefined : [...tables.operations.values()].find((o) => o.idempotencyKey === key);
        if (existing) {
          throw new BerthError('CONFLICT', `idempotency key ${key} was already used by operation ${existing.id}`, {
            hint: 'a retry with the same key gets the first operation back; use a new key for a new request',
            details: { operationId: existing.id },
          });
        }
        if (tables.operations.has(operation.id)) throw alreadyExists(`an operation with id ${operation.id} already exists`, { id: operation.id }, undefined);
        tables.operations.set(operation.id, operation);
        if (leaseMs !== undefined) tables.operationLeases.set(operation.id, leaseUntil(leaseMs));
        return copy(operation);
      }),
    get: (id) => alone(() => copy(tables.operations.get(id))),
    require: (id) => alone(() => copy(requireRow(tables.operations, 'operation', id))),
    findByIdempotencyKey: (key) => alone(() => copy([...tables.operations.values()].find((o) => o.idempotencyKey === key))),
    list: (filter = {}) =>
      alone(() => {
        const wanted = statuses(filter.state);
        const found = [...tables.operations.values()]
          .reverse()
          .filter(
            (o) =>
              (wanted === undefined || wanted.includes(o.state)) &&
              (filter.kind === undefined || o.kind === filter.kind) &&
              (filter.volumeId === undefined || o.volumeId === filter.volumeId),
          );
        return copy(filter.limit === undefined ? found : found.slice(0, filter.limit));
      }),
    setAttachment: (id, attachmentId) =>
      alone(() => {
        const valid = parseWith(zId, attachmentId, 'attachment id');
        requireRow(tables.operations, 'operation', id).attachmentId = valid;
      }),
    startStep: (id, name, phase, owner) => alone(() => startStep(id, name, phase, owner)),
    endStep: (id, seq, outcome, owner) => alone(() => endStep(id, seq, outcome, owner)),
    advanceStep: (id, seq, outcome, next, owner) =>
      alone(() => {
        // Validate the next row before closing this one: nothing is written when either is refused.
        parseWith(zStepStart, next, 'operation step');
        endStep(id, seq, outcome, owner);
        return startStep(id, next.name, next.phase);
      }),
    finish: (id, outcome) =>
      alone(() => {
        const state = parseWith(zEndState, outcome.state, 'operation outcome');
        const valid = parseWith(zFinishOutcome, { error: outcome.error, result: outcome.result }, 'operation outcome');
        const operation = requireRow(tables.operations, 'operation', id);
        if (operation.state !== 'running') throw stateConflict('operation', id, id, operation.state, ['running']);
        Object.assign(operation, { state, error: valid.error ?? null, result: valid.result ?? null, endedAt: now() });
        return copy(operation);
      }),
    setOwner: (id, owner, expectedOwner) =>
      alone(() => {
        const operation = requireRow(tables.operations, 'operation', id);
        if (operation.state !== 'running' || operation.owner !== expectedOwner) {
          throw new BerthError('CONFLICT', `operation ${id} is not a running operation of ${expectedOwner ?? 'nobody'} any more`, {
            hint: 'another process took it over first',
            details: { id, actual: operation.owner, state: operation.state },
          });
        }
        operation.owner = owner;
      }),
    heartbeat: (owner, leaseMs) =>
      alone(() => {
        const ms = parseWith(zLeaseMs, leaseMs, 'operation lease');
        const renewed = [...tables.operations.values()].filter((o) => o.owner === owner && o.state === 'running').map((o) => o.id);
        for (const id of renewed) tables.operationLeases.set(id, leaseUntil(ms));
        return renewed.sort();
      }),
    leaseExpiry: (id) => alone(() => (tables.operations.has(id) ? (tables.operationLeases.get(id) ?? null) : undefined)),
    claimExpired: (owner, leaseMs, limit = DEFAULT_CLAIM_LIMIT) =>
      alone(() => {
        const ms = parseWith(zLeaseMs, leaseMs, 'operation lease');
        const max = parseWith(zClaimLimit, limit, 'claim limit');
        const at = now();
        const taken = [...tables.operationLeases.entries()]
          .filter(([id, expiresAt]) => expiresAt < at && tables.operations.get(id)?.state === 'running')
          .sort(([, a], [, b]) => (a < b ? -1 : a > b ? 1 : 0))
          .slice(0, max)
          .map(([id]) => requireRow(tables.operations, 'operation', id));
        const previous = new Map(taken.map((operation) => [operation.id, operation.owner]));
        for (const operation of taken) {
          operation.owner = owner;
          tables.operationLeases.set(operation.id, leaseUntil(ms));
        }
        return copy(taken.sort((a, b) => (a.startedAt < b.startedAt ? -1 : a.startedAt > b.startedAt ? 1 : 0))).map((operation) => ({
          ...operation,
          previousOwner: previous.get(operation.id) ?? null,
        }));
      }),
    prune: (filter) =>
      alone(() => {
        const { endedBefore, limit, dryRun } = operationPruneFilter(filter);
        const open = new Set([...tables.workItems.values()].filter((w) => w.state === 'pending' || w.state === 'claimed').map((w) => w.operationId));
        // As the SQL stores: its own attachment, or (an older berth's attach that named none) one of its volume and server.
        const liveAttachment = (o: Operation): boolean =>
          o.attachmentId !== null
            ? tables.attachments.has(o.attachmentId)
            : o.kind === 'attach' && [...tables.attachments.values()].some((a) => a.volumeId === o.volumeId && a.serverId === o.serverId);
        const gone = [...tables.operations.values()]
          .filter(
            (o) =>
              o.state !== 'running' &&
              o.endedAt !== null &&
              o.endedAt < endedBefore &&
              o.startedAt < endedBefore &&
              !open.has(o.id) &&
              !liveAttachment(o),
          )
          .sort((a, b) => (a.startedAt !== b.startedAt ? (a.startedAt < b.startedAt ? -1 : 1) : a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
          .slice(0, limit);
        if (dryRun) return gone.length;
        const ids = new Set(gone.map((o) => o.id));
        for (const id of ids) {
          tables.operations.delete(id);
          tables.operationLeases.delete(id);
        }
        for (const [key, item] of tables.workItems) if (ids.has(item.operationId)) tables.workItems.delete(key);
        return gone.length;
      }),
  };

  /** Oldest first, ties by id (as the SQL stores order them). */
  const byAge = (a: WorkItem, b: WorkItem): number =>
    a.createdAt !== b.createdAt ? (a.createdAt < b.createdAt ? -1 : 1) : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  const itemsWhere = (test: (item: WorkItem) => boolean): WorkItem[] => [...tables.workItems.values()].filter(test).sort(byAge);
  /**
   * CONFLICT when host `hostId` has a registered agent other than `worker`: a replaced agent may
   * neither claim nor renew nor complete (the `WorkItemRepository` contract).
   */
  const fenceReplaced = (hostId: string, worker: string): void => {
    const current = tables.hosts.get(hostId)?.agent?.instance;
    if (current != null && current !== worker) throw agentReplaced(hostId, worker, current);
  };
  /** Change item `id` that `worker` holds, or say why not (NOT_FOUND, or CONFLICT with the actual state). */
  const updateHeld = (id: string, worker: string, change: Partial<WorkItem>): WorkItem => {
    const item = requireRow(tables.workItems, 'work item', id);
    if (item.state !== 'claimed') throw stateConflict('work item', id, id, item.state, ['claimed']);
    fenceReplaced(item.hostId, worker);
    if (item.leaseOwner !== worker) {
      throw new BerthError('CONFLICT', `work item ${id} is held by another agent, not ${worker}`, {
        hint: 'its lease passed and it was handed out again; drop this attempt and claim new work',
        details: { id, actual: 'claimed', expected: ['claimed'], worker },
      });
    }
    const next: WorkItem = { ...item, ...change, updatedAt: now() };
    tables.workItems.set(id, next);
    return copy(next);
  };
  /** Put items back to `pending` without a lease (their holder lost it). */
  const backToPending = (items: readonly WorkItem[]): WorkItem[] => {
    const at = now();
    return items.map((item) => {
      const next: WorkItem = { ...item, state: 'pending', leaseOwner: null, leaseExpiresAt: null, updatedAt: at };
      tables.workItems.set(item.id, next);
      return copy(next);
    });
  };

  const workItems: WorkItemRepository = {
    create: (input) =>
      alone(() => {
        const item = newWorkItemRow(input, input.id ?? randomUUID(), now());
        if (!tables.operations.has(item.operationId)) throw notFound('operation', item.operationId);
        if (!tables.hosts.has(item.hostId)) throw notFound('host', item.hostId);
        if (tables.workItems.has(item.id)) throw alreadyExists(`a work item with id ${item.id} already exists`, { id: item.id }, undefined);
        tables.workItems.set(item.id, item);
        return copy(item);
      }),
    get: (id) => alone(() => copy(tables.workItems.get(id))),
    require: (id) => alone(() => copy(requireRow(tables.workItems, 'work item', id))),
    list: (filter = {}) =>
      alone(() => {
        const wanted = statuses(filter.state);
        if (wanted !== undefined) parseWith(z.array(zWorkItemState), [...wanted], 'work item state');
        return copy(
          itemsWhere(
            (i) =>
              (filter.hostId === undefined || i.hostId === filter.hostId) &&
              (filter.operationId === undefined || i.operationId === filter.operationId) &&
              (wanted === undefined || wanted.includes(i.state)),
          ),
        );
      }),
    claim: (hostId, worker, leaseMs, limit = 1) =>
      alone(() => {
        const ms = parseWith(zLeaseMs, leaseMs, 'work item lease');
        const max = parseWith(zLimit, limit, 'claim limit');
        const owner = parseWith(zWorker, worker, 'worker');
        fenceReplaced(hostId, owner);
        const at = now();
        return itemsWhere((i) => i.hostId === hostId && i.state === 'pending')
          .slice(0, max)
          .map((item) => {
            const next: WorkItem = { ...item, state: 'claimed', leaseOwner: owner, leaseExpiresAt: leaseUntil(ms), attempts: item.attempts + 1, updatedAt: at };
            tables.workItems.set(item.id, next);
            return copy(next);
          });
      }),
    renew: (id, worker, leaseMs) =>
      alone(() => {
        const ms = parseWith(zLeaseMs, leaseMs, 'work item lease');
        return updateHeld(id, worker, { leaseExpiresAt: leaseUntil(ms) });
      }),
    complete: (id, worker, outcome) =>
      alone(() => {
        const valid = workItemOutcomeRow(outcome);
        return updateHeld(id, worker, { ...valid, leaseExpiresAt: null });
      }),
    expire: (limit = DEFAULT_EXPIRE_LIMIT) =>
      alone(() => {
        const max = parseWith(zLimit, limit, 'expire limit');
        const at = now();
        const expired = [...tables.workItems.values()]
          .filter((i) => i.state === 'claimed' && i.leaseExpiresAt !== null && i.leaseExpiresAt < at)
          .sort((a, b) => ((a.leaseExpiresAt ?? '') < (b.leaseExpiresAt ?? '') ? -1 : 1))
          .slice(0, max);
        return backToPending(expired).sort(byAge);
      }),
    cancel: (id, error) =>
      alone(() => {
        const valid = parseWith(zErrorSummary, error, 'work item error');
        const item = requireRow(tables.workItems, 'work item', id);
        if (item.state !== 'pending' && item.state !== 'claimed') throw stateConflict('work item', id, id, item.state, ['pending', 'claimed']);
        // attempts stay: > 0 tells the caller an agent claimed it (the step may have run).
        const next: WorkItem = { ...item, state: 'failed', error: valid, leaseOwner: null, leaseExpiresAt: null, updatedAt: now() };
        tables.workItems.set(id, next);
        return copy(next);
      }),
    requeue: (hostId, exceptWorker) =>
      alone(() => {
        const keep = parseWith(zWorker, exceptWorker, 'worker');
        return backToPending(itemsWhere((i) => i.hostId === hostId && i.state === 'claimed' && i.leaseOwner !== keep));
      }),
  };

  const notifications: StoreNotifications = {
    notify: (channel, payload = '') => Promise.resolve().then(() => hub.notify(channel, payload, inTransaction.getStore()?.afterCommit)),
    listen: (channel, listener) => Promise.resolve().then(() => hub.listen(channel, listener)),
  };

  const deviceKey = (hostId: string, volumeId: string): string => `${hostId}/${volumeId}`;
  const devices: HostDeviceRepository = {
    get: (hostId, volumeId) => alone(() => copy(tables.devices.get(deviceKey(hostId, volumeId)))),
    list: (filter = {}) =>
      alone(() =>
        copy(
          [...tables.devices.values()].filter(
            (d) => (filter.hostId === undefined || d.hostId === filter.hostId) && (filter.volumeId === undefined || d.volumeId === filter.volumeId),
          ),
        ),
      ),
    put: (input) =>
      alone(() => {
        const at = now();
        const key = deviceKey(input.hostId, input.volumeId);
        const record = hostDeviceRow(input, tables.devices.get(key)?.createdAt ?? at, at);
        tables.devices.set(key, record);
        return copy(record);
      }),
    delete: (hostId, volumeId) =>
      alone(() => {
        tables.devices.delete(deviceKey(hostId, volumeId));
      }),
  };

  const checkLock = (key: string, owner: string): void => {
    if (!zLockField.safeParse(key).success || !zLockField.safeParse(owner).success) {
      throw new BerthError('VALIDATION', 'invalid lock: key and owner must be 1 to 300 characters');
    }
  };
  const locks: LockRepository = {
    tryAcquire: (key, owner, expiresAt) =>
      alone(() => {
        checkLock(key, owner);
        const held = tables.locks.get(key);
        if (held) return copy(held);
        tables.locks.set(key, { owner, acquiredAt: now(), expiresAt });
        return undefined;
      }),
    takeOver: (key, owner, expectedOwner, expiresAt) =>
      alone(() => {
        checkLock(key, owner);
        if (tables.locks.get(key)?.owner !== expectedOwner) return false;
        tables.locks.set(key, { owner, acquiredAt: now(), expiresAt });
        return true;
      }),
    release: (key, owner) =>
      alone(() => {
        if (tables.locks.get(key)?.owner === owner) tables.locks.delete(key);
      }),
    holder: (key) => alone(() => copy(tables.locks.get(key))),
  };

  const store: Store = {
    volumes,
    hosts,
    servers,
    attachments,
    operations,
    workItems,
    notifications,
    devices,
    locks,
    async transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
      // A transaction inside a transaction joins it (and rolls back with it).
      if (inTransaction.getStore()) return fn(store);
      const scope: Scope = { afterCommit: [] };
      const result = await mutex.run(() =>
        inTransaction.run(scope, async () => {
          const before = copy(tables);
          try {
            return await fn(store);
          } catch (error) {
            tables = before;
            throw error;
          }
        }),
      );
      for (const deliver of scope.afterCommit) deliver();
      return result;
    },
    // Nothing here outlives the process, so there is no durability to defer.
    deferDurability: <T>(fn: () => Promise<T>): Promise<T> => fn(),
    async close(): Promise<void> {
      // Nothing to let go of: the tables go with the last reference to the store.
    },
  };
  return store;
}
