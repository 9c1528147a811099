import { z } from 'zod';
import { DIFFERENCE_KINDS, type ReconcileReport } from '@berth/core';

// @berth/core has the ReconcileReport type but no schema for it; until it has one, this is the
// client's check of the server's answer (the API's OpenAPI document has its own copy).

/** `POST /v1/reconcile`'s body: the options of `BerthService.reconcile`. */
export const zReconcileOptions = z.strictObject({ dryRun: z.boolean().optional() });

/** A reconcile report as the API sends it. */
export const zReconcileReport = z.object({
  dryRun: z.boolean(),
  operationId: z.string().nullable(),
  differences: z.array(
    z.object({
      kind: z.enum(DIFFERENCE_KINDS),
      resource: z.string(),
      volumeId: z.string().nullable(),
      attachmentId: z.string().nullable(),
      detail: z.string(),
      fix: z.enum(['terminate_connection', 'disconnect', 'reconnect', 'recompute_status', 'none']),
      fixDetail: z.string(),
      state: z.enum(['planned', 'applied', 'failed', 'skipped']),
      result: z.string().nullable(),
      errorCode: z.string().nullable(),
    }),
  ),
  unchecked: z.array(z.object({ kind: z.enum(['backend', 'transport']), name: z.string(), reason: z.string() })),
  counts: z.object({ found: z.number().int(), applied: z.number().int(), failed: z.number().int(), skipped: z.number().int() }),
});

// A compile error here means the schema and core's type no longer describe the same thing.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const schemaMatchesCore: Same<z.output<typeof zReconcileReport>, ReconcileReport> = true;
void schemaMatchesCore;
