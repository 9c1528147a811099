import { z } from '@berth/core/zod';
import {
  zAttachRequest,
  zConnector,
  zCreateServerRequest,
  zCreateVolumeRequest,
  zDetachRequest,
  zWorkItemError,
  zHostView,
  MAX_OPERATION_LIST,
  MIN_PRUNE_AGE_MS,
  zAge,
  zOperationKind,
  zOperationState,
  zReserveAttachmentRequest,
  zSizeBytes,
  zVolumeStatus,
} from '@berth/core';
import { parseSize } from '@berth/runtime';
import { zWaitDuration } from './duration.js';

// Request schemas derive from @berth/core's (the service parses them again): the HTTP layer only
// drops what it sets itself (projectId, idempotencyKey, path parameters). Every object is strict.

/** A volume, server or host: its name within the project, or its id. */
export const zRef = z.string().min(1).max(200).describe('a name (within the project) or an id');
const zProjectId = z.string().min(1).max(200).describe('the project to act in (admin and agent tokens; a member token acts in its own)');

/** Path `{volume}`. */
export const zVolumeParams = z.strictObject({ volume: zRef });
/** Path `{server}`. */
export const zServerParams = z.strictObject({ server: zRef });
/** Path `{server}` and `{volume}`. */
export const zServerVolumeParams = z.strictObject({ server: zRef, volume: zRef });
/** Path `{host}`. */
export const zHostParams = z.strictObject({ host: zRef });
/** Path `{id}` of an attachment or operation. */
export const zIdParams = z.strictObject({ id: z.uuid() });
/** No path parameters. */
export const zNoParams = z.strictObject({});

/** Query of project-scoped requests. */
export const zScopeQuery = z.strictObject({ projectId: zProjectId.optional() });
/** No query. */
export const zNoQuery = z.strictObject({});
/** `GET /v1/volumes`. */
export const zVolumeListQuery = zScopeQuery.extend({ status: zVolumeStatus.optional() });
/** `GET /v1/attachments`. */
export const zAttachmentListQuery = zScopeQuery.extend({ volume: zRef.optional(), server: zRef.optional() });
/** `GET /v1/operations`. */
/** The newest this many operations when a listing names no `limit` (a journal of months holds tens of thousands). */
export const DEFAULT_OPERATION_LIST = 100;
/**
 * A whole number in a query string, in decimal digits only (`z.coerce` took `1e3` and `0x10`, read
 * ` ` as 0 and a repeated key as NaN); a repeated key says so.
 */
function zQueryInt(min: number, max: number) {
  return z.preprocess(
    (value) => (Array.isArray(value) ? { repeated: true } : value),
    z
      .string({ error: (issue) => (typeof issue.input === 'object' && issue.input !== null ? 'given more than once' : 'must be a whole number') })
      .regex(/^\d{1,9}$/, 'must be a whole number (decimal digits)')
      .transform(Number)
      .pipe(z.number().int().min(min).max(max)),
  );
}

export const zOperationListQuery = zScopeQuery.extend({
  state: zOperationState.optional(),
  kind: zOperationKind.optional(),
  volumeId: z.uuid().optional().describe('only the operations on this volume (its id)'),
  limit: zQueryInt(1, MAX_OPERATION_LIST)
    .optional()
    .describe(`the newest this many (default ${DEFAULT_OPERATION_LIST}, at most ${MAX_OPERATION_LIST}); \`more\` says whether older ones were left out`),
});
/** `GET /v1/operations/{id}`: `wait` long-polls until the operation ends (bounded by the server). */
export const zOperationQuery = zScopeQuery.extend({
  wait: zWaitDuration.optional().describe('wait up to this long (30s, 500ms, 2m; at most the server\'s maximum) for the operation to end'),
});
const zBooleanText = z.enum(['true', 'false']).transform((v) => v === 'true');
/** `DELETE .../volume-attachments/{volume}`. */
export const zDetachQuery = zScopeQuery.extend({ force: zBooleanText.optional().describe('go on through driver and backend errors') });
/** `DELETE /v1/hosts/{host}`. */
export const zForgetHostQuery = z.strictObject({
  assumeDead: zBooleanText.optional().describe('the caller asserts the machine is dead (fenced): for a host with no agent, or operations a berth on it owns without a lease'),
});

// A connector's own keys are os-brick's; a third-party driver may add more, but only flat values:
// nothing deep that a backend or the store would have to walk.
const zConnectorExtra = z.union([
  z.string().max(4096),
  z.number(),
  z.boolean(),
  z.null(),
  z.array(z.union([z.string().max(4096), z.number(), z.boolean()])).max(64),
]);
/** A connector as the HTTP API accepts it (os-brick's names; extra keys must be flat). */
export const zHttpConnector = zConnector.unwrap().catchall(zConnectorExtra);

/** A size as the CLI takes it: `64GiB`, `512MiB`, `10G` (binary), `1TB` (decimal), or bytes. */
export const zSizeText = z
  .string()
  .min(1)
  .max(32)
  .describe('the size as the CLI takes it: 64GiB, 512MiB, 10G (binary), 1TB (decimal) or a number of bytes; instead of sizeBytes');

/** A body's size, given either way: `sizeBytes` (a number) or `size` (`"64GiB"`). */
const sizeChoice = {
  sizeBytes: zSizeBytes.optional().describe('the size in bytes (a multiple of 512); or give size'),
  size: zSizeText.optional(),
};

/** One size from `sizeBytes` or `size` (exactly one of them), checked as `zSizeBytes` checks it. */
function oneSize<T extends { sizeBytes?: number | undefined; size?: string | undefined }>(value: T, ctx: z.RefinementCtx): Omit<T, 'size' | 'sizeBytes'> & { sizeBytes: number } {
  const { size, sizeBytes, ...rest } = value;
  if ((size === undefined) === (sizeBytes === undefined)) {
    ctx.addIssue({ code: 'custom', message: 'give the size once: sizeBytes (a number of bytes) or size ("64GiB")', path: ['sizeBytes'] });
    return z.NEVER;
  }
  if (size === undefined) return { ...rest, sizeBytes: sizeBytes as number };
  let bytes: number;
  try {
    bytes = parseSize(size);
  } catch (error) {
    ctx.addIssue({ code: 'custom', message: `${error instanceof Error ? error.message : 'invalid size'}: use 512MiB, 1GiB, 10G, 1TB or bytes`, path: ['size'] });
    return z.NEVER;
  }
  const checked = zSizeBytes.safeParse(bytes);
  if (!checked.success) {
    for (const issue of checked.error.issues) ctx.addIssue({ code: 'custom', message: issue.message, path: ['size'] });
    return z.NEVER;
  }
  return { ...rest, sizeBytes: checked.data };
}

/** `POST /v1/volumes`: the size as `sizeBytes` or as `size` (`"64GiB"`). */
export const zCreateVolumeBody = zCreateVolumeRequest.unwrap().omit({ projectId: true, sizeBytes: true }).extend(sizeChoice).transform(oneSize);
/** `POST /v1/volumes/{volume}/extend`: the new size as `sizeBytes` or `size`. */
export const zExtendVolumeBody = z.strictObject(sizeChoice).transform(oneSize);
/** `POST /v1/volumes/{volume}/attach`: the server defaults to the API host's own. */
export const zVolumeAttachBody = zAttachRequest.unwrap().omit({ volume: true, projectId: true, idempotencyKey: true });
/** `POST /v1/volumes/{volume}/detach`. */
export const zVolumeDetachBody = zDetachRequest.unwrap().omit({ volume: true, projectId: true, idempotencyKey: true });
const HOST_LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?';
/** A host name as RFC 1123 has it: dot-separated labels of letters, digits and inner hyphens, 1–63 each, 253 in all. */
export const zHostName = z
  .string()
  .min(1)
  .max(253)
  .regex(new RegExp(`^${HOST_LABEL}(?:\\.${HOST_LABEL})*$`), 'must be a host name (RFC 1123): labels of letters, digits and inner hyphens, separated by dots');
/** `POST /v1/servers`: a host is named as RFC 1123 allows (core takes any string, and creates its row). */
export const zCreateServerBody = zCreateServerRequest
  .unwrap()
  .omit({ projectId: true })
  .extend({ host: zHostName.optional().describe('the host the server runs on (default: the API host); created when new') });
/** `POST /v1/servers/{server}/volume-attachments` (Nova's attach). */
export const zServerAttachBody = zAttachRequest
  .unwrap()
  .pick({ mode: true, multipath: true })
  .extend({ volumeId: zRef.describe('the volume to attach: its id (or its name)') });
/** `POST /v1/attachments` (the three-phase API's create: reserve, and initialize when a connector is given). */
export const zReserveAttachmentBody = zReserveAttachmentRequest.unwrap().omit({ projectId: true }).extend({ connector: zHttpConnector.optional() });
/** `PUT /v1/attachments/{id}` (initialize with a connector). */
export const zInitializeAttachmentBody = z.strictObject({ connector: zHttpConnector });
/** `POST /v1/operations/prune`: the service takes milliseconds, people write `30d`. */
export const zOperationPruneBody = z.strictObject({
  olderThan: zAge.refine((ms) => ms >= MIN_PRUNE_AGE_MS, 'keep at least the last hour of operations (1h or more)').describe('delete finished operations that ended longer ago than this: 30d, 12h, 2w (at least 1h)'),
  endedBefore: z.string().datetime({ offset: true }).optional().describe('delete none that ended after this (the cut a dry run answered: what was counted is what goes); the earlier of this and the age\'s cut is used'),
  dryRun: z.boolean().optional().describe('count them and delete nothing'),
});
/** `POST /v1/reconcile`. */
export { zReconcileOptions as zReconcileBody } from '@berth/core';
/** `GET /v1/hosts`: each host with its agent's state (`online`/`offline`). */
export const zHostViewList = z.object({ hosts: z.array(zHostView) });

/** `POST /v1/agent/register`. */
export { zAgentRegistration as zAgentRegisterBody } from '@berth/core';
/** `GET /v1/agent/work?wait=25s&limit=4`. */
export const zAgentWorkQuery = z.strictObject({
  wait: zWaitDuration.optional().describe('how long to wait for work when there is none (default: the config\'s agent.pollWaitMs)'),
  limit: zQueryInt(1, 100).optional().describe('claim at most this many items (default 1)'),
});
/** `POST /v1/agent/work/{id}/result`. */
export const zAgentResultBody = z.strictObject({
  state: z.enum(['done', 'failed']),
  result: z.record(z.string(), z.unknown()).optional(),
  error: zWorkItemError.optional(),
});
/** What a result answers. */
export const zAgentResultAck = z.object({ accepted: z.literal(true) });

/** A body that must be absent or `{}`. */
export const zEmptyBody = z.strictObject({});

// The reports are core's schemas, the answers' envelopes the client's wire schemas: one definition for every side.
export { zForgetHostReport, zForgottenAttachment, zPluginReport, zReconcileDifference, zReconcileReport } from '@berth/core';
export {
  zAgentRenewal,
  zAgentSessionBody as zAgentSession,
  zAgentWorkList,
  zAttachmentConnectionBody as zAttachmentConnection,
  zAttachmentList,
  zCredentials,
  zDoctorReport,
  zHealth,
  zHostList,
  zOperationList,
  zOperationOutcomeBody as zOperationOutcome,
  zServerList,
  zVolumeAttachmentList,
  zVolumeEnvelope,
  zVolumeList,
} from '@berth/client';
