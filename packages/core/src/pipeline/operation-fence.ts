import { BerthError } from '../errors.js';
import type { HostSteps } from '../host-steps/host-steps.js';
import type { Operation } from '../model.js';
import type { Store } from '../store.js';
import { NOT_OWNER } from '../store-errors.js';

/** The error of a run whose operation another replica took over (its lease passed while this process could not renew it). */
export function takenOverError(operationId: string, cause?: unknown): BerthError {
  return new BerthError('CONFLICT', `operation ${operationId} was taken over by another replica (this one could not renew its lease in time)`, {
    hint: `follow it with \`berth operation show ${operationId}\`: the replica that took it over finishes or rolls it back`,
    details: { operationId, takenOver: true },
    ...(cause === undefined ? {} : { cause }),
  });
}

/** Whether `error` says the operation was taken over by another replica. */
export function isTakenOver(error: unknown): error is BerthError {
  return BerthError.is(error) && error.details.takenOver === true;
}

/** Whether `error` is a fenced journal write's refusal (`notOwner`: the operation no longer runs as this owner's). */
function isNotOwner(error: unknown): boolean {
  return BerthError.is(error) && error.code === 'CONFLICT' && error.details.reason === NOT_OWNER;
}

/**
 * Confirm, inside the transaction `tx`, that `operationId` still runs and is `owner`'s: a
 * compare-and-swap of the row's owner on itself. Call it LAST in the transaction, just before its
 * commit (`ownedTransaction` does): on PostgreSQL the compare-and-swap locks the operation's row
 * until the commit, and the replica's heartbeat (one UPDATE over all its rows, on the connection
 * its lease renewals share) must not wait behind a transaction still blocked on some other row. A
 * takeover (`claimExpired`, `FOR UPDATE SKIP LOCKED`) skips the row while it is locked and claims
 * it at its next beat: either it committed first — then this throws `takenOverError` and nothing
 * of the transaction is written — or it comes after this commit. A process frozen past its lease
 * (a long pause, a VM stall) resumes with whatever it was doing before its heartbeat can fence
 * it; this is what keeps those first writes off an operation another replica owns now.
 */
export async function confirmOwner(tx: Store, operationId: string, owner: string): Promise<void> {
  try {
    await tx.operations.setOwner(operationId, owner, owner);
  } catch (error) {
    // The compare-and-swap said no (no longer running, or another owner's); anything else is the store's failure.
    if (BerthError.is(error) && (error.code === 'CONFLICT' || error.code === 'NOT_FOUND')) throw takenOverError(operationId, error);
    throw error;
  }
}

/**
 * Run `work` in one transaction of `store` that ends with `confirmOwner`: all of it commits while
 * `operationId` is still `owner`'s, or none of it does (`takenOverError`). When `work` itself fails
 * first, the operation's row is read once to tell a takeover from another failure; the success
 * path costs one statement more than `work`, nothing else. Without an owner (embedded mode, no
 * replica leases) it is `store.transaction(work)`, nothing more.
 */
export function ownedTransaction<T>(store: Store, operationId: string, owner: string | undefined, work: (tx: Store) => Promise<T>): Promise<T> {
  if (owner === undefined) return store.transaction(work);
  return fenced(store, operationId, owner, async (tx) => {
    const result = await work(tx);
    await confirmOwner(tx, operationId, owner);
    return result;
  });
}

/**
 * A write of `operationId`'s journal (`startStep`, `endStep`, `advanceStep`), handed `owner` to
 * pass on: the store fences it in the write itself (the one statement it is without an owner, no
 * transaction around it), and its refusal (`not-owner`) is `takenOverError`. Without an owner
 * (embedded mode) it is the plain write it always was.
 */
export async function ownedWrite<T>(store: Store, operationId: string, owner: string | undefined, write: (store: Store, owner: string | undefined) => Promise<T>): Promise<T> {
  if (owner === undefined) return write(store, undefined);
  try {
    return await write(store, owner);
  } catch (error) {
    if (isNotOwner(error)) throw takenOverError(operationId, error);
    throw error;
  }
}

/**
 * End `operationId` as `settled` (after `before`'s writes, in the same transaction) only while it
 * is still `owner`'s. The confirmation comes right before the end, the last statement: both
 * write the operation's row, which the end would lock anyway (the end needs the row `running`,
 * so it cannot come before the confirmation). Without an owner: the end alone, or `before` and the
 * end in one transaction.
 */
export function ownedFinish(
  store: Store,
  operationId: string,
  owner: string | undefined,
  settled: Parameters<Store['operations']['finish']>[1],
  before?: (tx: Store) => Promise<unknown>,
): Promise<Operation> {
  if (owner === undefined) {
    if (before === undefined) return store.operations.finish(operationId, settled);
    return store.transaction(async (tx) => {
      await before(tx);
      return tx.operations.finish(operationId, settled);
    });
  }
  return fenced(store, operationId, owner, async (tx) => {
    await before?.(tx);
    await confirmOwner(tx, operationId, owner);
    return tx.operations.finish(operationId, settled);
  });
}

/** Run `work` in a transaction; a failure other than the takeover's is one when the row says so. */
async function fenced<T>(store: Store, operationId: string, owner: string, work: (tx: Store) => Promise<T>): Promise<T> {
  try {
    return await store.transaction(work);
  } catch (error) {
    if (isTakenOver(error)) throw error;
    // A write that fails before the confirmation (another replica already ended the operation)
    // hides the takeover: the row tells. A read that fails is no evidence: the first error stands.
    const row = await store.operations.get(operationId).then(
      (operation) => operation ?? null,
      () => undefined,
    );
    // Only another owner (or no row) is a takeover: every takeover writes the owner. Ended but
    // still ours is this process's own commit, landed before its answer was lost: not a takeover.
    if (row === null || (row !== undefined && row.owner !== owner)) throw takenOverError(operationId, error);
    throw error;
  }
}

/**
 * `steps` whose every call carries `owner` (when there is one): the executor confirms it with the
 * host work it hands out (`HostStepCall.owner`), so a process frozen past its operation's lease
 * cannot act on a host after another replica took the operation over.
 */
export function ownedHostSteps(steps: HostSteps, owner: string | undefined): HostSteps {
  if (owner === undefined) return steps;
  return {
    kind: steps.kind,
    host: steps.host,
    agent: steps.agent,
    run: (step, payload, call) => steps.run(step, payload, { ...call, owner }),
    ran: (operationId, step) => steps.ran(operationId, step),
  };
}
