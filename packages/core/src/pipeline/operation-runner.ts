import { BerthError, toBerthError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { ErrorSummary } from '../model.js';
import { withDeferredDurability, type StepOutcome, type Store } from '../store.js';
import type { Step, StepCommit } from './step.js';
import type { FaultInjector } from '../faults.js';
import { isTakenOver, ownedTransaction, ownedWrite } from './operation-fence.js';
import { withStoreRetry } from './store-retry.js';
import { isOutcomeUnknown, isStoreOutage } from '../store-errors.js';

/** How a pipeline run ended. */
export type RunOutcome =
  | {
      ok: true;
      timings: Record<string, number>;
      /** Journal writes that failed after the point of no return (the work is done; recovery closes the journal). */
      journalErrors: BerthError[];
    }
  | {
      ok: false;
      error: BerthError;
      /** True when every undo ran and succeeded (nothing left behind). */
      rolledBack: boolean;
      /** True when the failure came after a point of no return (nothing was undone). */
      forward: boolean;
      undoErrors: BerthError[];
      /** Journal writes that failed (the undos ran anyway; recovery repeats what the journal misses). */
      journalErrors: BerthError[];
      timings: Record<string, number>;
      /** Another replica took the operation over (`fenced` fired): nothing was undone, nothing more written. */
      fenced?: boolean;
      /**
       * A step's commit was lost with its connection after it may have taken effect
       * (`isOutcomeUnknown`): this process cannot tell what the database holds, so nothing was
       * undone from its memory and nothing more written; recovery rolls back (or finishes) from the
       * database once it is back.
       */
      unknown?: boolean;
    };

/**
 * The outage that leaves a failed run unsettled: its commit lost after it may have taken effect
 * (`unknown`), a failure past the point of no return, or an undo, stopped by the database
 * (`isStoreOutage`). The operation must then stay `running` for recovery, which works from the
 * database once it is back; settled, its records would stay half rolled back. Undefined for any
 * other failure.
 */
export function unsettledBy(outcome: Extract<RunOutcome, { ok: false }>): BerthError | undefined {
  if (outcome.unknown === true || (outcome.forward && isStoreOutage(outcome.error))) return outcome.error;
  return outcome.undoErrors.find(isStoreOutage);
}

/** Options of one run. */
export interface RunOptions {
  operationId: string;
  /** The operation's deadline (the journal writes and every step follow it). */
  signal: AbortSignal;
  /**
   * Fires when the operation's caller cancels it (`BerthService.cancel`): the steps stop as at the
   * deadline — until the point of no return. Past it the run goes on to its end (a detach that let
   * go of the device finishes rather than ending `error_detaching`); the journal and the undos
   * never follow it.
   */
  cancel?: AbortSignal;
  /** Deadline of each undo (undos run even after the operation's deadline passed). */
  undoTimeoutMs: number;
  /** Bound to the operation (`operationId`, as every caller's child logger is): the runner's lines add the step only (both carried the id twice). */
  logger: Logger;
  /** Fault points `<pipeline>.<step>.before|after` are passed here. */
  faults?: FaultInjector;
  /** Prefix of this pipeline's fault points (`attach`, `detach`). */
  pipeline?: string;
  /**
   * Fires when another replica took the operation over (its lease passed): the run stops where it
   * is, writes nothing more and undoes nothing — the new owner undoes or resumes from the journal.
   */
  fenced?: AbortSignal;
  /**
   * This process, when another replica may take the operation over (replica leases): every
   * journal write and step commit confirms in its transaction, last before the commit, that the
   * operation is still this owner's (`confirmOwner`), and every host step is handed out only
   * while it is (`HostStepCall.owner`, given by `dispatch`). One that is not fences the run as `fenced` would — a process
   * frozen past its lease resumes before its heartbeat can tell it.
   */
  owner?: string;
}

/** How a run's writes are fenced: the signal that stops it, and the writes that confirm its ownership before they commit. */
interface RunFence {
  /** `fenced`, or a write (or a host step handed out) found the operation taken over. */
  signal: AbortSignal;
  /** Run a journal write on the store with the run's owner to pass on (the store fences it: `ownedWrite`); none in embedded mode. */
  owned<T>(write: (store: Store, owner: string | undefined) => Promise<T>): Promise<T>;
  /** Run `write` in one transaction that, with an owner, confirms it last, just before the commit. */
  transaction<T>(write: (store: Store) => Promise<T>): Promise<T>;
  /** Fence the run when `error` says the operation was taken over (a host step refused to hand out work). */
  note(error: unknown): void;
}

/**
 * The error of a step the signal cut short: the signal's reason (the deadline passed, the caller
 * cancelled), which is what the user must hear, keeping the step's word that it left everything
 * as it was (`details.untouched`: a detach cut off while it waited for a busy device rolls back
 * instead of ending `error_detaching`).
 */
function cutShortError(reason: unknown, raw: unknown): BerthError {
  const error = toBerthError(reason);
  if (!BerthError.is(raw) || raw.details.untouched !== true) return error;
  return new BerthError(error.code, error.message, {
    ...(error.hint === undefined ? {} : { hint: error.hint }),
    details: { ...error.details, untouched: true },
    cause: raw,
  });
}

/** A safe summary of an error for the journal (no stack, no cause). */
export function summarize(error: BerthError): ErrorSummary {
  return { code: error.code, message: error.message, ...(error.hint === undefined ? {} : { hint: error.hint }) };
}

/** A journal write that failed for good, worded for the user. */
function journalFailure(raw: unknown, what: string): BerthError {
  const cause = toBerthError(raw);
  return new BerthError(cause.code, `${what}: ${cause.message}`, {
    ...(cause.hint === undefined ? {} : { hint: cause.hint }),
    details: { ...cause.details, journal: true },
    cause,
  });
}

/**
 * Runs steps in order, journalling each boundary in the store before moving on, so that a crash at
 * any point leaves a record of what was done. On failure it undoes the failing step and every
 * earlier one in reverse (each journalled too), unless a point of no return was passed.
 *
 * Journal writes are retried while the store says they may work a moment later (another process
 * holds the database lock), within the operation's deadline. One that fails for good is a failure
 * like any other: before the point of no return what was done is undone (the undos run even when
 * their own journal rows cannot be written: they are idempotent, and recovery repeats whatever the
 * journal does not show as undone); after it, the work stands and only the journal is behind.
 */
export class OperationRunner {
  constructor(private readonly store: Store) {}

  private fence(options: RunOptions): RunFence {
    const lost = new AbortController();
    const { owner, operationId } = options;
    const note = (error: unknown): void => {
      if (isTakenOver(error) && !lost.signal.aborted) lost.abort(error);
    };
    // Without an owner (embedded mode), exactly the write or transaction it always was.
    const noted = async <T>(write: Promise<T>): Promise<T> => {
      try {
        return await write;
      } catch (error) {
        note(error);
        throw error;
      }
    };
    return {
      signal: options.fenced ? AbortSignal.any([options.fenced, lost.signal]) : lost.signal,
      note,
      transaction: (write) => noted(ownedTransaction(this.store, operationId, owner, write)),
      owned: (write) => noted(ownedWrite(this.store, operationId, owner, write)),
    };
  }

  async run<C>(steps: ReadonlyArray<Step<C>>, context: C, options: RunOptions): Promise<RunOutcome> {
    const { operationId, signal, logger } = options;
    const fence = this.fence(options);
    const { owned } = fence;
    const timings: Record<string, number> = {};
    const done: Array<Step<C>> = [];
    const journalErrors: BerthError[] = [];
    let pastNoReturn = false;
    const journal = <T>(what: string, fn: () => Promise<T>): Promise<T> => withStoreRetry(fn, { what, signal, logger });
    // A journal write that starts a store-only step need not reach the disk before the next
    // durable commit: nothing outside the store depends on it (see `Step.storeOnly`). The last
    // step's end is durable: the caller reports success once the run is done, even when it cannot
    // write the operation's own end (then recovery reads the outcome from this row), and a run
    // that was fenced writes nothing after it.
    const deferrable = (next: Step<C> | undefined): boolean => next?.storeOnly === true;
    const durably = <T>(deferred: boolean, fn: () => Promise<T>): Promise<T> => (deferred ? withDeferredDurability(this.store, fn) : fn());

    const fail = async (error: BerthError, toUndo: Array<Step<C>>, forward: boolean): Promise<RunOutcome> => {
      if (fence.signal.aborted) {
        logger.warn({ code: error.code, err: error.message }, 'another replica took the operation over; leaving it to it');
        return { ok: false, error: toBerthError(fence.signal.reason), rolledBack: false, forward: false, undoErrors: [], journalErrors, timings, fenced: true };
      }
      if (forward) return { ok: false, error, rolledBack: false, forward: true, undoErrors: [], journalErrors, timings };
      const undoErrors = await this.undo(toUndo.reverse(), context, options, journalErrors, fence);
      // Taken over while undoing: the new owner undoes the rest.
      if (fence.signal.aborted) return fail(error, [], false);
      return { ok: false, error, rolledBack: undoErrors.length === 0, forward: false, undoErrors, journalErrors, timings };
    };

    // The seq of the step about to run when the previous boundary already started its row.
    let started: number | undefined;
    for (const [index, step] of steps.entries()) {
      const begun = performance.now();
      // What this step's work follows: the deadline, and the caller's cancel before the point of no return.
      const stepSignal = options.cancel && !pastNoReturn ? AbortSignal.any([signal, options.cancel]) : signal;
      // Whether the step's own work began (a step cut off before it did nothing, not even half-way).
      let ran = false;
      if (fence.signal.aborted) return fail(toBerthError(fence.signal.reason), [], false);
      let seq: number;
      if (started !== undefined) {
        seq = started;
        started = undefined;
      } else {
        try {
          seq = await durably(step.storeOnly === true, () => journal(`journal ${step.name}`, () => owned((s, o) => s.operations.startStep(operationId, step.name, 'do', o))));
        } catch (raw) {
          // The step never ran: undo what did (or, past the point of no return, leave it to recovery).
          const error = journalFailure(raw, `recording step ${step.name} failed`);
          logger.warn({ step: step.name, code: error.code, err: error.message }, 'journal write failed');
          return fail(error, [...done], pastNoReturn);
        }
      }
      // The step failed (its work, or its commit): record it and undo.
      const failed = async (raw: unknown): Promise<RunOutcome> => {
        // A driver whose command our signal cut short reports it as CANCELLED; the signal knows why
        // (the deadline passed, or the caller cancelled), and that is what the user must hear. A
        // caller's cancel also speaks for a failure that left everything as it was (`untouched`:
        // a wait for a holder cut short); at a passed deadline that failure keeps its own words
        // (the busy device's holder), as before.
        const reason = stepSignal.aborted ? toBerthError(stepSignal.reason) : undefined;
        const cutShort =
          reason !== undefined && (!BerthError.is(raw) || raw.code === 'CANCELLED' || (reason.code === 'CANCELLED' && raw.details.untouched === true));
        const error = cutShort ? cutShortError(stepSignal.reason, raw) : toBerthError(raw);
        timings[step.name] = round(performance.now() - begun);
        fence.note(raw);
        // Taken over: the journal is the new owner's now.
        if (fence.signal.aborted) return fail(error, [], false);
        await journal(`journal ${step.name}`, () => owned((s, o) => s.operations.endStep(operationId, seq, { state: 'failed', error: summarize(error) }, o))).catch(
          (journalError: unknown) => journalErrors.push(toBerthError(journalError)),
        );
        logger.warn({ step: step.name, code: error.code, err: error.message }, 'step failed');
        // A point-of-no-return step that failed half-way (a detach that may have let go of the
        // device) cannot be rolled back into a state that would be a lie.
        const halfWay = ran && step.pointOfNoReturn === true && step.failurePassesNoReturn?.(error) === true;
        return fail(error, [...done, step], pastNoReturn || halfWay);
      };
      const point = `${options.pipeline ?? 'pipeline'}.${step.name}`;
      let data: Record<string, unknown> | void;
      // The boundary is one write: this step's end and the next one's start (a taken-over run
      // starts nothing more). The journal never shows this step done with no next row begun, a
      // state a crash before the next step's work would have shown as the same thing anyway.
      let next: Step<C> | undefined;
      // `owner`: the store fences the write by it (a boundary alone); none inside a step's commit,
      // whose transaction confirms the owner last.
      const boundary = (store: Store, outcome: StepOutcome, owner?: string): Promise<number | undefined> =>
        next === undefined
          ? store.operations.endStep(operationId, seq, outcome, owner).then(() => undefined)
          : store.operations.advanceStep(operationId, seq, outcome, { name: next.name, phase: 'do' }, owner);
      const commit = step.commit?.bind(step);
      let committed: StepCommit<C> | undefined;
      let committing = false;
      // The step's work and its commit, under what the step holds across both (`Step.hold`);
      // what failed is handled once that is let go (the step's undo may take it again).
      const body = async (): Promise<void> => {
        stepSignal.throwIfAborted();
        await options.faults?.hit(`${point}.before`, stepSignal);
        ran = true;
        data = await step.run(context, stepSignal);
        next = fence.signal.aborted ? undefined : steps[index + 1];
        if (commit === undefined) return;
        // The step's store work lands with its boundary, in one transaction: the work, the
        // step's end and the next one's start are written together or not at all (then the
        // step failed, and is undone like one whose work failed).
        committing = true;
        started = await durably(deferrable(next), () =>
          journal(`journal ${step.name}`, () =>
            fence.transaction(async (tx) => {
              committed = await commit(context, tx);
              const merged = committed.data === undefined ? (data ?? null) : { ...(data ?? {}), ...committed.data };
              return boundary(tx, { state: 'done', data: merged });
            }),
          ),
        );
      };
      try {
        await (step.hold ? step.hold(context, stepSignal, body) : body());
        if (commit === undefined) {
          // The step's work is done even if what follows fails: past a point of no return, a
          // failure from here on must not undo earlier steps.
          if (step.pointOfNoReturn) pastNoReturn = true;
          await options.faults?.hit(`${point}.after`, pastNoReturn ? signal : stepSignal);
          timings[step.name] = round(performance.now() - begun);
        }
      } catch (raw) {
        if (committing) {
          // Committed or not, nobody can say: undone from this process's memory, the step would
          // act on records as it thinks they are (a reserve whose attachment it never learned
          // of, a `complete` that did commit) — the rollback is recovery's, from the database.
          if (isOutcomeUnknown(raw)) {
            const error = toBerthError(raw);
            timings[step.name] = round(performance.now() - begun);
            logger.warn({ step: step.name, code: error.code, err: error.message }, 'a step commit was lost with its connection; leaving the rollback to recovery');
            return { ok: false, error, rolledBack: false, forward: false, undoErrors: [], journalErrors, timings, unknown: true };
          }
        }
        return failed(raw);
      }
      if (commit !== undefined) {
        committed?.apply?.(context);
        if (step.pointOfNoReturn) pastNoReturn = true;
        try {
          await options.faults?.hit(`${point}.after`, pastNoReturn ? signal : stepSignal);
        } catch (raw) {
          // The step is journalled done; the next step's row, begun with it, ends failed.
          const error = toBerthError(raw);
          timings[step.name] = round(performance.now() - begun);
          const begunNext = started;
          if (begunNext !== undefined) {
            await journal(`journal ${step.name}`, () => owned((s, o) => s.operations.endStep(operationId, begunNext, { state: 'failed', error: summarize(error) }, o))).catch(
              (journalError: unknown) => journalErrors.push(toBerthError(journalError)),
            );
          }
          logger.warn({ step: step.name, code: error.code, err: error.message }, 'step failed');
          return fail(error, [...done, step], pastNoReturn);
        }
        timings[step.name] = round(performance.now() - begun);
        done.push(step);
        continue;
      }
      try {
        started = await durably(deferrable(next), () => journal(`journal ${step.name}`, () => owned((s, o) => boundary(s, { state: 'done', data: data ?? null }, o))));
      } catch (raw) {
        // Neither row was written.
        const error = journalFailure(raw, `recording the end of step ${step.name} failed`);
        logger.warn({ step: step.name, code: error.code, err: error.message }, 'journal write failed');
        if (!pastNoReturn || fence.signal.aborted) return fail(error, [...done, step], false);
        // The work is done and stands; recovery finds the step's row still running and finishes
        // it. The next step starts its own row, as if this boundary had been two writes.
        journalErrors.push(error);
      }
      done.push(step);
    }
    return { ok: true, timings, journalErrors };
  }

  /**
   * Undo `steps` in the order given (newest first), journalling each; returns the undos that
   * failed. An undo whose journal row cannot be written still runs; one that failed because the
   * database did (`isStoreOutage`) is the last one run: the rest is recovery's.
   */
  async undo<C>(steps: ReadonlyArray<Step<C>>, context: C, options: RunOptions, journalErrors: BerthError[] = [], fence = this.fence(options)): Promise<BerthError[]> {
    const errors: BerthError[] = [];
    const undoable = steps.filter((step) => step.undo !== undefined);
    // The seq of the undo about to run when the previous undo's end already started its row.
    let started: number | undefined;
    for (const [index, step] of undoable.entries()) {
      const signal = AbortSignal.timeout(options.undoTimeoutMs);
      const journal = <T>(fn: () => Promise<T>): Promise<T | undefined> =>
        withStoreRetry(fn, { what: `journal undo ${step.name}`, signal, logger: options.logger }).catch((error: unknown) => {
          journalErrors.push(toBerthError(error));
          return undefined;
        });
      const seq = started ?? (await journal(() => fence.owned((s, o) => s.operations.startStep(options.operationId, step.name, 'undo', o))));
      started = undefined;
      // Another replica owns the operation now: it undoes what is left, not this process.
      if (fence.signal.aborted) break;
      let outcome: StepOutcome;
      try {
        await step.undo?.(context, signal, { failures: errors.map((e) => `${e.message}`) });
        outcome = { state: 'done' };
      } catch (raw) {
        // A host step refused because another replica owns the operation now: it undoes the rest.
        fence.note(raw);
        if (fence.signal.aborted) break;
        const error = toBerthError(raw);
        errors.push(error);
        outcome = { state: 'failed', error: summarize(error) };
        options.logger.error({ step: step.name, code: error.code, err: error.message }, 'undo failed');
        // The database failed, not the undo's work: the older undos are left to recovery, which
        // runs them (and this one again) from the journal once it is back. Run now, they would
        // fail on it too, or take this failure for one on the host (the reserve's undo would
        // mark the attachment `error_attaching`, and recovery would then leave it so).
        if (isStoreOutage(error)) {
          if (seq !== undefined) await journal(() => fence.owned((s, o) => s.operations.endStep(options.operationId, seq, outcome, o)));
          break;
        }
      }
      if (seq === undefined) continue;
      // One write per boundary here too: this undo's end and the next undo's start. When it
      // fails, neither is written, and the next undo starts its own row.
      const next = undoable[index + 1];
      started = await journal(() =>
        next === undefined
          ? fence.owned((s, o) => s.operations.endStep(options.operationId, seq, outcome, o)).then(() => undefined)
          : fence.owned((s, o) => s.operations.advanceStep(options.operationId, seq, outcome, { name: next.name, phase: 'undo' }, o)),
      );
    }
    return errors;
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
