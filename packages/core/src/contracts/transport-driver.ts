import type { ConnectionInfo, Connector, Device, DevicePath } from '../connection.js';
import type { CheckResult } from './check.js';

/** Per-call context a transport receives from the pipeline. */
export interface TransportCallContext {
  /** Fires when the operation is cancelled or passes its deadline: stop and clean up. */
  signal: AbortSignal;
  /** The operation's id, for logs and persisted attach state. */
  operationId?: string;
  /** The volume's id (a stable key for persisted attach state). */
  volumeId?: string;
  /** This host's connector for this attach (`multipath`, `enforce_multipath`, `initiator`). */
  connector?: Connector;
}

/** Options of a disconnect. */
export interface DisconnectOptions extends TransportCallContext {
  /** Go on through errors, then throw one error listing them all (nothing stays half-removed). */
  force: boolean;
  /**
   * Devices that other attachments on this host still use (same volume or not): never flush,
   * detach, delete or log out of these, even when `device` is undefined and the transport has to
   * find what a cut-short connect left behind.
   */
  inUse?: readonly Device[];
}

/**
 * A device this transport finds connected on the host (for `berth reconcile`). A transport with
 * several ways to one volume lists them in `device.paths`, each with its `state`: `active` (in
 * use and answering), `standby` (a way not in use) or `failed` (in use and not answering), and
 * `detail` in words. A transport with one way lists it too when it can tell its state (the kernel
 * iSCSI transport: the session and the disk's SCSI state). Reconcile reports a device whose path
 * in use is `failed` (`attachment_path_failed`): repaired by a transport with `repairPaths`,
 * reported as skipped otherwise (the host's initiator reconnects it by itself, or nothing can).
 */
export interface ConnectedDevice {
  device: Device;
  /** The backing thing, in connection_info terms (a file path, a target IQN + LUN): see `sourceKeys`. */
  source: Record<string, unknown>;
  /**
   * Set when the storage behind the device went away behind berth's back while the device still
   * holds it (the loop transport: its backing file unlinked — `deleted` — or another file now at
   * its path — `replaced`). What was written through the device since lives only in the device:
   * a disconnect without `force` refuses it (`CONFLICT`, `details.reason: 'storage-gone'`,
   * `untouched`), and reconcile reports it (`attachment_storage_gone`) without fixing it. Absent:
   * nothing known to be wrong (a transport that cannot tell leaves it out).
   */
  storageGone?: StorageGone;
}

/** How a device's storage went away behind berth's back (`ConnectedDevice.storageGone`). */
export type StorageGone = 'deleted' | 'replaced';

/** Options of `TransportDriver.connected`. */
export interface ListOptions {
  /** Only look: change nothing on the host (a dry run). */
  readOnly?: boolean;
}

/** What `repairPaths` did. */
export interface PathRepair {
  /** False when nothing had to change (no path in use was failed, or none could be replaced yet). */
  changed: boolean;
  /** One line for the reconcile report and logs: `moved from 10.0.0.1:3260 to 10.0.0.2:3260 in 41 ms`. */
  detail: string;
}

/**
 * A transport: connects a `connection_info` on this host and returns the block device.
 * Every method is idempotent: connecting what is already connected returns the same device,
 * disconnecting what is gone succeeds.
 *
 * Device identity (the rule that keeps one volume's bytes off another volume's disk): `connect`
 * returns the device with its `identity`; `disconnect` (and `extend`, `paths`) act on a device only
 * while what is at `device.path` still has that identity. When the path now names another device
 * (the kernel reused the loop number or the sdX name), the transport touches nothing and throws a
 * `CONFLICT` BerthError with `details.reason = 'identity-mismatch'`; a device that is simply gone
 * is success. `connected()` reports each device with its identity so reconcile can compare.
 */
export interface TransportDriver {
  /** Unique name (`loop`, `iscsi`, `iscsi-multipath`). */
  readonly name: string;
  /** The `driver_volume_type` values it connects. */
  readonly protocols: readonly string[];
  /** Preference when several transports connect one protocol (higher wins when `accepts`). */
  readonly priority?: number;
  /** Whether this transport wants this connection for this connector (default: yes). */
  accepts?(connection: ConnectionInfo, connector: Connector): boolean;
  /** Connector properties this transport contributes (`initiator` for iSCSI). */
  connectorProperties(): Promise<Partial<Connector>>;
  /** Connect the volume; resolve with the device once it is usable. */
  connect(connection: ConnectionInfo, context: TransportCallContext): Promise<Device>;
  /** Disconnect; `device` is what `connect` returned (undefined when connect never finished). */
  disconnect(connection: ConnectionInfo, device: Device | undefined, options: DisconnectOptions): Promise<void>;
  /** Make the host see a grown volume; resolves with the new size in bytes. */
  extend?(connection: ConnectionInfo, device: Device, context: TransportCallContext): Promise<number>;
  /** The paths of a connected device and their state. */
  paths?(connection: ConnectionInfo, device: Device): Promise<DevicePath[]>;
  /**
   * Every device this transport finds connected on the host. With `readOnly` (`berth reconcile
   * --dry-run`) the listing changes nothing on the host: a transport that finishes its own pending
   * undos while it lists (the multipath driver's given-up logins) leaves them for a listing without it.
   */
  connected?(options?: ListOptions): Promise<ConnectedDevice[]>;
  /**
   * Put a connected device whose path in use is `failed` (as `connected` lists it) back on a live
   * path: iscsi-user fails over to another portal. Idempotent; a device whose paths are fine is
   * left alone (`changed: false`), and so is one that is no longer what `listed` says (identity).
   * Called by `berth reconcile` (finding `attachment_path_failed`) and by `berth agent`'s path
   * check. A transport that implements it reports path states in `connected` (the conformance
   * suite checks both).
   */
  repairPaths?(listed: ConnectedDevice, context: TransportCallContext): Promise<PathRepair>;
  /**
   * The keys of a `ConnectedDevice.source` (and of a connection_info's `data`) that name the
   * volume itself, not a way to it: `['device_path']` for loop, `['target_iqn', 'target_lun']` for
   * iSCSI (a portal is a way: one LUN is reachable through several). Reconcile matches a listed
   * device to a volume and an attachment by these keys only. Declare them whenever `connected` is
   * implemented (the conformance suite checks it): a transport without them is listed, but none of
   * its devices is claimed as a berth volume's and none of its attachments is ever reconnected.
   */
  readonly sourceKeys?: readonly string[];
  /**
   * Upkeep of what the transport runs beside its devices, which a process that dies between two
   * calls would otherwise leave gone until the next connect (iscsi-user: its dead-target watcher,
   * started again while LUNs are connected). Run every `upkeep.intervalMs` by the processes that run
   * this host's steps — `berth serve` while its own host has no agent, and `berth agent` — one
   * transport after another, never two rounds at once, each bounded by 60 s; a failure is logged
   * once until its message changes. Must be cheap when nothing is connected (start nothing then),
   * never connect, disconnect or start what only a connect starts, be safe beside every other call
   * (in this process and others), and end when `signal` fires. Without it (or without a
   * long-running berth on the host) the next connect does the same.
   */
  upkeep?(signal: AbortSignal): Promise<void>;
  /** Whether this host can use the transport (what `berth doctor` prints). */
  check(): Promise<CheckResult>;
}
