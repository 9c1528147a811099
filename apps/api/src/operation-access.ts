import {
  BerthError,
  type AttachRequest,
  type DetachRequest,
  type Operation,
  type ProjectScope,
  type StartedOperation,
} from '@berth/core';
import type { Principal } from './auth.js';
import type { RouteDeps } from './route-deps.js';
import type { RouteReply } from './route.js';

/**
 * Whether `principal` may see `operation`. Operations carry no project; the service has no
 * per-project listing of them, so an operation is in the project of its volume. Admin and agent
 * tokens that name no project see every operation, as the CLI does.
 */
export async function canSeeOperation(deps: RouteDeps, principal: Principal, scope: ProjectScope, operation: Operation): Promise<boolean> {
  if (principal.role !== 'member' && scope.projectId === undefined) return true;
  if (operation.volumeId === null) return false;
  try {
    await deps.service.getVolume(operation.volumeId, scope);
    return true;
  } catch (error) {
    if (BerthError.is(error) && error.code === 'NOT_FOUND') return false;
    throw error;
  }
}

/** The operation `id` if the principal may see it, else NOT_FOUND (as if it did not exist). */
export async function visibleOperation(deps: RouteDeps, principal: Principal, scope: ProjectScope, id: string): Promise<Operation> {
  const operation = await deps.service.getOperation(id);
  if (!(await canSeeOperation(deps, principal, scope, operation))) {
    throw new BerthError('NOT_FOUND', `no operation ${id}`, { hint: 'list them with GET /v1/operations' });
  }
  return operation;
}

/** The request an attach or detach route makes of the service (the volume already resolved). */
export type OperationRequest = { kind: 'attach'; request: Omit<AttachRequest, 'volume'> } | { kind: 'detach'; request: Omit<DetachRequest, 'volume'> };

/**
 * Start an attach or detach and answer 202 with the operation and `Location` to poll. The volume
 * is resolved in the caller's project first, so a replayed Idempotency-Key can only return an
 * operation on that same volume (keys are global: another request's key is refused, not replayed).
 */
export async function startOperation(
  deps: RouteDeps,
  volumeRef: string,
  scope: ProjectScope,
  idempotencyKey: string | undefined,
  what: OperationRequest,
): Promise<RouteReply> {
  const volume = await deps.service.getVolume(volumeRef, scope);
  const common = { volume: volume.id, ...scope, ...(idempotencyKey === undefined ? {} : { idempotencyKey }) };
  const started: StartedOperation =
    what.kind === 'attach'
      ? await deps.service.startAttach({ ...what.request, ...common })
      : await deps.service.startDetach({ ...what.request, ...common });
  const operation = started.operation;
  if (idempotencyKey !== undefined && (operation.kind !== what.kind || operation.volumeId !== volume.id)) {
    started.done.catch(() => undefined);
    throw new BerthError('UNPROCESSABLE', 'this Idempotency-Key was used for a different request', {
      hint: 'use a new key (a random UUID) for each distinct attach or detach',
    });
  }
  deps.tracker.track(started);
  return { status: 202, body: operation, headers: { location: `/v1/operations/${operation.id}` } };
}
