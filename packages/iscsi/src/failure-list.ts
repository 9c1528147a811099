import { BerthError, toBerthError, type BerthErrorCode } from '@berth/core';

/** One recorded failure: the step that failed and its error. */
export interface StepFailure {
  step: string;
  error: BerthError;
}

/**
 * The errors of a disconnect: each step's failure is recorded and the next step runs; at the end
 * one error lists them all (os-brick chains them the same way). Without `force` the first failure
 * is thrown at once.
 */
export class FailureList {
  private readonly failures: StepFailure[] = [];

  constructor(readonly force: boolean) {}

  /** Record `error` from `step`, or throw it when not forcing. */
  add(step: string, error: unknown, fallback: BerthErrorCode = 'DRIVER_ERROR'): void {
    const berthError = toBerthError(error, fallback);
    if (!this.force) throw withStep(step, berthError);
    this.failures.push({ step, error: berthError });
  }

  /** Run `fn`; a failure is recorded (force) or thrown (no force). Resolves `undefined` after a recorded failure. */
  async attempt<T>(step: string, fn: () => Promise<T>, fallback: BerthErrorCode = 'DRIVER_ERROR'): Promise<T | undefined> {
    try {
      return await fn();
    } catch (error) {
      this.add(step, error, fallback);
      return undefined;
    }
  }

  /** How many failures were recorded. */
  get size(): number {
    return this.failures.length;
  }

  /** The recorded failures, in order. */
  list(): readonly StepFailure[] {
    return this.failures;
  }

  /** Throw one error listing every recorded failure, if any (its code is the first failure's). */
  throwIfAny(what: string): void {
    const [first] = this.failures;
    if (first === undefined) return;
    const list = this.failures.map((f) => `${f.step}: ${f.error.message}`).join('; ');
    const hint = this.failures.find((f) => f.error.hint !== undefined)?.error.hint;
    throw new BerthError(first.error.code, `${what} finished with ${this.failures.length} error(s): ${list}`, {
      cause: first.error,
      ...(hint === undefined ? {} : { hint }),
      details: { errors: this.failures.map((f) => ({ step: f.step, ...f.error.toJSON() })) },
    });
  }
}

/** The same error with the step it came from in front of its message. */
function withStep(step: string, error: BerthError): BerthError {
  return new BerthError(error.code, `${step}: ${error.message}`, {
    cause: error,
    ...(error.hint === undefined ? {} : { hint: error.hint }),
    details: error.details,
  });
}
