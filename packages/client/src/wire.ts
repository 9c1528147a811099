import { z } from 'zod';
import {
  DIFFERENCE_KINDS,
  ERROR_CODES,
  zAttachment,
  zConnectionInfo,
  zHost,
  zOperation,
  zServer,
  zVolume,
  type DoctorEntry,
  type PluginReport,
  type ReconcileReport,
} from '@berth/core';

// What the berth API sends and takes beyond @berth/core's models: its envelopes, its problems, its
// reports. The API (`@berth/api`) describes its answers in OpenAPI with these very schemas, and this
// client checks the answers with them, so both sides agree by construction.

/** An RFC 9457 problem: every error answer, with berth's stable `code` and the request id to find it in the log. */
export const zProblem = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  code: z.enum(ERROR_CODES),
  detail: z.string(),
  requestId: z.string(),
  hint: z.string().optional(),
  operationId: z.string().optional(),
  issues: z.array(z.object({ path: z.array(z.string()), message: z.string() })).optional(),
  details: z.record(z.string(), z.unknown()).optional(),
});
/** An error answer's body. */
export type Problem = z.output<typeof zProblem>;

/** `GET /v1/volumes`: `{volumes: [...]}`. */
export const zVolumeList = z.object({ volumes: z.array(zVolume) });
/** `GET /v1/servers`: `{servers: [...]}`. */
export const zServerList = z.object({ servers: z.array(zServer) });
/** `GET /v1/hosts`: `{hosts: [...]}`. */
export const zHostList = z.object({ hosts: z.array(zHost) });
/** `GET /v1/attachments`: `{attachments: [...]}`. */
export const zAttachmentList = z.object({ attachments: z.array(zAttachment) });
/** `GET /v1/servers/{server}/volume-attachments`: `{volumeAttachments: [...]}`. */
export const zVolumeAttachmentList = z.object({ volumeAttachments: z.array(zAttachment) });
/** `GET /v1/operations`: `{operations: [...]}`. */
export const zOperationList = z.object({ operations: z.array(zOperation) });
/** The three-phase API's answers: an attachment and, once initialized, its connection_info (secrets only for admin and agent tokens). */
export const zAttachmentConnectionBody = z.object({ attachment: zAttachment, connectionInfo: zConnectionInfo.nullable() });
/** `GET /v1/operations/{id}/outcome` of a succeeded operation (a detach's attachment as it was, or null). */
export const zOperationOutcomeBody = z.object({ operation: zOperation, volume: zVolume, attachment: zAttachment.nullable() });
/** `DELETE /v1/attachments/{id}`: the volume once the attachment is gone. */
export const zVolumeEnvelope = z.object({ volume: zVolume });
/** `GET /v1/volumes/{volume}/credentials`: the backend's secrets. */
export const zCredentials = z.object({ credentials: z.record(z.string(), z.string()) });
/** `GET /healthz`, `GET /readyz`. */
export const zHealth = z.object({ status: z.string() });

/** `GET /v1/doctor`: `berth doctor`'s entries. */
export const zDoctorReport = z.object({
  entries: z.array(
    z.object({
      kind: z.enum(['transport', 'backend', 'consumer', 'store', 'plugin']),
      name: z.string(),
      result: z.looseObject({
        ok: z.boolean(),
        summary: z.string(),
        checks: z.array(z.object({ name: z.string(), ok: z.boolean(), detail: z.string().optional() })).optional(),
        fix: z.string().optional(),
      }),
    }),
  ),
});

/** `GET /v1/plugins`: what the server's plugin loader found. */
export const zPluginReport = z.object({
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
});

/** `POST /v1/reconcile`'s body: the options of `BerthService.reconcile`. */
export const zReconcileOptions = z.strictObject({
  dryRun: z.boolean().optional().describe('list the differences and their fixes; change nothing'),
});

/** One difference `POST /v1/reconcile` found, and what became of its fix. */
export const zReconcileDifference = z.object({
  kind: z.enum(DIFFERENCE_KINDS),
  resource: z.string(),
  volumeId: z.string().nullable(),
  attachmentId: z.string().nullable(),
  detail: z.string(),
  fix: z.enum(['terminate_connection', 'disconnect', 'reconnect', 'recompute_status', 'none']),
  fixDetail: z.string(),
  state: z.enum(['planned', 'applied', 'failed', 'skipped']),
  result: z.string().nullable(),
  errorCode: z.string().nullable(),
});

/** What `POST /v1/reconcile` answers: @berth/core's ReconcileReport. */
export const zReconcileReport = z.object({
  dryRun: z.boolean(),
  operationId: z.string().nullable().describe('the `reconcile` operation journalling the applied fixes (null when none was applied)'),
  differences: z.array(zReconcileDifference),
  unchecked: z.array(z.object({ kind: z.enum(['backend', 'transport']), name: z.string(), reason: z.string() })),
  counts: z.object({ found: z.number().int(), applied: z.number().int(), failed: z.number().int(), skipped: z.number().int() }),
});

// Core has these types but no schemas: a compile error here means the two no longer describe the same thing.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const reportMatchesCore: Same<z.output<typeof zReconcileReport>, ReconcileReport> = true;
const pluginsMatchCore: Same<z.output<typeof zPluginReport>, PluginReport> = true;
const doctorFitsCore: z.output<typeof zDoctorReport>['entries'][number] extends DoctorEntry ? true : false = true;
void reportMatchesCore;
void pluginsMatchCore;
void doctorFitsCore;
