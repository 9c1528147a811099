import { redactConnectionInfo, zAttachment, type AttachmentConnection } from '@berth/core';
import { MANAGERS, scopeOf } from '../access.js';
import {
  zAttachmentConnection,
  zAttachmentList,
  zAttachmentListQuery,
  zIdParams,
  zInitializeAttachmentBody,
  zNoParams,
  zReserveAttachmentBody,
  zScopeQuery,
  zVolumeEnvelope,
} from '../http-schemas.js';
import type { RouteDeps } from '../route-deps.js';
import { route, type AnyRoute } from '../route.js';

/**
 * An AttachmentConnection as the answer carries it: connection_info without its secrets, for
 * everyone (these routes are for admins and members). The agent of the attachment's host gets
 * them from `GET /v1/volumes/{volume}/credentials`, its own route.
 */
function connectionBody(result: AttachmentConnection): { attachment: AttachmentConnection['attachment']; connectionInfo: unknown } {
  const info = result.connectionInfo;
  return { attachment: result.attachment, connectionInfo: info === undefined ? null : redactConnectionInfo(info) };
}

/** The three-phase attachments API for outside orchestrators (Cinder's attachments). */
export function attachmentRoutes(deps: RouteDeps): AnyRoute[] {
  const { service, defaultProject } = deps;
  return [
    route({
      method: 'GET',
      path: '/v1/attachments',
      operationId: 'listAttachments',
      summary: 'List attachments',
      tag: 'attachments',
      access: MANAGERS,
      params: zNoParams,
      query: zAttachmentListQuery,
      responses: { 200: { description: 'The attachments', schema: zAttachmentList } },
      async handler({ principal, query }) {
        const { projectId, ...filter } = query;
        const attachments = await service.listAttachments({ ...scopeOf(principal, projectId, defaultProject), ...filter });
        return { status: 200, body: { attachments } };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/attachments',
      operationId: 'reserveAttachment',
      summary: 'Reserve a volume for a server (and initialize it when a connector is given)',
      description:
        'Phase one of three: the volume is reserved for the server; with a connector the backend also exports it and the answer holds `connectionInfo` without its secrets (the agent of the attachment\'s host gets them from the volume\'s credentials).',
      tag: 'attachments',
      access: MANAGERS,
      params: zNoParams,
      query: zScopeQuery,
      body: zReserveAttachmentBody,
      idempotency: 'cache',
      responses: { 201: { description: 'Reserved', schema: zAttachmentConnection } },
      async handler({ principal, query, body }) {
        const result = await service.reserveAttachment({ ...body, ...scopeOf(principal, query.projectId, defaultProject) });
        return { status: 201, body: connectionBody(result), headers: { location: `/v1/attachments/${result.attachment.id}`, 'cache-control': 'no-store' } };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/attachments/{id}',
      operationId: 'getAttachment',
      summary: 'Show an attachment',
      tag: 'attachments',
      access: MANAGERS,
      params: zIdParams,
      query: zScopeQuery,
      responses: { 200: { description: 'The attachment (its stored connection_info never holds secrets)', schema: zAttachment } },
      async handler({ principal, params, query }) {
        return { status: 200, body: await service.getAttachment(params.id, scopeOf(principal, query.projectId, defaultProject)) };
      },
    }),
    route({
      method: 'PUT',
      path: '/v1/attachments/{id}',
      operationId: 'initializeAttachment',
      summary: 'Initialize an attachment with the host\'s connector',
      description: 'Phase two: the backend exports the volume to the connector; the answer holds `connectionInfo` without its secrets (the agent of the attachment\'s host gets them from the volume\'s credentials).',
      tag: 'attachments',
      access: MANAGERS,
      params: zIdParams,
      query: zScopeQuery,
      body: zInitializeAttachmentBody,
      responses: { 200: { description: 'Initialized', schema: zAttachmentConnection } },
      async handler({ principal, params, query, body }) {
        const result = await service.initializeAttachment(params.id, body.connector, scopeOf(principal, query.projectId, defaultProject));
        return { status: 200, body: connectionBody(result), headers: { 'cache-control': 'no-store' } };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/attachments/{id}/complete',
      operationId: 'completeAttachment',
      summary: 'Mark an attaching attachment attached',
      description: 'Phase three, a compare-and-swap: only an `attaching` attachment can complete (409 otherwise).',
      tag: 'attachments',
      access: MANAGERS,
      params: zIdParams,
      query: zScopeQuery,
      idempotency: 'cache',
      responses: { 200: { description: 'Attached', schema: zAttachment } },
      async handler({ principal, params, query }) {
        return { status: 200, body: await service.completeAttachment(params.id, scopeOf(principal, query.projectId, defaultProject)) };
      },
    }),
    route({
      method: 'DELETE',
      path: '/v1/attachments/{id}',
      operationId: 'deleteAttachment',
      summary: 'Remove the export and the attachment; the volume\'s status is recomputed',
      tag: 'attachments',
      access: MANAGERS,
      params: zIdParams,
      query: zScopeQuery,
      responses: { 200: { description: 'The volume after the attachment is gone', schema: zVolumeEnvelope } },
      async handler({ principal, params, query }) {
        return { status: 200, body: { volume: await service.deleteAttachment(params.id, scopeOf(principal, query.projectId, defaultProject)) } };
      },
    }),
  ];
}
