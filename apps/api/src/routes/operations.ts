import { BerthError, zOperation, zOperationPruneReport, type BerthErrorCode, type Operation, type ProjectScope } from '@berth/core';
import { ADMINS, MANAGERS, scopeOf } from '../access.js';
import { DEFAULT_OPERATION_LIST, zIdParams, zNoParams, zNoQuery, zOperationList, zOperationPruneBody, zOperationListQuery, zOperationOutcome, zOperationQuery } from '../http-schemas.js';
import { outcomeBody, shownOperation, visibleOperation } from '../operation-access.js';
import type { RouteDeps } from '../route-deps.js';
import { route, type AnyRoute, type RouteReply } from '../route.js';

/** What a 202 from `/outcome` suggests (`Retry-After`) to a client that polls without `wait`. */
export const POLL_AGAIN_SECONDS = 1;

/** The error a failed operation ended with, as a BerthError (what a client rethrows). */
function operationError(operation: Operation): BerthError {
  const summary = operation.error ?? { code: 'INTERNAL', message: `operation ${operation.id} ended ${operation.state}` };
  return new BerthError(summary.code as BerthErrorCode, summary.message, {
    ...(summary.hint === undefined ? {} : { hint: summary.hint }),
    details: { operationId: operation.id },
  });
}

/**
 * The outcome of a finished operation: from this process's memory when it ran here (which keeps a
 * detach's attachment as it was), else rebuilt from the store.
 */
async function outcomeOf(deps: RouteDeps, scope: ProjectScope, operation: Operation): Promise<RouteReply> {
  const settlement = deps.tracker.settlement(operation.id);
  if (settlement !== undefined) {
    if (!settlement.ok) throw settlement.error;
    return { status: 200, body: outcomeBody(settlement.outcome) };
  }
  if (operation.state === 'running') {
    return { status: 202, body: shownOperation(operation), headers: { location: `/v1/operations/${operation.id}`, 'retry-after': String(POLL_AGAIN_SECONDS) } };
  }
  if (operation.state !== 'succeeded') throw operationError(operation);
  if (operation.volumeId === null) throw new BerthError('NOT_FOUND', `operation ${operation.id} has no volume`);
  const volume = await deps.service.getVolume(operation.volumeId, scope);
  let attachment = null;
  if (operation.kind === 'attach' && operation.attachmentId !== null) {
    attachment = await deps.service.getAttachment(operation.attachmentId, scope).catch(() => null);
  }
  return { status: 200, body: { operation: shownOperation(operation), volume, attachment } };
}

/** Operations: list by state, show (long-poll with `?wait=`), and the outcome of a finished one. */
export function operationRoutes(deps: RouteDeps): AnyRoute[] {
  const { service, defaultProject, tracker, maxWaitMs } = deps;
  const waitMs = (wait: number | undefined): number => Math.min(wait ?? 0, maxWaitMs);
  return [
    route({
      method: 'GET',
      path: '/v1/operations',
      operationId: 'listOperations',
      summary: 'List operations',
      description:
        'Newest first, at most `limit` (default 100): `more` says whether older ones were left out. A member token sees the operations on its project\'s volumes among them.',
      tag: 'operations',
      access: MANAGERS,
      params: zNoParams,
      query: zOperationListQuery,
      responses: { 200: { description: 'The operations', schema: zOperationList } },
      async handler({ principal, query }) {
        const scope = scopeOf(principal, query.projectId, defaultProject);
        const limit = query.limit ?? DEFAULT_OPERATION_LIST;
        // One volume's, by a scoped caller: a volume outside the scope is NOT_FOUND, as everywhere
        // (an empty page with `more` counted before the scope filter would say it has operations).
        if (query.volumeId !== undefined && (principal.role === 'member' || scope.projectId !== undefined)) await service.getVolume(query.volumeId, scope);
        // One more than asked: whether there are older ones, without counting them all.
        const listed = await service.listOperations({
          ...(query.state === undefined ? {} : { state: query.state }),
          ...(query.kind === undefined ? {} : { kind: query.kind }),
          ...(query.volumeId === undefined ? {} : { volumeId: query.volumeId }),
          limit: limit + 1,
        });
        const more = listed.length > limit;
        const all = listed.slice(0, limit);
        if (principal.role !== 'member' && scope.projectId === undefined) return { status: 200, body: { operations: all.map(shownOperation), more } };
        const volumes = new Set((await service.listVolumes(scope)).map((v) => v.id));
        const operations = all.filter((o) => o.volumeId !== null && volumes.has(o.volumeId));
        return { status: 200, body: { operations: operations.map(shownOperation), more } };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/operations/prune',
      operationId: 'pruneOperations',
      summary: 'Delete finished operations older than an age, with their journal',
      description:
        'Deletes every operation that ended more than `olderThan` ago (at least 1h), with its steps and work items, in batches; never a running one, nor one with a work item an agent may still run or undo, nor one whose attachment still exists. ' +
        'A retry with a deleted operation\'s idempotency key starts a new operation. With `dryRun: true` it only counts them. Across every project, hence admin only.',
      tag: 'operations',
      access: ADMINS,
      params: zNoParams,
      query: zNoQuery,
      body: zOperationPruneBody,
      responses: { 200: { description: 'How many were deleted (or would be) and the cut', schema: zOperationPruneReport } },
      async handler({ body }) {
        const report = await service.pruneOperations({
          olderThanMs: body.olderThan,
          ...(body.endedBefore === undefined ? {} : { endedBefore: body.endedBefore }),
          ...(body.dryRun === undefined ? {} : { dryRun: body.dryRun }),
        });
        return { status: 200, body: report, headers: { 'cache-control': 'no-store' } };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/operations/{id}',
      operationId: 'getOperation',
      summary: 'Show an operation; with `wait`, long-poll until it ends',
      description:
        'With `?wait=30s` the answer comes when the operation leaves `running` or when the wait (bounded by the server) ends, whichever is first: read `state`.',
      tag: 'operations',
      access: MANAGERS,
      params: zIdParams,
      query: zOperationQuery,
      responses: { 200: { description: 'The operation, its steps, timings, result or error', schema: zOperation } },
      async handler({ principal, params, query, abandoned }) {
        const scope = scopeOf(principal, query.projectId, defaultProject);
        const first = await visibleOperation(deps, principal, scope, params.id);
        if (first.state !== 'running') return { status: 200, body: shownOperation(first) };
        await tracker.waitFor(params.id, waitMs(query.wait), abandoned());
        return { status: 200, body: shownOperation(await service.getOperation(params.id)) };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/operations/{id}/outcome',
      operationId: 'getOperationOutcome',
      summary: 'The outcome of an operation: the volume and attachment it left, or its error',
      description:
        '200 with `{operation, volume, attachment}` when it succeeded; the operation\'s own error as a problem (with `operationId`) when it failed; 202 with the operation while it runs (`wait` long-polls as for GET /v1/operations/{id}).',
      tag: 'operations',
      access: MANAGERS,
      params: zIdParams,
      query: zOperationQuery,
      responses: {
        200: { description: 'It succeeded', schema: zOperationOutcome },
        202: { description: 'Still running: poll again (with `wait` to long-poll)', schema: zOperation, retryAfter: true },
      },
      async handler({ principal, params, query, abandoned }) {
        const scope = scopeOf(principal, query.projectId, defaultProject);
        const first = await visibleOperation(deps, principal, scope, params.id, { endedHere: true });
        if (first.state === 'running') await tracker.waitFor(params.id, waitMs(query.wait), abandoned());
        // One that ended here is answered from memory; otherwise its row says where it is.
        const current = first.state === 'running' && tracker.settlement(params.id) === undefined ? await service.getOperation(params.id) : first;
        return outcomeOf(deps, scope, current);
      },
    }),
  ];
}
