import { BerthError, toBerthError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { ErrorSummary } from '../model.js';
import type { Store } from '../store.js';
import type { Step } from './step.js';
import type { FaultInjector } from '../faults.js';

/** How a pipeline run ended. */
export type RunOutcome =
  | { ok: true; timings: Record<string, number> }
  | {
      ok: false;
      error: BerthError;
      /** True when every undo succeeded (nothing left behind). */
      rolledBack: boolean;
      /** True when the failure came after a point of no return (nothing was undone). */
      forward: boolean;
      undoErrors: BerthError[];
      timings: Record<string, number>;
    };

/** Options of one run. */
export interface RunOptions {
  operationId: string;
  /** The operation's deadline/cancel signal. */
  signal: AbortSignal;
  /** Deadline of each undo (undos run even after the operation's deadline passed). */
  undoTimeoutMs: number;
  logger: Logger;
  /** Fault points `<pipeline>.<step>.before|after` are passed here. */
  faults?: FaultInjector;
  /** Prefix of this pipeline's fault points (`attach`, `detach`). */
  pipeline?: string;
}

/** A safe summary of an error for the journal (no stack, no cause). */
export function summarize(error: BerthError): ErrorSummary {
  return { code: error.code, message: error.message, ...(error.hint === undefined ? {} : { hint: error.hint }) };
}

/**
 * Runs steps in order, journalling each boundary in the store before moving on, so that a crash at
 * any point leaves a record of what was done. On failure it undoes the failing step and every
 * earlier one in reverse (each journalled too), unless a point of no return was passed.
 */
export class OperationRunner {
  constructor(private readonly store: Store) {}

  async run<C>(steps: ReadonlyArray<Step<C>>, context: C, options: RunOptions): Promise<RunOutcome> {
    const { operationId, signal, logger } = options;
    const timings: Record<string, number> = {};
    const done: Array<Step<C>> = [];
    let pastNoReturn = false;
    for (const step of steps) {
      const started = performance.now();
      const seq = await this.store.operations.startStep(operationId, step.name, 'do');
      try {
        signal.throwIfAborted();
        const point = `${options.pipeline ?? 'pipeline'}.${step.name}`;
        await options.faults?.hit(`${point}.before`);
        const data = await step.run(context, signal);
        // The step's work is done even if what follows fails: past a point of no return, a
        // failure from here on must not undo earlier steps.
        if (step.pointOfNoReturn) pastNoReturn = true;
        await options.faults?.hit(`${point}.after`);
        timings[step.name] = round(performance.now() - started);
        await this.store.operations.endStep(operationId, seq, { state: 'done', data: data ?? null });
        done.push(step);
      } catch (raw) {
        const error = toBerthError(signal.aborted && !BerthError.is(raw) ? signal.reason : raw);
        timings[step.name] = round(performance.now() - started);
        await this.store.operations.endStep(operationId, seq, { state: 'failed', error: summarize(error) });
        logger.warn({ operationId, step: step.name, code: error.code, err: error.message }, 'step failed');
        if (pastNoReturn) {
          return { ok: false, error, rolledBack: false, forward: true, undoErrors: [], timings };
        }
        const undoErrors = await this.undo([...done, step].reverse(), context, options);
        return { ok: false, error, rolledBack: undoErrors.length === 0, forward: false, undoErrors, timings };
      }
    }
    return { ok: true, timings };
  }

  /** Undo `steps` in the order given (newest first), journalling each; returns the undos that failed. */
  async undo<C>(steps: ReadonlyArray<Step<C>>, context: C, options: RunOptions): Promise<BerthError[]> {
    const errors: BerthError[] = [];
    for (const step of steps) {
      if (!step.undo) continue;
      const seq = await this.store.operations.startStep(options.operationId, step.name, 'undo');
      const signal = AbortSignal.timeout(options.undoTimeoutMs);
      try {
        await step.undo(context, signal, { failures: errors.map((e) => `${e.message}`) });
        await this.store.operations.endStep(options.operationId, seq, { state: 'done' });
      } catch (raw) {
        const error = toBerthError(raw);
        errors.push(error);
        await this.store.operations.endStep(options.operationId, seq, { state: 'failed', error: summarize(error) });
        options.logger.error({ operationId: options.operationId, step: step.name, code: error.code, err: error.message }, 'undo failed');
      }
    }
    return errors;
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
