import { BerthError, zVolume } from '@berth/core';
import { AGENTS, MANAGERS, requireHostAgent, scopeOf } from '../access.js';
import {
  zCreateVolumeBody,
  zCredentials,
  zExtendVolumeBody,
  zNoParams,
  zScopeQuery,
  zVolumeAttachBody,
  zVolumeDetachBody,
  zVolumeList,
  zVolumeListQuery,
  zVolumeParams,
} from '../http-schemas.js';
import { OPERATION_STARTED, startOperation } from '../operation-access.js';
import type { RouteDeps } from '../route-deps.js';
import { route, type AnyRoute } from '../route.js';


/** Volumes: list, create, show, delete, extend, secrets, and attach/detach by volume. */
export function volumeRoutes(deps: RouteDeps): AnyRoute[] {
  const { service, defaultProject } = deps;
  return [
    route({
      method: 'GET',
      path: '/v1/volumes',
      operationId: 'listVolumes',
      summary: 'List volumes',
      tag: 'volumes',
      access: MANAGERS,
      params: zNoParams,
      query: zVolumeListQuery,
      responses: { 200: { description: 'The volumes of the project', schema: zVolumeList } },
      async handler({ principal, query }) {
        const scope = scopeOf(principal, query.projectId, defaultProject);
        const volumes = await service.listVolumes({ ...scope, ...(query.status === undefined ? {} : { status: query.status }) });
        return { status: 200, body: { volumes } };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/volumes',
      operationId: 'createVolume',
      summary: 'Create a volume',
      tag: 'volumes',
      access: MANAGERS,
      params: zNoParams,
      query: zScopeQuery,
      body: zCreateVolumeBody,
      idempotency: 'cache',
      responses: { 201: { description: 'Created', schema: zVolume } },
      async handler({ principal, query, body }) {
        const volume = await service.createVolume({ ...body, ...scopeOf(principal, query.projectId, defaultProject) });
        return { status: 201, body: volume, headers: { location: `/v1/volumes/${volume.id}` } };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/volumes/{volume}',
      operationId: 'getVolume',
      summary: 'Show a volume',
      tag: 'volumes',
      access: MANAGERS,
      params: zVolumeParams,
      query: zScopeQuery,
      responses: { 200: { description: 'The volume', schema: zVolume } },
      async handler({ principal, params, query }) {
        return { status: 200, body: await service.getVolume(params.volume, scopeOf(principal, query.projectId, defaultProject)) };
      },
    }),
    route({
      method: 'DELETE',
      path: '/v1/volumes/{volume}',
      operationId: 'deleteVolume',
      summary: 'Delete an available volume and its storage',
      tag: 'volumes',
      access: MANAGERS,
      params: zVolumeParams,
      query: zScopeQuery,
      responses: { 204: { description: 'Deleted' } },
      async handler({ principal, params, query }) {
        await service.deleteVolume(params.volume, scopeOf(principal, query.projectId, defaultProject));
        return { status: 204 };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/volumes/{volume}/extend',
      operationId: 'extendVolume',
      summary: 'Grow an available volume',
      tag: 'volumes',
      access: MANAGERS,
      params: zVolumeParams,
      query: zScopeQuery,
      body: zExtendVolumeBody,
      idempotency: 'cache',
      responses: { 200: { description: 'The volume at its new size', schema: zVolume } },
      async handler({ principal, params, query, body }) {
        return { status: 200, body: await service.extendVolume(params.volume, body.sizeBytes, scopeOf(principal, query.projectId, defaultProject)) };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/volumes/{volume}/credentials',
      operationId: 'getVolumeCredentials',
      summary: 'The volume\'s access secrets from its backend (CHAP)',
      description: 'Only the agent token of a host the volume is attached (or being attached) to: admins and members never see a volume\'s secrets.',
      tag: 'volumes',
      access: AGENTS,
      params: zVolumeParams,
      query: zScopeQuery,
      responses: { 200: { description: 'The secrets', schema: zCredentials } },
      async handler({ principal, params, query }) {
        const hostName = requireHostAgent(principal);
        const scope = scopeOf(principal, query.projectId, defaultProject);
        // A volume that does not exist (or is not in scope) gets the same answer as one not attached
        // to this host: an agent's token must not tell which volumes exist ("no volume" before).
        const notHere = (error: unknown): never[] => {
          if (BerthError.is(error) && error.code === 'NOT_FOUND') return [];
          throw error;
        };
        const [attachments, hosts] = await Promise.all([service.listAttachments({ ...scope, volume: params.volume }).catch(notHere), service.listHosts()]);
        const hostId = hosts.find((h) => h.name === hostName)?.id;
        if (hostId === undefined || !attachments.some((a) => a.hostId === hostId)) {
          throw new BerthError('NOT_FOUND', `volume ${params.volume} has no attachment on host ${hostName}`, {
            hint: 'an agent gets the secrets of the volumes attached to its own host only',
          });
        }
        const credentials = await service.volumeCredentials(params.volume, scope);
        return { status: 200, body: { credentials }, headers: { 'cache-control': 'no-store' } };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/volumes/{volume}/attach',
      operationId: 'attachVolume',
      summary: 'Attach a volume (default server: the API host\'s own)',
      description: 'As `POST /v1/servers/{server}/volume-attachments`, with the server optional: what `berth attach` without --server does.',
      tag: 'volumes',
      access: MANAGERS,
      params: zVolumeParams,
      query: zScopeQuery,
      body: zVolumeAttachBody,
      optionalBody: true,
      idempotency: 'operation',
      preferWait: true,
      responses: OPERATION_STARTED,
      async handler({ principal, params, query, body, idempotencyKey, preferredWaitMs, abandoned }) {
        return startOperation(deps, params.volume, scopeOf(principal, query.projectId, defaultProject), idempotencyKey, { kind: 'attach', request: body }, { ms: preferredWaitMs, signal: abandoned() });
      },
    }),
    route({
      method: 'POST',
      path: '/v1/volumes/{volume}/detach',
      operationId: 'detachVolume',
      summary: 'Detach a volume (the server is needed only when it is attached to several)',
      description:
        'With no body (or `{}`) it detaches the volume\'s only attachment; a volume attached to several servers is refused with 409 and a hint naming them.',
      tag: 'volumes',
      access: MANAGERS,
      params: zVolumeParams,
      query: zScopeQuery,
      body: zVolumeDetachBody,
      optionalBody: true,
      idempotency: 'operation',
      preferWait: true,
      responses: OPERATION_STARTED,
      async handler({ principal, params, query, body, idempotencyKey, preferredWaitMs, abandoned }) {
        return startOperation(deps, params.volume, scopeOf(principal, query.projectId, defaultProject), idempotencyKey, { kind: 'detach', request: body }, { ms: preferredWaitMs, signal: abandoned() });
      },
    }),
  ];
}
