import { z } from 'zod';
import { lazySchema } from './lazy-schema.js';
import { zConnectionInfo, zConnector, zDevice } from './connection.js';
import { zHypervisor } from './hypervisor.js';

/** A user-given name: letters, digits, `.`, `_`, `-`; never a path. */
export const zName = lazySchema(() => z
  .string()
  .min(1, 'must not be empty')
  .max(63, 'must be at most 63 characters')
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'use letters, digits, ".", "_" and "-" only, starting with a letter or digit'));

/** berth's identifiers are UUIDs. */
export const zId = z.uuid();

/** Largest volume berth accepts (1 PiB): anything bigger is a typo, not a plan. */
export const MAX_VOLUME_BYTES = 2 ** 50;

/** A volume size in bytes. */
export const zSizeBytes = lazySchema(() => z
  .number()
  .int('must be a whole number of bytes')
  .positive('must be positive')
  .max(MAX_VOLUME_BYTES, 'must be at most 1 PiB')
  .refine((n) => n % 512 === 0, 'must be a multiple of 512 bytes'));

/** Every status a volume can have (Cinder's names). */
export const VOLUME_STATUSES = [
  'creating',
  'available',
  'reserved',
  'attaching',
  'in-use',
  'detaching',
  'extending',
  'deleting',
  'error',
] as const;
export const zVolumeStatus = z.enum(VOLUME_STATUSES);
export type VolumeStatus = z.output<typeof zVolumeStatus>;

/** Every status an attachment can have (Cinder's names). */
export const ATTACHMENT_STATUSES = [
  'reserved',
  'attaching',
  'attached',
  'detaching',
  'detached',
  'error_attaching',
  'error_detaching',
] as const;
export const zAttachmentStatus = z.enum(ATTACHMENT_STATUSES);
export type AttachmentStatus = z.output<typeof zAttachmentStatus>;

const zTimestamp = z.string();

/** A volume: bytes on a backend. */
export const zVolume = lazySchema(() => z.object({
  id: zId,
  name: zName,
  projectId: z.string(),
  sizeBytes: zSizeBytes,
  status: zVolumeStatus,
  backend: z.string(),
  multiattach: z.boolean(),
  /** The backend's own reference (a file path, a target IQN); opaque to core. */
  providerLocation: z.string().nullable(),
  createdAt: zTimestamp,
  updatedAt: zTimestamp,
}));
export type Volume = z.output<typeof zVolume>;

/** What one transport of a host's agent connects: its name, `driver_volume_type`s and priority. */
export const zAgentTransportInfo = lazySchema(() => z.object({
  name: z.string().min(1).max(100),
  protocols: z.array(z.string().min(1).max(100)).min(1).max(20),
  priority: z.number().int().min(-1_000_000).max(1_000_000),
}));
/** One transport of an agent's registration. */
export type AgentTransportInfo = z.output<typeof zAgentTransportInfo>;

/**
 * The `berth agent` last registered for a host (many hosts): which process, which version, and
 * when it was last heard from. Whether it is online is the API's call (seen within
 * `agent.offlineAfterMs`), not stored.
 */
export const zHostAgent = lazySchema(() => z.object({
  /** The registered agent process (its worker name); only it may claim the host's work. */
  instance: z.string().min(1),
  version: z.string(),
  /** The transports loaded on the host (a replica picks one of these for the host's attachments). */
  transports: z.array(z.string().min(1)),
  /**
   * What each of them connects (its protocols and priority), so a replica can pick a transport
   * installed on the host only (migration 0008); absent from an older agent: names only.
   */
  transportInfo: z.array(zAgentTransportInfo).optional(),
  /** The consumers loaded on the host. */
  consumers: z.array(z.string().min(1)),
  /** When it registered or last asked for work (ISO-8601, the store's clock). */
  lastSeenAt: zTimestamp,
}));
/** A host's registered agent. */
export type HostAgent = z.output<typeof zHostAgent>;

/** A host: a machine whose servers get volumes; its host-side steps run in-process or on its agent. */
export const zHost = lazySchema(() => z.object({
  id: zId,
  name: z.string(),
  /** The connector last reported by the host's agent (secrets never stored). */
  connector: zConnector.nullable(),
  /** Its `berth agent`, once one registered; null for the host berth runs on in-process. */
  agent: zHostAgent.nullable(),
  createdAt: zTimestamp,
  updatedAt: zTimestamp,
}));
export type Host = z.output<typeof zHost>;

/** Whether a host's agent was heard from lately (within the API's `agent.offlineAfterMs`). */
export const zHostAgentState = z.enum(['online', 'offline']);
/** A host as the API shows it: its agent with `state` computed at read time. */
export const zHostView = lazySchema(() => zHost.unwrap().extend({ agent: zHostAgent.unwrap().extend({ state: zHostAgentState }).nullable() }));
/** A host with its agent's state. */
export type HostView = z.output<typeof zHostView>;

/** A server: the consumer of volumes (an instance in Nova's words), placed on a host. */
export const zServer = lazySchema(() => z.object({
  id: zId,
  name: zName,
  projectId: z.string(),
  hostId: zId,
  /**
   * What runs it, and so which consumer publishes its volumes: absent or `{type: 'host'}` is the
   * host itself (the configured consumer), `qemu` and `libvirt` hot-plug into a guest.
   */
  hypervisor: zHypervisor.optional(),
  createdAt: zTimestamp,
  updatedAt: zTimestamp,
}));
export type Server = z.output<typeof zServer>;

/** Per-step durations in milliseconds, keyed by step name. */
export const zTimings = lazySchema(() => z.record(z.string(), z.number()));

/** An attachment: one volume attached (or being attached) to one server. */
export const zAttachment = lazySchema(() => z.object({
  id: zId,
  volumeId: zId,
  serverId: zId,
  hostId: zId,
  status: zAttachmentStatus,
  mode: z.enum(['rw', 'ro']),
  /** The transport that connected it (`loop`, `iscsi`, ...). */
  transport: z.string().nullable(),
  connector: zConnector.nullable(),
  /** connection_info with every secret removed (enough to disconnect after a restart). */
  connectionInfo: zConnectionInfo.nullable(),
  device: zDevice.nullable(),
  /** Where the consumer published the device (`/dev/berth/<volume-id>` for the host consumer). */
  publishedPath: z.string().nullable(),
  /**
   * A guest consumer: the disk's likely name in the guest (`/dev/vdb`, Nova's `mountpoint`; a
   * hint: the guest names disks in probe order). Null (or absent) for the host consumer.
   */
  guestDevice: z.string().nullable().optional(),
  /** A guest consumer: the disk's serial as the guest sees it (the volume id). */
  serial: z.string().nullable().optional(),
  /**
   * The root of the host services its transport connected it on (`/` for the machine, berth's
   * simulated host's root with `--simulate`): a berth whose transport runs on another root refuses
   * to detach or reconcile it. Null when unknown (made before migration 0006, or by a host's agent).
   */
  hostRoot: z.string().nullable().optional(),
  timings: zTimings,
  error: z.string().nullable(),
  createdAt: zTimestamp,
  updatedAt: zTimestamp,
}));
export type Attachment = z.output<typeof zAttachment>;

/**
 * berth's own record of a device it connected on a host for a volume (the ledger): one per volume
 * per host, whatever the number of attachments sharing it. It outlives a lost attachment row, so
 * reconcile can find a device berth made that no attachment references, and tell it from one
 * somebody else made.
 */
export const zHostDevice = lazySchema(() => z.object({
  hostId: zId,
  volumeId: zId,
  /** The transport that connected it. */
  transport: z.string().min(1),
  /** connection_info with every secret removed (enough to disconnect it). */
  connectionInfo: zConnectionInfo,
  /** The device as `connect` returned it, identity included. */
  device: zDevice,
  /** The operation that last wrote the record (null for reconcile). */
  operationId: zId.nullable(),
  /** The root of the host services the transport connected it on (as `Attachment.hostRoot`); null: unknown. */
  hostRoot: z.string().nullable().optional(),
  createdAt: zTimestamp,
  updatedAt: zTimestamp,
}));
export type HostDevice = z.output<typeof zHostDevice>;

/** Operation kinds. */
export const zOperationKind = z.enum(['attach', 'detach', 'extend', 'delete', 'reconcile']);
export type OperationKind = z.output<typeof zOperationKind>;

/**
 * Operation states: `running` (in flight), `succeeded`, `rolled_back` (failed and every step undone:
 * nothing left behind), `failed` (failed and an undo failed too: `berth reconcile` has work).
 */
export const zOperationState = z.enum(['running', 'succeeded', 'rolled_back', 'failed']);
export type OperationState = z.output<typeof zOperationState>;

/** A safe summary of an error, as stored and returned. */
export const zErrorSummary = lazySchema(() => z.object({
  code: z.string(),
  message: z.string(),
  hint: z.string().optional(),
}));
export type ErrorSummary = z.output<typeof zErrorSummary>;

/** One journal row: a step (or its undo) of an operation. */
export const zOperationStep = lazySchema(() => z.object({
  seq: z.number().int(),
  name: z.string(),
  phase: z.enum(['do', 'undo']),
  state: z.enum(['running', 'done', 'failed']),
  startedAt: zTimestamp,
  endedAt: zTimestamp.nullable(),
  durationMs: z.number().nullable(),
  error: zErrorSummary.nullable(),
  /** What the step produced that its undo or a resume needs (never a secret). */
  data: z.record(z.string(), z.unknown()).nullable(),
}));
export type OperationStep = z.output<typeof zOperationStep>;

/** An operation: one attach/detach/... request, journalled step by step. */
export const zOperation = lazySchema(() => z.object({
  id: zId,
  kind: zOperationKind,
  state: zOperationState,
  volumeId: zId.nullable(),
  serverId: zId.nullable(),
  attachmentId: zId.nullable(),
  hostId: zId.nullable(),
  idempotencyKey: z.string().nullable(),
  /** The process that runs it (pid@hostname), to tell an orphan from a live one. */
  owner: z.string().nullable(),
  deadlineAt: zTimestamp,
  startedAt: zTimestamp,
  endedAt: zTimestamp.nullable(),
  error: zErrorSummary.nullable(),
  result: z.record(z.string(), z.unknown()).nullable(),
  steps: z.array(zOperationStep),
}));
export type Operation = z.output<typeof zOperation>;
