import { z } from 'zod';
import { lazySchema } from './lazy-schema.js';
import { toBerthError } from './errors.js';
import { zErrorSummary, zId } from './model.js';

/**
 * State of a work item: `pending` (waiting for an agent of its host), `claimed` (an agent holds
 * its lease), `done` or `failed` (the agent reported the outcome). A claimed item whose lease
 * passed goes back to `pending` (its agent died); the step is idempotent, so it is run again.
 */
export const zWorkItemState = z.enum(['pending', 'claimed', 'done', 'failed']);
/** One of `zWorkItemState`. */
export type WorkItemState = z.output<typeof zWorkItemState>;

/** Name of the host step a work item asks for (`connector`, `connect`, `publish`, ...). */
export const zWorkItemStep = lazySchema(() => z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z][a-z0-9_]*$/, 'use lower-case letters, digits and "_", starting with a letter'));

/**
 * How a work item failed: an error summary, and whether the step said it touched nothing on the
 * host (the driver's `details.untouched`: a holder found first, an identity that no longer
 * matched), so that a failed remote disconnect is rolled back exactly as a local one is; and the
 * guest consumers' two flags (`guestHoldsDevice`: the guest may still have the disk;
 * `unplugRequested`: its unplug request stays pending), so that a remote unpublish that timed out
 * on a paused guest ends a detach `error_detaching` as a local one does, not `attached`.
 */
export const zWorkItemError = lazySchema(() =>
  zErrorSummary.unwrap().extend({ untouched: z.boolean().optional(), guestHoldsDevice: z.boolean().optional(), unplugRequested: z.boolean().optional() }),
);
/** One of `zWorkItemError`. */
export type WorkItemError = z.output<typeof zWorkItemError>;

/** The work-item error of a failed host step: code, message, hint, and `untouched` when the error says so. */
export function workItemErrorOf(error: unknown): WorkItemError {
  const failure = toBerthError(error);
  return {
    code: failure.code,
    message: failure.message,
    ...(failure.hint === undefined ? {} : { hint: failure.hint }),
    ...(failure.details.untouched === true ? { untouched: true } : {}),
    ...(failure.details.guestHoldsDevice === true ? { guestHoldsDevice: true } : {}),
    ...(failure.details.unplugRequested === true ? { unplugRequested: true } : {}),
  };
}

/**
 * A host step of an operation, run by the agent of `hostId` rather than by the process that owns
 * the operation (the many-hosts flow). The payload and result never hold secrets.
 */
export const zWorkItem = lazySchema(() => z.object({
  id: zId,
  operationId: zId,
  hostId: zId,
  step: zWorkItemStep,
  state: zWorkItemState,
  /** What the agent needs to run the step (secret-named keys are dropped when stored). */
  payload: z.record(z.string(), z.unknown()),
  /** What the agent reported (secret-named keys are dropped when stored). */
  result: z.record(z.string(), z.unknown()).nullable(),
  error: zWorkItemError.nullable(),
  /** How many times an agent claimed it (> 1: an agent died holding it and it was run again). */
  attempts: z.number().int().nonnegative(),
  /** The agent holding the lease while `claimed`. */
  leaseOwner: z.string().nullable(),
  /** When the lease passes (ISO-8601) while `claimed`. */
  leaseExpiresAt: z.string().nullable(),
  createdAt: z.string(),
  updatedAt: z.string(),
}));
/** A work item as stored. */
export type WorkItem = z.output<typeof zWorkItem>;
