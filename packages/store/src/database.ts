import type { AttachmentStatus, OperationKind, OperationState, VolumeStatus, WorkItemState } from '@berth/core';
import type { ColumnType } from 'kysely';

declare const encodedJson: unique symbol;
declare const encodedBoolean: unique symbol;

/** A JSON document as the dialect writes it (TEXT on SQLite, jsonb on PostgreSQL); made by `StoreDialect.encodeJson`. */
export type DbJson = { readonly [encodedJson]: true };

/** A boolean as the dialect writes it (0/1 on SQLite); made by `StoreDialect.encodeBoolean`. */
export type DbBoolean = { readonly [encodedBoolean]: true };

/** A JSON column: read as whatever the driver returns, decoded by the dialect. */
type JsonColumn = ColumnType<unknown, DbJson, DbJson>;
/** A nullable JSON column. */
type NullableJsonColumn = ColumnType<unknown, DbJson | null, DbJson | null>;
/** A 64-bit integer: SQLite returns a number, PostgreSQL's `bigint` a string. */
type Int64Column = ColumnType<number | string | bigint, number, number>;

/** Table `volumes`. */
export interface VolumesTable {
  id: string;
  name: string;
  project_id: string;
  size_bytes: Int64Column;
  status: VolumeStatus;
  backend: string;
  multiattach: ColumnType<unknown, DbBoolean, DbBoolean>;
  provider_location: string | null;
  created_at: string;
  updated_at: string;
}

/** Table `hosts`. */
export interface HostsTable {
  id: string;
  name: string;
  connector: NullableJsonColumn;
  /** The registered `berth agent` (migration 0004); all three NULL until one registers. */
  agent_instance: string | null;
  agent_version: string | null;
  /** JSON arrays of names. */
  agent_transports: NullableJsonColumn;
  /** What each of them connects (migration 0008); NULL: an older agent named them only. */
  agent_transport_info: NullableJsonColumn;
  agent_consumers: NullableJsonColumn;
  agent_seen_at: string | null;
  created_at: string;
  updated_at: string;
}

/** Table `servers`. */
export interface ServersTable {
  id: string;
  name: string;
  project_id: string;
  host_id: string;
  /** `zHypervisor` as JSON (migration 0005); NULL: the host itself. */
  hypervisor: NullableJsonColumn;
  created_at: string;
  updated_at: string;
}

/** Table `attachments`. */
export interface AttachmentsTable {
  id: string;
  volume_id: string;
  server_id: string;
  host_id: string;
  status: AttachmentStatus;
  mode: 'rw' | 'ro';
  transport: string | null;
  connector: NullableJsonColumn;
  connection_info: NullableJsonColumn;
  device: NullableJsonColumn;
  published_path: string | null;
  /** A guest consumer's name of the disk in the guest, and its serial (migration 0005). */
  guest_device: string | null;
  guest_serial: string | null;
  /** The root of the host services its transport connected it on (migration 0006); NULL: unknown. */
  host_root: string | null;
  timings: JsonColumn;
  error: string | null;
  created_at: string;
  updated_at: string;
}

/** Table `operations`. */
export interface OperationsTable {
  id: string;
  kind: OperationKind;
  state: OperationState;
  volume_id: string | null;
  server_id: string | null;
  attachment_id: string | null;
  host_id: string | null;
  idempotency_key: string | null;
  owner: string | null;
  /** When the owner's lease passes (migration 0002); NULL: no lease (single-host recovery by pid). */
  lease_expires_at: string | null;
  deadline_at: string;
  started_at: string;
  ended_at: string | null;
  error: NullableJsonColumn;
  result: NullableJsonColumn;
}

/** Table `operation_steps`: the journal, keyed by (operation_id, seq). */
export interface OperationStepsTable {
  operation_id: string;
  seq: Int64Column;
  name: string;
  phase: 'do' | 'undo';
  state: 'running' | 'done' | 'failed';
  started_at: string;
  ended_at: string | null;
  duration_ms: ColumnType<number | string | bigint | null, number | null, number | null>;
  error: NullableJsonColumn;
  data: NullableJsonColumn;
}

/** Table `work_items` (migration 0002): host steps with leases. */
export interface WorkItemsTable {
  id: string;
  operation_id: string;
  host_id: string;
  step: string;
  state: WorkItemState;
  payload: JsonColumn;
  result: NullableJsonColumn;
  error: NullableJsonColumn;
  attempts: number;
  lease_owner: string | null;
  lease_expires_at: string | null;
  created_at: string;
  updated_at: string;
}

/** Table `host_devices`: berth's ledger of the devices it connected, keyed by (host_id, volume_id). */
export interface HostDevicesTable {
  host_id: string;
  volume_id: string;
  transport: string;
  connection_info: JsonColumn;
  device: JsonColumn;
  operation_id: string | null;
  /** The root of the host services its transport connected it on (migration 0007); NULL: unknown. */
  host_root: string | null;
  created_at: string;
  updated_at: string;
}

/** Table `transaction_gate` (migration 0002): never holds a row; PostgreSQL transactions lock it. */
export interface TransactionGateTable {
  id: number;
}

/** Table `locks`: named leases, one row per held key. */
export interface LocksTable {
  key: string;
  owner: string;
  acquired_at: string;
  expires_at: string;
}

/** The whole schema as Kysely sees it: snake_case columns, one interface per table. */
export interface Database {
  volumes: VolumesTable;
  hosts: HostsTable;
  servers: ServersTable;
  attachments: AttachmentsTable;
  operations: OperationsTable;
  operation_steps: OperationStepsTable;
  work_items: WorkItemsTable;
  transaction_gate: TransactionGateTable;
  host_devices: HostDevicesTable;
  locks: LocksTable;
}
