import { BerthError } from '../errors.js';
import type { Store } from '../store.js';

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

/**
 * Confirm, inside the transaction `tx`, that `operationId` still runs and is `owner`'s, before
 * the writes that follow in it: a compare-and-swap of the row's owner on itself, which on
 * PostgreSQL also holds the row until the commit, so a takeover (`claimExpired`) either committed
 * first — then this throws `takenOverError` — or waits for this commit. A process frozen past its
 * lease (a long pause, a VM stall) resumes with whatever it was doing before its heartbeat can
 * fence it; this is what keeps those first writes off an operation another replica owns now.
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
