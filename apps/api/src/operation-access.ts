import { createHash } from 'node:crypto';
import {
  BerthError,
  type AttachRequest,
  type DetachRequest,
  type Attachment,
  type Operation,
  type OperationOutcome,
  type Volume,
  type ProjectScope,
  type StartedOperation,
  zOperation,
} from '@berth/core';
import { CLIENT_KEY_PREFIX } from '@berth/client';
import { zOperationOutcome } from './http-schemas.js';
import type { Principal } from './auth.js';
import { keyReused } from './idempotency.js';
import type { RouteDeps } from './route-deps.js';
import type { ResponseSpec, RouteReply } from './route.js';

/** What a route that starts an attach or detach answers (it takes `Prefer: wait=N`). */
export const OPERATION_STARTED: Record<number, ResponseSpec> = {
  200: {
    description: 'Asked with `Prefer: wait=N` and it succeeded within N s: its outcome, as `/outcome` answers it (`Location` names the operation)',
    schema: zOperationOutcome,
    preferenceApplied: true,
  },
  202: { description: 'Accepted: the operation, journalled; poll its Location (`Prefer: wait=N` waited and it still runs, or it failed: `/outcome` has its error)', schema: zOperation },
};

/**
 * Whether `principal` may see `operation`. Operations carry no project; the service has no
 * per-project listing of them, so an operation is in the project of its volume. Admin and agent
 * tokens that name no project see every operation, as the CLI does.
 */
export async function canSeeOperation(deps: RouteDeps, principal: Principal, scope: ProjectScope, operation: Operation): Promise<boolean> {
  if (principal.role !== 'member' && scope.projectId === undefined) return true;
  return inProject(deps, scope, operation);
}

/** Whether `operation` is in the project of `scope`: its volume is found there. */
async function inProject(deps: RouteDeps, scope: ProjectScope, operation: Operation): Promise<boolean> {
  if (operation.volumeId === null) return false;
  try {
    await deps.service.getVolume(operation.volumeId, scope);
    return true;
  } catch (error) {
    if (BerthError.is(error) && error.code === 'NOT_FOUND') return false;
    throw error;
  }
}

/** The body of a succeeded operation's outcome (what `/outcome` and a start answered with `Prefer: wait` send). */
export function outcomeBody(outcome: OperationOutcome): { operation: Operation; volume: Volume; attachment: Attachment | null } {
  return { operation: shownOperation(outcome.operation), volume: outcome.volume, attachment: outcome.attachment ?? null };
}

/** The project tag `operationKeyIn` puts before a caller's key: 16 hex digits, or `*`. */
const KEY_TAG = /^(?:[0-9a-f]{16}|\*)\//;

/**
 * An operation as its caller sees it: its idempotency key as the caller sent it, without the
 * project tag the journal keeps it under (a client comparing the key it sent found another); a
 * key `@berth/client` made up itself (`berth-client:<uuid>`, for a start its caller gave none, so
 * that it may go to another replica) as null, as a start without a key reads in embedded mode.
 * Every operation that leaves the API goes through here.
 */
export function shownOperation(operation: Operation): Operation {
  const key = operation.idempotencyKey;
  if (key === null) return operation;
  const sent = key.replace(KEY_TAG, '');
  const shown = sent.startsWith(CLIENT_KEY_PREFIX) ? null : sent;
  return shown === key ? operation : { ...operation, idempotencyKey: shown };
}

/** An operation that succeeded in this process, as it ended (from memory). */
function endedHere(deps: RouteDeps, id: string): Operation | undefined {
  const settlement = deps.tracker.settlement(id);
  return settlement?.ok === true ? settlement.outcome.operation : undefined;
}

/**
 * The operation `id` if the principal may see it, else NOT_FOUND (as if it did not exist). One this
 * process is running is taken from memory (a long-poll then waits on it without a store read); with
 * `endedHere`, so is one that succeeded here (`/outcome` of an operation that ended before it was asked).
 */
export async function visibleOperation(
  deps: RouteDeps,
  principal: Principal,
  scope: ProjectScope,
  id: string,
  options: { endedHere?: boolean } = {},
): Promise<Operation> {
  const operation = deps.tracker.runningOperation(id) ?? (options.endedHere === true ? endedHere(deps, id) : undefined) ?? (await deps.service.getOperation(id));
  if (!(await canSeeOperation(deps, principal, scope, operation))) {
    throw new BerthError('NOT_FOUND', `no operation ${id}`, { hint: 'list them with GET /v1/operations' });
  }
  return operation;
}

/** The request an attach or detach route makes of the service (the volume already resolved). */
export type OperationRequest = { kind: 'attach'; request: Omit<AttachRequest, 'volume'> } | { kind: 'detach'; request: Omit<DetachRequest, 'volume'> };

function launch(deps: RouteDeps, common: Pick<AttachRequest, 'volume' | 'projectId' | 'idempotencyKey'>, what: OperationRequest): Promise<StartedOperation> {
  return what.kind === 'attach' ? deps.service.startAttach({ ...what.request, ...common }) : deps.service.startDetach({ ...what.request, ...common });
}

/**
 * Start with an Idempotency-Key. The volume (and server) are resolved in the caller's project
 * first, so a replay can only return an operation on that same volume; the same key with another
 * request is UNPROCESSABLE: caught here from this process's memory of what the key was used for,
 * and from the replayed operation's kind, volume and server (which survive a restart).
 */
async function startKeyed(deps: RouteDeps, volumeRef: string, scope: ProjectScope, key: string, what: OperationRequest): Promise<StartedOperation> {
  const volume = await deps.service.getVolume(volumeRef, scope);
  const server = what.request.server === undefined ? undefined : await deps.service.getServer(what.request.server, scope);
  const fingerprint = createHash('sha256')
    .update(JSON.stringify({ kind: what.kind, volumeId: volume.id, serverId: server?.id ?? null, request: { ...what.request, server: null } }))
    .digest('hex');
  // Kept per project: a key is the caller's, and another project's use of the same one must not
  // answer 422 (telling it the key exists) or take its retries (a security review showed both).
  const scopedKey = operationKeyIn(scope, key);
  deps.operationKeys.check(scopedKey, fingerprint);
  // An older berth's operation of this project, under the bare key, is replayed too.
  const journalKey = (await olderBareKey(deps, scope, key, scopedKey)) ?? scopedKey;
  const started = await launch(deps, { volume: volume.id, ...scope, idempotencyKey: journalKey }, what);
  const operation = started.operation;
  if (operation.kind !== what.kind || operation.volumeId !== volume.id || (server !== undefined && operation.serverId !== server.id)) {
    started.done.catch(() => undefined);
    throw keyReused('attach or detach');
  }
  deps.operationKeys.remember(scopedKey, fingerprint);
  return started;
}

/**
 * `key` itself when an older berth (which journalled the bare key) started the caller's operation
 * with it and none is journalled under `scopedKey`: a retry across an upgrade, or between replicas
 * of both versions, then replays it (and is refused as the scoped one is, when it asked for another
 * request). Another project's operation under the bare key is as if there were none: the retry
 * starts anew under the scoped key. An admin acting across projects (`*`) sees every project's.
 */
async function olderBareKey(deps: RouteDeps, scope: ProjectScope, key: string, scopedKey: string): Promise<string | undefined> {
  const find = deps.service.findOperationByIdempotencyKey?.bind(deps.service);
  if (find === undefined) return undefined;
  const older = await find(key);
  if (older === undefined) return undefined;
  // Scopes come from `scopeOf`: only an admin or agent token has none (a member always has one).
  if (scope.projectId !== undefined && !(await inProject(deps, scope, older))) return undefined;
  return (await find(scopedKey)) === undefined ? key : undefined;
}

/**
 * The key an attach or detach is journalled under: the caller's key within its project
 * (`<project tag>/<key>`: the first 16 hex digits of the project id's SHA-256, `*` for an admin
 * acting across projects). The store keeps keys unique across the whole journal, so without the
 * project one project's key answered another's request. Hashed, not spelled: project ids are free
 * text (`a` with key `b/k` and `a/b` with key `k` must differ) and may be 200 characters long.
 */
export function operationKeyIn(scope: ProjectScope, key: string): string {
  const tag = scope.projectId === undefined ? '*' : createHash('sha256').update(scope.projectId).digest('hex').slice(0, 16);
  return `${tag}/${key}`;
}

/**
 * Core refuses a detach that names no server of a volume attached to several as a VALIDATION error
 * listing their ids; over HTTP that is a conflict with the volume's state, and the hint names the
 * servers to choose from.
 */
async function explainSeveral(deps: RouteDeps, volumeRef: string, scope: ProjectScope, error: unknown): Promise<unknown> {
  const ids = BerthError.is(error) && error.code === 'VALIDATION' ? error.details.servers : undefined;
  if (!Array.isArray(ids) || ids.length < 2) return error;
  const servers = await deps.service.listServers(scope).catch(() => []);
  const names = ids.map((id) => servers.find((s) => s.id === id)?.name ?? String(id));
  return new BerthError('CONFLICT', `volume ${volumeRef} is attached to ${names.length} servers (${names.join(', ')}): say which one to detach it from`, {
    hint: `name the server: POST /v1/volumes/${volumeRef}/detach {"server": "${names[0] ?? ''}"} (berth detach ${volumeRef} --server ${names[0] ?? ''})`,
    details: { servers: names },
    cause: error,
  });
}

/** How long a start may hold its answer for the operation to end (`Prefer: wait=N`), and what stops it. */
export interface StartWait {
  ms: number;
  signal: AbortSignal;
}

/**
 * Start an attach or detach and answer 202 with the operation and `Location` to poll. With
 * `Prefer: wait=N` (`wait`), the answer waits up to N s (bounded by `maxWaitMs`) for the operation to
 * end — on its promise, as a long-poll does — and when it succeeded in that time it is 200 with the
 * outcome (as `/outcome` gives it) and `Preference-Applied`: one round trip instead of two. One
 * still running, or one that failed, is the usual 202: `/outcome` says how it ended.
 */
export async function startOperation(
  deps: RouteDeps,
  volumeRef: string,
  scope: ProjectScope,
  idempotencyKey: string | undefined,
  what: OperationRequest,
  wait?: StartWait,
): Promise<RouteReply> {
  let started: StartedOperation;
  try {
    // Without a key the service resolves the volume in the project itself: one store read less.
    started = idempotencyKey === undefined ? await launch(deps, { volume: volumeRef, ...scope }, what) : await startKeyed(deps, volumeRef, scope, idempotencyKey, what);
  } catch (error) {
    throw await explainSeveral(deps, volumeRef, scope, error);
  }
  deps.tracker.track(started);
  const operation = started.operation;
  const location = `/v1/operations/${operation.id}`;
  const waitMs = Math.min(wait?.ms ?? 0, deps.maxWaitMs);
  if (wait !== undefined && waitMs > 0) {
    await deps.tracker.waitFor(operation.id, waitMs, wait.signal);
    const settlement = deps.tracker.settlement(operation.id);
    if (settlement?.ok === true) {
      return {
        status: 200,
        body: outcomeBody(settlement.outcome),
        headers: { location, 'content-location': `${location}/outcome`, 'preference-applied': `wait=${Math.ceil(waitMs / 1000)}` },
      };
    }
  }
  return { status: 202, body: shownOperation(operation), headers: { location } };
}
