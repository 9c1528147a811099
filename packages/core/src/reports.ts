import { z } from 'zod';
import { lazySchema } from './lazy-schema.js';
import type { CheckResult } from './contracts/check.js';

// The reports berth's actions answer with, in one module that imports no other part of core's
// logic: the service interface, the catalog, recovery and reconcile all use these, and the HTTP
// API and its client describe and check their answers with these very schemas.

/** The kinds of difference `berth reconcile` looks for, in the order it reports them. */
export const DIFFERENCE_KINDS = [
  'export_without_attachment',
  'device_without_attachment',
  'attachment_device_gone',
  'attachment_path_failed',
  'attachment_storage_gone',
  'attachment_stuck',
  'attachment_error',
  'guest_disk_without_attachment',
  'attachment_missing_from_guest',
  'attachment_not_published',
  'volume_storage_missing',
  'volume_storage_short',
  'volume_status_mismatch',
] as const;
/** One of `DIFFERENCE_KINDS`. */
export type DifferenceKind = (typeof DIFFERENCE_KINDS)[number];

/** What reconcile does about a difference (`none`: it is reported and left alone). */
export const FIX_ACTIONS = ['terminate_connection', 'disconnect', 'reconnect', 'repair_paths', 'unplug', 'replug', 'republish', 'recompute_status', 'none'] as const;
/** One of `FIX_ACTIONS`. */
export type FixAction = (typeof FIX_ACTIONS)[number];

/** Where a fix stands: `planned` (dry run), `applied`, `failed`, or `skipped` (with the reason). */
export const FIX_STATES = ['planned', 'applied', 'failed', 'skipped'] as const;
/** One of `FIX_STATES`. */
export type FixState = (typeof FIX_STATES)[number];

/** One difference between the store, the backends' exports and this host's devices, and its fix. */
export const zReconcileDifference = lazySchema(() => z.object({
  kind: z.enum(DIFFERENCE_KINDS),
  // What differs, for people: `export of volume db1 (tgt) to iqn…`, `/dev/loop3`, `volume db1`.
  resource: z.string(),
  volumeId: z.string().nullable(),
  attachmentId: z.string().nullable(),
  // One line: what disagrees with what.
  detail: z.string(),
  fix: z.enum(FIX_ACTIONS),
  // One line: what the fix does.
  fixDetail: z.string(),
  state: z.enum(FIX_STATES),
  // What applying it did, the error when it failed, or why it was skipped.
  result: z.string().nullable(),
  // The error's code when the fix failed (`DRIVER_ERROR`, `BACKEND_ERROR`, ...).
  errorCode: z.string().nullable(),
}));
/** One difference and its fix. */
export type ReconcileDifference = z.output<typeof zReconcileDifference>;

/**
 * Something reconcile could not look at: differences there are unknown. `errorCode` is the error's
 * code when looking failed (an agent or backend that did not answer, a listing that broke: the CLI
 * exits with it), null when the part simply cannot be looked at (a transport or consumer without
 * the method, a guest that does not run). Older agents send no `errorCode`: read as null.
 */
export const zReconcileUnchecked = lazySchema(() => z.object({
  kind: z.enum(['backend', 'transport', 'server']),
  name: z.string(),
  reason: z.string(),
  errorCode: z.string().nullable().default(null),
}));
/** Something reconcile could not look at. */
export type ReconcileUnchecked = z.output<typeof zReconcileUnchecked>;

/** What `berth reconcile` (and `POST /v1/reconcile`) found and did. */
export const zReconcileReport = lazySchema(() => z.object({
  dryRun: z.boolean(),
  operationId: z.string().nullable().describe('the `reconcile` operation journalling the applied fixes (null when none was applied)'),
  differences: z.array(zReconcileDifference),
  unchecked: z.array(zReconcileUnchecked),
  counts: z.object({ found: z.number().int(), applied: z.number().int(), failed: z.number().int(), skipped: z.number().int() }),
}));
/** What `berth reconcile` found and did. */
export type ReconcileReport = z.output<typeof zReconcileReport>;

/** Options of `BerthService.reconcile` (`POST /v1/reconcile`'s body). */
export const zReconcileOptions = lazySchema(() => z.strictObject({
  dryRun: z.boolean().optional().describe('list the differences and their fixes; change nothing'),
  host: z
    .string()
    .min(1)
    .max(253)
    .optional()
    .describe("the host (name or id) whose devices are compared: its `berth agent` lists them and runs the fixes there (default: the host berth runs on)"),
}));
/** Options of `BerthService.reconcile`. */
export type ReconcileOptions = z.output<typeof zReconcileOptions>;

/** What `berth host forget` did about one attachment of the host: its export and its record. */
export const zForgottenAttachment = lazySchema(() => z.object({
  id: z.string(),
  volumeId: z.string(),
  /** The volume's name. */
  volume: z.string(),
  /** The server's name (null when its record was already gone). */
  server: z.string().nullable(),
  /** Its status when it was found (`attached`, `error_detaching`, ...). */
  status: z.string(),
  export: z
    .enum(['terminated', 'shared', 'none', 'failed'])
    .describe("the backend's export to the host: `terminated`, `shared` (kept for another attachment of the volume there, removed with the last one), `none` (nothing recorded was exported), `failed`"),
  state: z.enum(['dropped', 'failed', 'skipped']).describe('`dropped`: the record is gone; `failed`/`skipped`: it is kept (see `error`), and so is the host'),
  /** The volume's status afterwards (`available`, or `in-use` while attached elsewhere); null when not dropped. */
  volumeStatus: z.string().nullable(),
  error: z.string().nullable(),
  /** The error's code when it failed (`BACKEND_ERROR`, `CONFLICT`, ...). */
  errorCode: z.string().nullable(),
}));
/** What `berth host forget` did about one attachment. */
export type ForgottenAttachment = z.output<typeof zForgottenAttachment>;

/** What `berth host forget` (and `DELETE /v1/hosts/{host}`) did. Names and ids only: no connector, no secret. */
export const zForgetHostReport = lazySchema(() => z.object({
  host: z.object({ id: z.string().nullable(), name: z.string() }),
  /** The host was not known (already forgotten): nothing was done. */
  alreadyGone: z.boolean(),
  /** The host's record is gone now; false when an attachment could not be dropped (run it again). */
  removed: z.boolean(),
  attachments: z.array(zForgottenAttachment),
  /** Operations on the host whose process had died, ended `failed` (code CANCELLED) with a `forget_host` journal row. */
  operations: z.array(z.object({ id: z.string(), kind: z.string() })),
  /** The host's work items no agent will run now, cancelled. */
  workItems: z.array(z.object({ id: z.string(), step: z.string() })),
  /** The servers of the host, removed with it. */
  servers: z.array(z.object({ id: z.string(), name: z.string(), projectId: z.string() })),
  /** Device records of the host removed with it (berth's ledger of what it connected there). */
  deviceRecords: z.number().int(),
  /** The names of the config's agent tokens (`api.tokens`) that still name the host: remove them. */
  agentTokens: z.array(z.string()),
}));
/** What `berth host forget` did. */
export type ForgetHostReport = z.output<typeof zForgetHostReport>;

/** What `pruneOperations` (`berth operation prune`, `POST /v1/operations/prune`) did. */
export const zOperationPruneReport = lazySchema(() => z.object({
  /** How many operations were deleted (with `dryRun`: would be). */
  pruned: z.number().int(),
  /** The cut: operations that ended before this (ISO-8601). */
  endedBefore: z.string(),
  dryRun: z.boolean(),
}));
export type OperationPruneReport = z.output<typeof zOperationPruneReport>;

/** What the plugin loader found (`berth plugins`, `GET /v1/plugins`). */
export const zPluginReport = lazySchema(() => z.object({
  loaded: z.array(
    z.object({
      name: z.string(),
      packageName: z.string(),
      version: z.string().optional(),
      transports: z.array(z.string()),
      backends: z.array(z.string()),
      consumers: z.array(z.string()),
    }),
  ),
  failed: z.array(z.object({ packageName: z.string(), error: z.string() })),
}));
/** What the plugin loader found. */
export type PluginReport = z.output<typeof zPluginReport>;

/** One line of `berth doctor`. */
export interface DoctorEntry {
  kind: 'transport' | 'backend' | 'consumer' | 'store' | 'plugin' | 'operation';
  name: string;
  result: CheckResult;
}

/**
 * What recovery did with one unfinished operation. `deferred`: the database failed while it ran
 * (`isStoreOutage`), so the operation stays `running` and the next recovery runs it again.
 */
export interface RecoveryOutcome {
  operationId: string;
  kind: string;
  action: 'completed' | 'rolled_back' | 'resumed' | 'failed' | 'skipped' | 'deferred';
  detail: string;
}
