import { z } from 'zod';
import { lazySchema } from './lazy-schema.js';
import { zConnectionInfo, zConnector, zDevice } from './connection.js';
import { zAgentTransportInfo, zAttachment, zServer } from './model.js';
import { zReconcileUnchecked } from './reports.js';
import { zWorkItem, type WorkItem } from './work-item.js';

// The host steps a `berth agent` runs for the API replicas (the many-hosts flow): their names, what
// each one is given (a work item's payload) and what it answers (the item's result). Payloads and
// results are stored in work items, so they are secret-free; the one exception is the connection
// of a `connect` item, into which the API merges the backend's credentials in the claim answer only.
//
// Every message is parsed with unknown fields dropped (not refused), so agents and replicas of
// different versions work together: what a newer side added reaches an older one as absent, which
// every optional field below documents as "what an older side does". A step name the agent does not
// know fails that one item with a clear error; nothing else is affected.

/**
 * The agent protocol's version, sent in the registration and answered in the session.
 * 1: the first (an agent that sends none). 2: `connect` answers `hostRoot`, `unpublish_orphan` takes
 * `transport`, the registration carries `transportInfo`, and the `repair_paths`, `guest_disks` and
 * `unplug_guest_disk` steps exist.
 */
export const AGENT_PROTOCOL = 2;

/** A host step: the part of an attach or detach that has to run on the server's host. */
export const zHostStepName = z.enum(['connector', 'connect', 'release', 'publish', 'unpublish', 'disconnect', 'host_facts', 'unpublish_orphan', 'repair_paths', 'guest_disks', 'unplug_guest_disk', 'check_publications']);
/** One of `zHostStepName`. */
export type HostStepName = z.output<typeof zHostStepName>;

/** When the step must have finished (ISO-8601): the agent's signal fires then. */
const zDeadlineAt = z.iso.datetime({ offset: true });

/** `connect`: connect the volume with `transport` and answer its device. */
export const zConnectPayload = lazySchema(() => z.object({
  transport: z.string().min(1),
  /** The connection (stored redacted; a claim answer carries the backend's credentials). */
  connection: zConnectionInfo,
  volumeId: z.string().min(1),
  connector: zConnector.optional(),
  deadlineAt: zDeadlineAt,
}));
/**
 * What `connect` answers: the device, and the root of the host services the transport ran on
 * (recorded on the attachment; absent from an older agent, and then recorded as unknown).
 */
export const zConnectResult = lazySchema(() => z.object({ device: zDevice, hostRoot: z.string().min(1).optional() }));

/**
 * `release` (an attach's connect undone) and `disconnect` (a detach): the transport's disconnect,
 * identity-checked, never touching `inUse`. The store half (sharers, ledger) stays on the replica.
 */
export const zDisconnectPayload = lazySchema(() => z.object({
  transport: z.string().min(1),
  connection: zConnectionInfo,
  /** The device as recorded (absent when a connect was cut short before it was). */
  device: zDevice.optional(),
  force: z.boolean(),
  /** Devices other attachments on the host use: never touched. */
  inUse: z.array(zDevice),
  volumeId: z.string().min(1),
  deadlineAt: zDeadlineAt,
}));
/** What `release` and `disconnect` answer: whether the path named another device (left alone). */
export const zDisconnectResult = lazySchema(() => z.object({ identityMismatch: z.boolean() }));

/** `publish`: make the device available to the server with `consumer`. */
export const zPublishPayload = lazySchema(() => z.object({
  consumer: z.string().min(1),
  server: zServer,
  attachment: zAttachment,
  device: zDevice,
}));
/** What `publish` answers (the consumer's Publication). */
export const zPublishResult = lazySchema(() => z.object({
  path: z.string().min(1),
  guestDevice: z.string().optional(),
  serial: z.string().optional(),
}));

/** `unpublish`: undo `publish`; `stillShared` keeps the volume's own name for its other users. */
export const zUnpublishPayload = lazySchema(() => z.object({
  consumer: z.string().min(1),
  server: zServer,
  attachment: zAttachment,
  stillShared: z.boolean(),
}));
/** What `unpublish` answers (nothing). */
export const zUnpublishResult = lazySchema(() => z.object({}));

/** `unpublish_orphan`: drop what `consumer` published for a volume's device no record names (reconcile). */
export const zUnpublishOrphanPayload = lazySchema(() => z.object({
  consumer: z.string().min(1),
  volumeId: z.string().min(1),
  device: zDevice,
  /** The transport that lists the device (its host root maps the path to the machine's); absent: taken as it is. */
  transport: z.string().min(1).optional(),
  /** Link names live records hold on the host (`UnpublishOrphanOptions.keep`); absent from an older API: none. */
  keep: z.array(z.string().min(1)).optional(),
}));
/** What `unpublish_orphan` answers: whether the consumer can do it at all (`Consumer.unpublishOrphan`). */
export const zUnpublishOrphanResult = lazySchema(() => z.object({ supported: z.boolean() }));

/** `repair_paths`: put a listed device whose path in use failed back on a live path (`TransportDriver.repairPaths`). */
export const zRepairPathsPayload = lazySchema(() => z.object({
  transport: z.string().min(1),
  listed: z.object({ device: zDevice, source: z.record(z.string(), z.unknown()) }),
}));
/** What `repair_paths` answers: whether the transport can do it at all, and what it did. */
export const zRepairPathsResult = lazySchema(() => z.object({ supported: z.boolean(), changed: z.boolean(), detail: z.string() }));

/** `guest_disks`: the disks the server's guest has now, through its consumer (reconcile). */
export const zGuestDisksPayload = lazySchema(() => z.object({
  consumer: z.string().min(1),
  server: zServer,
}));
/** One disk in a guest (`Consumer.guestDisks`). */
export const zGuestDisk = lazySchema(() => z.object({
  serial: z.string(),
  id: z.string().min(1),
  guestDevice: z.string().optional(),
  /** Whether the consumer plugged it itself for its serial's volume (`GuestDisk.plugged`); an older agent sends none. */
  plugged: z.boolean().optional(),
}));
/**
 * What `guest_disks` answers: whether the consumer can list a guest at all, and the disks
 * (`null`: the guest does not run).
 */
/** `installed: false`: the consumer is not installed where the step ran (an older agent throws instead). */
export const zGuestDisksResult = lazySchema(() => z.object({ supported: z.boolean(), disks: z.array(zGuestDisk).nullable(), installed: z.boolean().optional() }));

/** `unplug_guest_disk`: unplug one disk from the server's guest (a reconcile fix; the host side stays). */
export const zUnplugGuestDiskPayload = lazySchema(() => z.object({
  consumer: z.string().min(1),
  server: zServer,
  disk: zGuestDisk,
}));
/** What `unplug_guest_disk` answers (nothing). */
export const zUnplugGuestDiskResult = lazySchema(() => z.object({}));

/**
 * `check_publications`: what is wrong with what each attachment's consumer published on the host
 * (`Consumer.checkPublication`, for reconcile). An older agent fails the item (an unknown step):
 * reconcile then names the host's publications as unchecked.
 */
export const zCheckPublicationsPayload = lazySchema(() => z.object({
  checks: z.array(z.object({ consumer: z.string().min(1), server: zServer, attachment: zAttachment })).max(10_000),
}));
/**
 * What `check_publications` answers, one per check in its order: whether the consumer can check
 * at all, what is wrong (`null`: nothing), and why the check failed when it did (`error`, with its
 * code in `errorCode`; an older agent sends none).
 */
export const zCheckPublicationsResult = lazySchema(() => z.object({
  results: z.array(z.object({ supported: z.boolean(), problem: z.string().nullable(), error: z.string().optional(), errorCode: z.string().optional() })),
}));

/** `connector`: the host's connector with the multipath wish applied. */
export const zConnectorPayload = lazySchema(() => z.object({
  multipath: z.boolean(),
  enforce_multipath: z.boolean(),
}));
/** What `connector` answers. */
export const zConnectorResult = lazySchema(() => z.object({ connector: zConnector }));

/**
 * `host_facts`: list what every transport finds connected on the host (for reconcile); `readOnly`
 * (a dry run) asks the transports to change nothing while they list. An older agent ignores it.
 */
export const zHostFactsPayload = lazySchema(() => z.object({ readOnly: z.boolean().optional() }));
/** One transport's devices on the host (reconcile's `TransportListing`). */
export const zTransportListing = lazySchema(() => z.object({
  transport: z.string().min(1),
  protocol: z.string().min(1),
  /** The transport's `sourceKeys` (absent from an older agent: it cannot tell, nothing is claimed). */
  sourceKeys: z.array(z.string().min(1)).default([]),
  /** Whether the transport can put a device back on a live path (`repairPaths`; absent from an older agent: no). */
  repairsPaths: z.boolean().default(false),
  devices: z.array(z.object({
    device: zDevice,
    source: z.record(z.string(), z.unknown()),
    /** The device's storage went away behind berth's back (`ConnectedDevice.storageGone`; absent from an older agent: not known). */
    // A newer agent's kind this berth does not know is still "gone": read as `replaced`, never
    // failing the whole listing (which would leave every device of the host unchecked).
    storageGone: z
      .string()
      .max(64)
      .transform((how): 'deleted' | 'replaced' => (how === 'deleted' ? 'deleted' : 'replaced'))
      .optional(),
  })),
}));
/** What `host_facts` answers: the listings, and each transport that cannot list or failed to (with why). */
export const zHostFactsResult = lazySchema(() => z.object({ listings: z.array(zTransportListing), unchecked: z.array(zReconcileUnchecked).default([]) }));

/** Payload and result schema of each host step (parse at both ends: the agent and the replica). */
export const HOST_STEP_SCHEMAS = {
  connect: { payload: zConnectPayload, result: zConnectResult },
  release: { payload: zDisconnectPayload, result: zDisconnectResult },
  disconnect: { payload: zDisconnectPayload, result: zDisconnectResult },
  publish: { payload: zPublishPayload, result: zPublishResult },
  unpublish: { payload: zUnpublishPayload, result: zUnpublishResult },
  connector: { payload: zConnectorPayload, result: zConnectorResult },
  host_facts: { payload: zHostFactsPayload, result: zHostFactsResult },
  unpublish_orphan: { payload: zUnpublishOrphanPayload, result: zUnpublishOrphanResult },
  repair_paths: { payload: zRepairPathsPayload, result: zRepairPathsResult },

  guest_disks: { payload: zGuestDisksPayload, result: zGuestDisksResult },
  unplug_guest_disk: { payload: zUnplugGuestDiskPayload, result: zUnplugGuestDiskResult },
  check_publications: { payload: zCheckPublicationsPayload, result: zCheckPublicationsResult },
} as const satisfies Record<HostStepName, { payload: z.ZodType; result: z.ZodType }>;

/** The payload a host step takes. */
export type HostStepPayload<S extends HostStepName> = z.input<(typeof HOST_STEP_SCHEMAS)[S]['payload']>;
/** The result a host step answers. */
export type HostStepResult<S extends HostStepName> = z.output<(typeof HOST_STEP_SCHEMAS)[S]['result']>;

/** What an agent tells the API when it starts: who it is and what its host can do. */
export const zAgentRegistration = lazySchema(() => z.object({
  /** This agent process (a fresh id per start): the worker that claims the host's items. */
  instance: z.string().min(1).max(200),
  /** berth's version on the agent. */
  version: z.string().min(1).max(100),
  /** The agent protocol it speaks (`AGENT_PROTOCOL`); absent from the first agents: 1. */
  protocol: z.number().int().min(1).max(1000).optional(),
  /** The host's base connector merged with its transports' properties (no multipath wish applied). */
  connector: zConnector,
  /** Transports loaded on the host (the replica picks one of these). */
  transports: z.array(z.string().min(1)).max(100),
  /** What each connects (protocols, priority): a transport installed on the host only is then chosen without being named. Optional: an older agent sends names only. */
  transportInfo: z.array(zAgentTransportInfo).max(100).optional(),
  /** Consumers loaded on the host. */
  consumers: z.array(z.string().min(1)).max(100),
}));
/** An agent's registration. */
export type AgentRegistration = z.output<typeof zAgentRegistration>;

/** A work item as handed to the agent that claimed it; `payload` may carry secrets (claim answers only). */
export const zClaimedWork = lazySchema(() => z.object({
  item: zWorkItem,
  payload: z.record(z.string(), z.unknown()),
  /**
   * The API's clock when it handed the item out. The host's clock may differ from the
   * controller's: the agent reads the payload's `deadlineAt` and the item's lease end against
   * this, not against its own clock (absent from an older API: its own clock, as before).
   */
  handedOutAt: z.string().optional(),
}));
/** One claimed work item. */
export type ClaimedWork = z.output<typeof zClaimedWork>;

/** What `register` answers: the host row, this agent's worker name and its leases. */
export interface AgentSession {
  hostId: string;
  hostName: string;
  /** The worker name to claim, renew and report with. */
  worker: string;
  /** Lease of a claimed item; renew it well before (every `leaseMs / 3`). */
  leaseMs: number;
  /** How long one claim may wait for work before it answers `[]`. */
  pollWaitMs: number;
  /** The API's agent protocol (`AGENT_PROTOCOL`); absent from an API older than versioning: 1. */
  protocol?: number;
}

/** How an agent finished an item. */
export interface AgentOutcome {
  state: 'done' | 'failed';
  result?: Record<string, unknown>;
  /**
   * Why it failed; `untouched: true` when the step said it changed nothing on the host (the
   * driver's `details.untouched`): the replica then rolls a detach back as a local one would.
   * Added without a protocol bump: an older API drops the field, an older agent never sends it.
   */
  error?: { code: string; message: string; hint?: string; untouched?: boolean; guestHoldsDevice?: boolean; unplugRequested?: boolean };
}

/** The notification channel that wakes the agent of `hostId` (37 characters, a valid channel name). */
export function hostChannel(hostId: string): string {
  return `host_${hostId.replaceAll('-', '')}`;
}

/**
 * The notification channel a finished work item is announced on. The payload is the finished item
 * as JSON (`workDoneNotice`), or only its id when the item is too large for a notification; a
 * replica waiting for it takes the item from the payload instead of reading it back.
 */
export const WORK_DONE_CHANNEL = 'work_done';

/** The largest item sent whole on `WORK_DONE_CHANNEL` (PostgreSQL's payload limit is 7,999 bytes). */
export const WORK_DONE_ITEM_MAX_BYTES = 7_500;

/** The `WORK_DONE_CHANNEL` payload for a finished item: the item as JSON, or its id when the JSON is too large. */
export function workDoneNotice(item: WorkItem): string {
  const whole = JSON.stringify(item);
  return Buffer.byteLength(whole) <= WORK_DONE_ITEM_MAX_BYTES ? whole : item.id;
}

/**
 * A `WORK_DONE_CHANNEL` payload read back: the item's id, and the item itself when it came whole
 * and parses (an id alone — from a large item or an older replica — means "read it").
 */
export function parseWorkDoneNotice(payload: string): { id: string; item?: WorkItem } {
  if (!payload.startsWith('{')) return { id: payload };
  let json: unknown;
  try {
    json = JSON.parse(payload);
  } catch {
    return { id: '' };
  }
  const item = zWorkItem.safeParse(json);
  if (item.success) return { id: item.data.id, item: item.data };
  const id = (json as { id?: unknown } | null)?.id;
  return { id: typeof id === 'string' ? id : '' };
}
