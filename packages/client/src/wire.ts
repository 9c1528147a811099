import { z } from '@berth/core/zod';
import {
  ERROR_CODES,
  zAttachment,
  zClaimedWork,
  zConnectionInfo,
  zHost,
  zOperation,
  zServer,
  zVolume,
  type AgentSession,
  type DoctorEntry,
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
/** `GET /v1/operations`: the newest operations, and whether older ones were left out (absent from an older API: unknown). */
export const zOperationList = z.object({ operations: z.array(zOperation), more: z.boolean().optional() });
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

/** `POST /v1/agent/register`: the host this agent's token names, its worker name, its leases. */
export const zAgentSessionBody = z.object({
  hostId: z.string().min(1),
  hostName: z.string().min(1),
  worker: z.string().min(1).describe('send it as Berth-Agent-Worker with every later call'),
  leaseMs: z.number().int().positive(),
  pollWaitMs: z.number().int().nonnegative(),
  protocol: z.number().int().min(1).optional().describe('the API\'s agent protocol (absent: 1)'),
});
/** `GET /v1/agent/work`: the items claimed (empty when the wait ended with none); payloads may carry the connection secrets of `connect` items. */
export const zAgentWorkList = z.object({ items: z.array(zClaimedWork) });
/** `POST /v1/agent/work/{id}/renew`: the item's new lease end. */
export const zAgentRenewal = z.object({ leaseExpiresAt: z.string().min(1) });

/** `GET /v1/doctor`: `berth doctor`'s entries. */
export const zDoctorReport = z.object({
  entries: z.array(
    z.object({
      kind: z.enum(['transport', 'backend', 'consumer', 'store', 'plugin', 'operation']),
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

// The reconcile and plugin reports (and the reconcile body) are core's own schemas: one
// definition for core, this client and the API.
export { zPluginReport, zReconcileDifference, zReconcileOptions, zReconcileReport } from '@berth/core';

// Core has these types but no schema: a compile error here means the two no longer describe the same thing.
const sessionFitsCore: z.output<typeof zAgentSessionBody> extends AgentSession ? true : false = true;
void sessionFitsCore;
// Core has this type but no schema: a compile error here means the two no longer describe the same thing.
const doctorFitsCore: z.output<typeof zDoctorReport>['entries'][number] extends DoctorEntry ? true : false = true;
void doctorFitsCore;
