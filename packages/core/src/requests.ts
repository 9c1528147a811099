import { z } from 'zod';
import { lazySchema } from './lazy-schema.js';
import { zHostName } from './config.js';
import { zConnector } from './connection.js';
import { zId, zName, zOperationKind, zOperationState, zSizeBytes } from './model.js';
import { zNewHypervisor } from './hypervisor.js';

const zRef = lazySchema(() => z.string().min(1).max(200));
const zProject = lazySchema(() => z.string().min(1).max(200).optional());
// 200 as a client sends it, plus room for the project tag the API keeps it under (`<tag>/<key>`).
const zIdempotencyKey = lazySchema(() => z.string().min(1).max(300).optional());

/**
 * A new volume's or server's name: never shaped like an id. A name is looked up after the ids, so
 * a volume named with another's id could be reached only by its own id (found by an explorer).
 * Stored names are not checked again (`zName`): one made before this stays usable.
 */
const zNewName = lazySchema(() => zName.refine((name) => !z.uuid().safeParse(name).success, 'must not have the form of an id (a UUID): names and ids are looked up together'));

/** `createVolume` input. */
export const zCreateVolumeRequest = lazySchema(() => z.strictObject({
  name: zNewName,
  sizeBytes: zSizeBytes,
  backend: z.string().min(1).max(100).optional(),
  multiattach: z.boolean().optional(),
  projectId: zProject,
}));

/** `createServer` input. */
export const zCreateServerRequest = lazySchema(() => z.strictObject({
  name: zNewName,
  // As the HTTP API has it: a name no host can have would make a row no agent could register for.
  host: zHostName.refine((name) => !z.uuid().safeParse(name).success, 'must not have the form of an id (a UUID): hosts are looked up by id when named so').optional(),
  hypervisor: zNewHypervisor.optional(),
  projectId: zProject,
}));

/** `forgetHost` input: a host's name or id (spaces around it dropped). */
export const zHostRef = lazySchema(() => z.string().trim().min(1, 'name the host').max(253, 'a host name is at most 253 characters'));

/**
 * `forgetHost` options. `assumeDead`: the caller asserts the machine is dead (fenced: powered off,
 * cut from the storage network), for a host berth cannot judge itself — one with no agent record
 * (a host only servers named, another replica's or an embedded berth's own host), or an operation
 * a berth process on that host owns without a lease. It never overrides an agent heard from lately.
 */
export const zForgetHostOptions = lazySchema(() => z.strictObject({
  assumeDead: z.boolean().optional(),
}));
export type ForgetHostOptions = z.input<typeof zForgetHostOptions>;

/** The youngest finished operation `pruneOperations` deletes: an hour (see `zOperationPruneRequest`). */
export const MIN_PRUNE_AGE_MS = 3_600_000;
const AGE_UNITS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;
/** An age as people write it: `30d`, `12h`, `90m`, `2w`, `3600s` → milliseconds. */
export const zAge = lazySchema(() => z
  .string()
  .trim()
  .regex(/^\d{1,10}[smhdw]$/, 'write an age like 30d, 12h, 90m, 2w or 3600s')
  .transform((text) => Number(text.slice(0, -1)) * AGE_UNITS[text.slice(-1) as keyof typeof AGE_UNITS]));

/**
 * `pruneOperations` input: delete the finished operations that ended more than `olderThanMs` ago.
 * At least an hour: a client may still be waiting on an operation that just ended, and a retry
 * with its idempotency key must find it rather than start again.
 */
export const zOperationPruneRequest = lazySchema(() => z.strictObject({
  olderThanMs: z
    .number()
    .int()
    .min(MIN_PRUNE_AGE_MS, 'keep at least the last hour of operations (--older-than 1h or more)')
    .max(100 * 365 * 86_400_000, 'an age of more than 100 years is a unit mistake'),
  /**
   * The cut a dry run answered: delete no later than it, so that what was counted and confirmed is
   * what goes (the age's own cut has moved on since). The earlier of the two is used.
   */
  endedBefore: z.string().datetime({ offset: true }).optional(),
  dryRun: z.boolean().optional(),
}));
export type OperationPruneRequest = z.input<typeof zOperationPruneRequest>;

/** `attach` input. */
export const zAttachRequest = lazySchema(() => z.strictObject({
  volume: zRef,
  server: zRef.optional(),
  mode: z.enum(['rw', 'ro']).optional(),
  multipath: z.boolean().optional(),
  /** Connect with this transport (`iscsi`, `iscsi-user`, ...) instead of the automatic choice. */
  transport: z.string().min(1).max(100).optional(),
  idempotencyKey: zIdempotencyKey,
  projectId: zProject,
}));

/** `detach` input. */
export const zDetachRequest = lazySchema(() => z.strictObject({
  volume: zRef,
  server: zRef.optional(),
  attachmentId: z.uuid().optional(),
  force: z.boolean().optional(),
  idempotencyKey: zIdempotencyKey,
  projectId: zProject,
}));

/** `reserveAttachment` input (the three-phase API's create). */
export const zReserveAttachmentRequest = lazySchema(() => z.strictObject({
  volume: zRef,
  server: zRef,
  mode: z.enum(['rw', 'ro']).optional(),
  connector: zConnector.optional(),
  projectId: zProject,
}));

/** The most operations one listing answers (the API's and the CLI's `limit`). */
export const MAX_OPERATION_LIST = 10_000;

/** `listOperations` input. */
export const zOperationListFilter = lazySchema(() => z.strictObject({
  state: zOperationState.optional(),
  kind: zOperationKind.optional(),
  /** Only the operations on this volume (its id). */
  volumeId: zId.optional(),
  // A sanity bound: the API and the CLI ask at most one more than `MAX_OPERATION_LIST` (to tell whether there are more).
  limit: z.number().int().min(1).max(1_000_000).optional(),
}));
