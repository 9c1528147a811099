import type { ConnectionInfo, Connector } from '../connection.js';
import type { CheckResult } from './check.js';

/** What a backend needs to know about a volume. */
export interface BackendVolume {
  id: string;
  name: string;
  sizeBytes: number;
  /** What `create` returned (a file path, a target IQN). */
  providerLocation: string | null;
}

/** What a backend returns from `create`. */
export interface CreatedVolume {
  providerLocation: string;
  /** What the user should know although the create worked (a sparse volume larger than the free space). */
  warnings?: string[];
}

/** An export the backend holds (for `berth reconcile`). */
export interface BackendExport {
  volumeId: string;
  /** The connector's `host` or `initiator` the export is for. */
  initiator?: string;
}

/**
 * A volume backend: creates volumes and exports them to hosts (Cinder's volume driver).
 * `initializeConnection` and `terminateConnection` are idempotent.
 */
export interface VolumeBackend {
  /** Unique name (`file`, `tgt`). */
  readonly name: string;
  /** Create the volume's storage. */
  create(volume: BackendVolume, signal: AbortSignal): Promise<CreatedVolume>;
  /**
   * Remove the volume's storage; succeeds when it is already gone. A failure that removed nothing
   * (the storage is whole and usable) says `details.untouched: true`: the volume goes back to the
   * status it had instead of `error`.
   */
  delete(volume: BackendVolume, signal: AbortSignal): Promise<void>;
  /** Grow the volume to `newSizeBytes`. */
  extend?(volume: BackendVolume, newSizeBytes: number, signal: AbortSignal): Promise<void>;
  /** Export the volume to `connector` and return how to reach it. */
  initializeConnection(volume: BackendVolume, connector: Connector, signal: AbortSignal): Promise<ConnectionInfo>;
  /** Remove the export for `connector`; succeeds when it is already gone. */
  terminateConnection(volume: BackendVolume, connector: Connector, signal: AbortSignal): Promise<void>;
  /**
   * The volume's access secrets (CHAP user and password), for a user who explicitly asks
   * (`berth volume show --show-secrets`); never logged or printed otherwise.
   */
  credentials?(volume: BackendVolume): Promise<Record<string, string>>;
  /** Every export the backend holds now. */
  exports?(): Promise<BackendExport[]>;
  /**
   * The ids, among `volumes`, whose storage is gone (a volume file deleted or a LUN file removed
   * behind berth, a backend record lost): what `berth reconcile` reports as
   * `volume_storage_missing`. Only storage known to be gone is listed: one that cannot be looked
   * at now (a permission, an unreachable server) is not, and the call throws when it cannot
   * answer at all. Reads only.
   */
  missingStorage?(volumes: readonly BackendVolume[], signal: AbortSignal): Promise<string[]>;
  /**
   * The volumes, among `volumes`, whose storage is there but smaller than their `sizeBytes` (a
   * volume file cut short behind berth's back: `truncate`, a bad copy), each with the size it has
   * now: what `berth reconcile` reports as `volume_storage_short` (an attach refuses such a volume;
   * an attached one reads zeros past the cut). Storage that is gone is `missingStorage`'s, not
   * listed here; storage larger than the volume is not short. Reads only.
   */
  shortStorage?(volumes: readonly BackendVolume[], signal: AbortSignal): Promise<Array<{ id: string; sizeBytes: number }>>;
  /**
   * Upkeep a long-running berth (`berth serve`) runs every `upkeep.intervalMs`: bring back what
   * died between two calls (the tgt backend restarts its tgtd and restores every export, so hosts'
   * sessions reconnect before their recovery timeout instead of at the next command). Must be
   * cheap when all is well, start nothing no volume needs, and be safe beside every other call.
   * Without it (or without a long-running berth) the next call does the same.
   */
  upkeep?(signal: AbortSignal): Promise<void>;
  /** Stop background work (a supervised daemon) when the app shuts down. */
  close?(): Promise<void>;
  /** Whether the backend works here (what `berth doctor` prints). */
  check(): Promise<CheckResult>;
}
