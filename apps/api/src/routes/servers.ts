import { BerthError, zAttachment, zServer } from '@berth/core';
import { MANAGERS, scopeOf } from '../access.js';
import {
  zCreateServerBody,
  zDetachQuery,
  zNoParams,
  zScopeQuery,
  zServerAttachBody,
  zServerList,
  zServerParams,
  zServerVolumeParams,
  zVolumeAttachmentList,
} from '../http-schemas.js';
import { OPERATION_STARTED, startOperation } from '../operation-access.js';
import type { RouteDeps } from '../route-deps.js';
import { route, type AnyRoute } from '../route.js';


/** Servers and their volume attachments (Nova's `os-volume_attachments`, answering with operations). */
export function serverRoutes(deps: RouteDeps): AnyRoute[] {
  const { service, defaultProject } = deps;
  return [
    route({
      method: 'GET',
      path: '/v1/servers',
      operationId: 'listServers',
      summary: 'List servers',
      tag: 'servers',
      access: MANAGERS,
      params: zNoParams,
      query: zScopeQuery,
      responses: { 200: { description: 'The servers of the project', schema: zServerList } },
      async handler({ principal, query }) {
        return { status: 200, body: { servers: await service.listServers(scopeOf(principal, query.projectId, defaultProject)) } };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/servers',
      operationId: 'createServer',
      summary: 'Create a server (default host: the API\'s own)',
      tag: 'servers',
      access: MANAGERS,
      params: zNoParams,
      query: zScopeQuery,
      body: zCreateServerBody,
      idempotency: 'cache',
      responses: { 201: { description: 'Created', schema: zServer } },
      async handler({ principal, query, body }) {
        const scope = scopeOf(principal, query.projectId, defaultProject);
        // A guest's QMP socket or libvirt domain is the host's, not a project's: a member naming one
        // would plug its disks into whatever VM that is (another project's, or one no server names
        // yet), or claim it first so its owner gets CONFLICT (a security review did both). An admin
        // creates guest servers, in the member's project with `?projectId=`.
        if (body.hypervisor !== undefined && body.hypervisor.type !== 'host' && principal.role !== 'admin') {
          throw new BerthError('FORBIDDEN', `a ${principal.role} token cannot create a ${body.hypervisor.type} server: a guest's monitor is the host's`, {
            hint: 'an admin creates guest servers (POST /v1/servers?projectId=P with an admin token); members attach volumes to them',
            details: { role: principal.role, hypervisor: body.hypervisor.type },
          });
        }
        // Core records a new host before it inserts the server, so a duplicate name would leave a
        // host row behind: refuse it here first (the store still refuses a racing twin).
        if ((await service.listServers(scope)).some((s) => s.name === body.name)) {
          // The store's own words for it, so the CLI says the same with and without --api.
          const projectId = scope.projectId ?? defaultProject;
          throw new BerthError('CONFLICT', `a server named ${body.name} already exists in project ${projectId}`, {
            hint: 'pick another name, or use the existing one',
            details: { name: body.name, projectId },
          });
        }
        const server = await service.createServer({ ...body, ...scope });
        return { status: 201, body: server, headers: { location: `/v1/servers/${server.id}` } };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/servers/{server}',
      operationId: 'getServer',
      summary: 'Show a server',
      tag: 'servers',
      access: MANAGERS,
      params: zServerParams,
      query: zScopeQuery,
      responses: { 200: { description: 'The server', schema: zServer } },
      async handler({ principal, params, query }) {
        return { status: 200, body: await service.getServer(params.server, scopeOf(principal, query.projectId, defaultProject)) };
      },
    }),
    route({
      method: 'DELETE',
      path: '/v1/servers/{server}',
      operationId: 'deleteServer',
      summary: 'Delete a server with no attachments',
      tag: 'servers',
      access: MANAGERS,
      params: zServerParams,
      query: zScopeQuery,
      responses: { 204: { description: 'Deleted' } },
      async handler({ principal, params, query }) {
        await service.deleteServer(params.server, scopeOf(principal, query.projectId, defaultProject));
        return { status: 204 };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/servers/{server}/volume-attachments',
      operationId: 'listServerVolumeAttachments',
      summary: 'The attachments of a server',
      tag: 'servers',
      access: MANAGERS,
      params: zServerParams,
      query: zScopeQuery,
      responses: { 200: { description: 'Its attachments', schema: zVolumeAttachmentList } },
      async handler({ principal, params, query }) {
        const scope = scopeOf(principal, query.projectId, defaultProject);
        return { status: 200, body: { volumeAttachments: await service.listAttachments({ ...scope, server: params.server }) } };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/servers/{server}/volume-attachments',
      operationId: 'attachServerVolume',
      summary: 'Attach a volume to a server',
      description:
        'Answers 202 with the journalled operation and `Location: /v1/operations/{id}`; a volume that cannot be attached (already attached, in use) is refused at once with 409.',
      tag: 'servers',
      access: MANAGERS,
      params: zServerParams,
      query: zScopeQuery,
      body: zServerAttachBody,
      idempotency: 'operation',
      preferWait: true,
      responses: OPERATION_STARTED,
      async handler({ principal, params, query, body, idempotencyKey, preferredWaitMs, abandoned }) {
        const { volumeId, ...rest } = body;
        return startOperation(deps, volumeId, scopeOf(principal, query.projectId, defaultProject), idempotencyKey, {
          kind: 'attach',
          request: { ...rest, server: params.server },
        }, { ms: preferredWaitMs, signal: abandoned() });
      },
    }),
    route({
      method: 'GET',
      path: '/v1/servers/{server}/volume-attachments/{volume}',
      operationId: 'getServerVolumeAttachment',
      summary: 'The attachment of a volume to a server',
      tag: 'servers',
      access: MANAGERS,
      params: zServerVolumeParams,
      query: zScopeQuery,
      responses: { 200: { description: 'The attachment', schema: zAttachment } },
      async handler({ principal, params, query }) {
        const scope = scopeOf(principal, query.projectId, defaultProject);
        const found = (await service.listAttachments({ ...scope, server: params.server, volume: params.volume })).find((a) => a.status !== 'detached');
        if (found === undefined) {
          throw new BerthError('NOT_FOUND', `volume ${JSON.stringify(params.volume)} is not attached to server ${JSON.stringify(params.server)}`);
        }
        return { status: 200, body: found };
      },
    }),
    route({
      method: 'DELETE',
      path: '/v1/servers/{server}/volume-attachments/{volume}',
      operationId: 'detachServerVolume',
      summary: 'Detach a volume from a server',
      description: 'Answers 202 with the journalled operation; `force=true` goes on through driver and backend errors, but never disconnects a disk a guest still holds (a guest server\'s unplug that times out fails the detach with TIMEOUT and leaves it attached).',
      tag: 'servers',
      access: MANAGERS,
      params: zServerVolumeParams,
      query: zDetachQuery,
      idempotency: 'operation',
      preferWait: true,
      responses: OPERATION_STARTED,
      async handler({ principal, params, query, idempotencyKey, preferredWaitMs, abandoned }) {
        return startOperation(deps, params.volume, scopeOf(principal, query.projectId, defaultProject), idempotencyKey, {
          kind: 'detach',
          request: { server: params.server, ...(query.force === undefined ? {} : { force: query.force }) },
        }, { ms: preferredWaitMs, signal: abandoned() });
      },
    }),
  ];
}
