import { zAttachment, zDevice, zHost, zHostDevice, zOperation, zOperationStep, zServer, zVolume, zWorkItem } from '@berth/core';
import type { Attachment, Device, Host, HostDevice, Operation, OperationStep, Server, Volume, WorkItem } from '@berth/core';
import type { Selectable } from 'kysely';
import type {
  AttachmentsTable,
  HostDevicesTable,
  HostsTable,
  OperationStepsTable,
  OperationsTable,
  ServersTable,
  VolumesTable,
  WorkItemsTable,
} from './database.js';
import { corruptRow } from './store-errors.js';
import type { ResourceKind } from './store-errors.js';
import type { StoreDialect } from './store-dialect.js';

/** The slice of a zod schema the mappers use. */
interface Schema<T> {
  safeParse(value: unknown):
    | { success: true; data: T }
    | { success: false; error: { issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }> } };
}

/** Validate a mapped row against its model schema: a row that fails is corruption, not user error. */
function checked<T>(kind: ResourceKind, id: string, schema: Schema<T>, value: unknown): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const problem = result.error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.map(String).join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
  throw corruptRow(kind, id, problem);
}

/** How many checked rows each kind keeps per engine (a few hundred bytes each). */
const CHECKED_ROWS = 512;

/** Rows already mapped and checked, by engine and kind, keyed by the row's raw column values. */
const checkedRows = new WeakMap<StoreDialect, Map<ResourceKind, Map<string, unknown>>>();

/**
 * `map` — decode and check a row — once per distinct row content: berth reads the same rows
 * again and again (a volume and its attachments several times per attach or detach), and the zod
 * check of a row costs far more than keying it. A row seen before with the very same column
 * values was valid then and is valid now (the check depends on nothing else), so it gets a
 * fresh copy of that result; a row that fails the check is never kept, so it fails every time.
 */
function onceChecked<R extends object, T>(kind: ResourceKind, map: (row: R, dialect: StoreDialect) => T): (row: R, dialect: StoreDialect) => T {
  return (row, dialect) => {
    let kinds = checkedRows.get(dialect);
    if (kinds === undefined) checkedRows.set(dialect, (kinds = new Map()));
    let rows = kinds.get(kind);
    if (rows === undefined) kinds.set(kind, (rows = new Map()));
    const key = rowKey(row);
    const seen = key === undefined ? undefined : rows.get(key);
    if (seen !== undefined) return copyPlain(seen) as T;
    const mapped = map(row, dialect);
    if (key !== undefined && isPlain(mapped)) {
      if (rows.size >= CHECKED_ROWS) rows.delete(rows.keys().next().value as string);
      rows.set(key, copyPlain(mapped));
    }
    return mapped;
  };
}

/** The key of a row's raw columns and values (undefined when a value has no exact JSON form). */
function rowKey(row: object): string | undefined {
  for (const value of Object.values(row)) {
    if (value !== undefined && !isPlain(value)) return undefined;
  }
  return JSON.stringify(row);
}

/** Whether `value` is JSON data: primitives (no bigint), arrays and plain objects, all the way down. */
function isPlain(value: unknown): boolean {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return true;
  if (typeof value === 'number') return Number.isFinite(value);
  if (Array.isArray(value)) return value.every(isPlain);
  if (typeof value !== 'object') return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return (proto === Object.prototype || proto === null) && Object.values(value).every((v) => v === undefined || isPlain(v));
}

/** A deep copy of JSON data (as `isPlain` accepts), keys in the same order. */
function copyPlain(value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map(copyPlain);
  const copy: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) copy[key] = copyPlain(v);
  return copy;
}

/** A 64-bit integer column as a JS number (PostgreSQL returns bigint as a string). */
function toNumber(raw: number | string | bigint): number {
  return typeof raw === 'number' ? raw : Number(raw);
}

/** `volumes` row → Volume. */
export const toVolume = onceChecked('volume', checkVolume);

function checkVolume(row: Selectable<VolumesTable>, dialect: StoreDialect): Volume {
  return checked('volume', row.id, zVolume, {
    id: row.id,
    name: row.name,
    projectId: row.project_id,
    sizeBytes: toNumber(row.size_bytes),
    status: row.status,
    backend: row.backend,
    multiattach: dialect.decodeBoolean(row.multiattach),
    providerLocation: row.provider_location,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  });
}

/** `hosts` row → Host. */
export const toHost = onceChecked('host', checkHost);

function checkHost(row: Selectable<HostsTable>, dialect: StoreDialect): Host {
  return checked('host', row.id, zHost, {
    id: row.id,
    name: row.name,
    connector: dialect.decodeJson(row.connector),
    agent:
      row.agent_instance === null
        ? null
        : {
            instance: row.agent_instance,
            version: row.agent_version,
            transports: dialect.decodeJson(row.agent_transports),
            ...(row.agent_transport_info === null || row.agent_transport_info === undefined ? {} : { transportInfo: dialect.decodeJson(row.agent_transport_info) }),
            consumers: dialect.decodeJson(row.agent_consumers),
            lastSeenAt: row.agent_seen_at,
          },
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  });
}

/** `servers` row → Server. */
export const toServer = onceChecked('server', checkServer);

function checkServer(row: Selectable<ServersTable>, dialect: StoreDialect): Server {
  return checked('server', row.id, zServer, {
    id: row.id,
    name: row.name,
    projectId: row.project_id,
    hostId: row.host_id,
    // Servers made before migration 0005 (and host servers) have none: the host itself.
    hypervisor: dialect.decodeJson(row.hypervisor) ?? { type: 'host' },
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  });
}

/** `attachments` row → Attachment. */
export const toAttachment = onceChecked('attachment', checkAttachment);

function checkAttachment(row: Selectable<AttachmentsTable>, dialect: StoreDialect): Attachment {
  return checked('attachment', row.id, zAttachment, {
    id: row.id,
    volumeId: row.volume_id,
    serverId: row.server_id,
    hostId: row.host_id,
    status: row.status,
    mode: row.mode,
    transport: row.transport,
    connector: dialect.decodeJson(row.connector),
    connectionInfo: dialect.decodeJson(row.connection_info),
    device: dialect.decodeJson(row.device),
    publishedPath: row.published_path,
    guestDevice: row.guest_device,
    serial: row.guest_serial,
    hostRoot: row.host_root,
    timings: dialect.decodeJson(row.timings) ?? {},
    error: row.error,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  });
}

/** `operation_steps` row → OperationStep. */
export function toOperationStep(row: Selectable<OperationStepsTable>, dialect: StoreDialect): OperationStep {
  return checked('operation', row.operation_id, zOperationStep, {
    seq: toNumber(row.seq),
    name: row.name,
    phase: row.phase,
    state: row.state,
    startedAt: row.started_at,
    endedAt: row.ended_at,
    durationMs: row.duration_ms === null ? null : toNumber(row.duration_ms),
    error: dialect.decodeJson(row.error),
    data: dialect.decodeJson(row.data),
  });
}

/** `operations` row and its journal → Operation. */
export function toOperation(
  row: Selectable<OperationsTable>,
  steps: readonly OperationStep[],
  dialect: StoreDialect,
): Operation {
  return checked('operation', row.id, zOperation, {
    id: row.id,
    kind: row.kind,
    state: row.state,
    volumeId: row.volume_id,
    serverId: row.server_id,
    attachmentId: row.attachment_id,
    hostId: row.host_id,
    idempotencyKey: row.idempotency_key,
    owner: row.owner,
    deadlineAt: row.deadline_at,
    startedAt: row.started_at,
    endedAt: row.ended_at,
    error: dialect.decodeJson(row.error),
    result: dialect.decodeJson(row.result),
    steps,
  });
}

/** `work_items` row → WorkItem. */
export const toWorkItem = onceChecked('work item', checkWorkItem);

function checkWorkItem(row: Selectable<WorkItemsTable>, dialect: StoreDialect): WorkItem {
  return checked('work item', row.id, zWorkItem, {
    id: row.id,
    operationId: row.operation_id,
    hostId: row.host_id,
    step: row.step,
    state: row.state,
    payload: dialect.decodeJson(row.payload) ?? {},
    result: dialect.decodeJson(row.result),
    error: dialect.decodeJson(row.error),
    attempts: toNumber(row.attempts),
    leaseOwner: row.lease_owner,
    leaseExpiresAt: row.lease_expires_at,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  });
}

/** `host_devices` row → HostDevice. */
export const toHostDevice = onceChecked('device', checkHostDevice);

function checkHostDevice(row: Selectable<HostDevicesTable>, dialect: StoreDialect): HostDevice {
  return checked('device', `${row.host_id}/${row.volume_id}`, zHostDevice, {
    hostId: row.host_id,
    volumeId: row.volume_id,
    transport: row.transport,
    connectionInfo: dialect.decodeJson(row.connection_info),
    device: dialect.decodeJson(row.device),
    operationId: row.operation_id,
    hostRoot: row.host_root,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  });
}

/** A decoded `device` column of a row of host `hostId` (attachments, host_devices) → Device. */
export function toDevice(decoded: unknown, hostId: string): Device {
  return checked('device', hostId, zDevice, decoded);
}
