import { BerthError } from './errors.js';

/** The resources the store keeps, as named in messages. */
export type ResourceKind = 'volume' | 'host' | 'server' | 'attachment' | 'operation' | 'work item' | 'device';

const NOT_FOUND_HINTS: Record<ResourceKind, string> = {
  volume: 'check the volume id; `berth volume list` shows the volumes of your project',
  host: 'check the host id; a host is known once its agent has registered its connector',
  server: 'check the server id; `berth server list` shows the servers of your project',
  attachment: 'check the attachment id; `berth attachment list` shows the attachments',
  operation: 'check the operation id printed by the command that started it',
  'work item': 'check the work item id; an agent sees the items of its own host only',
  device: 'berth keeps a record of each device it connected; `berth reconcile` lists them',
};

/** NOT_FOUND for a missing row. */
export function notFound(kind: ResourceKind, id: string): BerthError {
  return new BerthError('NOT_FOUND', `${kind} ${id} not found`, {
    hint: NOT_FOUND_HINTS[kind],
    details: { kind, id },
  });
}

/** CONFLICT for a compare-and-swap that found the row in another state. */
export function stateConflict(
  kind: ResourceKind,
  label: string,
  id: string,
  actual: string,
  expected: readonly string[],
): BerthError {
  const wanted = expected.length === 0 ? 'nothing' : expected.join(' or ');
  return new BerthError('CONFLICT', `${kind} ${label} is ${actual}, expected ${wanted}`, {
    hint: 'another command changed it first; look at it again and retry if the request still applies',
    details: { id, actual, expected: [...expected] },
  });
}

/** CONFLICT for a name or key that is taken. */
export function alreadyExists(message: string, details: Record<string, unknown>, cause: unknown): BerthError {
  return new BerthError('CONFLICT', message, {
    hint: 'pick another name, or use the existing one',
    details,
    cause,
  });
}

/** INTERNAL for a stored row that no longer matches the model (a hand-edited or corrupt database). */
export function corruptRow(kind: ResourceKind, id: string, problem: string): BerthError {
  return new BerthError('INTERNAL', `stored ${kind} ${id} is malformed: ${problem}`, {
    hint: 'the database was changed outside berth; restore it from a backup or fix the row by hand',
    details: { kind, id },
  });
}

/** CONFLICT for an agent that is no longer the one registered for its host (another one registered since). */
export function agentReplaced(hostId: string, instance: string, current: string | null): BerthError {
  return new BerthError('CONFLICT', `another agent registered for host ${hostId}; ${instance} may no longer take its work`, {
    hint: 'a newer `berth agent` runs for this host: stop this one, or register it again',
    details: { id: hostId, instance, actual: current },
  });
}

/** What `hosts.delete` answers (`details.reason`) for a host something still references. */
export const HOST_IN_USE = 'host-in-use';

/** CONFLICT for a host that servers, attachments or open work items still reference (`hosts.delete`). */
export function hostInUse(label: string, id: string, counts: { servers: number; attachments: number; openWorkItems: number }): BerthError {
  const what = [
    counts.servers > 0 ? `${counts.servers} server(s)` : undefined,
    counts.attachments > 0 ? `${counts.attachments} attachment(s)` : undefined,
    counts.openWorkItems > 0 ? `${counts.openWorkItems} unfinished work item(s)` : undefined,
  ].filter((w) => w !== undefined);
  return new BerthError('CONFLICT', `host ${label} still has ${what.join(', ') || 'records that reference it'}`, {
    hint: `forget it with \`berth host forget ${label}\`, which removes those first`,
    details: { id, reason: HOST_IN_USE, ...counts },
  });
}

/** What a journal write fenced by an owner answers when another owner has the operation. */
export const NOT_OWNER = 'not-owner';

/**
 * CONFLICT for a journal write fenced by `owner` (`startStep`, `endStep`, `advanceStep` with an
 * owner) on an operation another owner has now: another replica took it over (and may have ended
 * it). One that ended as `owner`'s own is a plain state conflict, not this.
 */
export function notOwner(id: string, owner: string, now: { state: string; owner: string | null }): BerthError {
  return new BerthError('CONFLICT', `operation ${id} is no longer running as ${owner}'s (it is ${now.state}, owned by ${now.owner ?? 'nobody'}); nothing was written`, {
    hint: 'another replica took the operation over (this one could not renew its lease in time); it finishes or rolls it back',
    details: { id, reason: NOT_OWNER, owner, actual: now.state, actualOwner: now.owner },
  });
}

/**
 * Whether `error` says the store could not be reached or written — PostgreSQL unreachable or its
 * connection lost, SQLite's database locked past the busy timeout, its disk full or read-only —,
 * not that it refused the write. Stores mark such errors `details.outage: true`. A write that met
 * one may work once the database is back, so an operation whose undo (or resumed detach) met one
 * is left `running` for recovery, which runs it again from the journal, instead of being settled
 * `failed` with its records half rolled back (a volume left `reserved` by no operation).
 */
export function isStoreOutage(error: unknown): boolean {
  return BerthError.is(error) && error.details.outage === true;
}

/**
 * Whether `error` is an outage that hit a write after it may have taken effect — PostgreSQL's
 * connection lost while a COMMIT (or a lone statement) was on its way: the store marks it
 * `details.outcomeUnknown: true`. What the database holds must then be read, not assumed.
 */
export function isOutcomeUnknown(error: unknown): boolean {
  return isStoreOutage(error) && (error as BerthError).details.outcomeUnknown === true;
}
