import type { BerthError } from '../errors.js';
import type { Store } from '../store.js';

/**
 * One step of a pipeline. `run` does the work and may return secret-free data that is journalled;
 * `undo` reverses it. Both must be idempotent: a crash can make either run twice.
 */
export interface Step<C> {
  readonly name: string;
  run(context: C, signal: AbortSignal): Promise<Record<string, unknown> | void>;
  /**
   * The step's store-only work, after `run`: written in one transaction with the step's end in
   * the journal (and the next step's start), so a crash leaves both or neither, in one commit
   * instead of two. It may run again (the transaction retried): it changes the context only in
   * `apply`, called once the transaction committed. A failure is the step's failure.
   */
  commit?(context: C, store: Store): Promise<StepCommit<C>>;
  /**
   * Run `body` (the step's `run`, then its `commit`) holding what must be held across both: a
   * lease another process's decision waits for until this step's outcome is in the store (the
   * attach's `initialize` holds the export's, so a detach's `terminate` never decides between the
   * backend's export and its record). Released before the step's `undo` runs, which takes it again.
   */
  hold?<T>(context: C, signal: AbortSignal, body: () => Promise<T>): Promise<T>;
  /**
   * Reverse the step. It runs for every finished step when a later one fails, and for the failing
   * step itself (a step that failed half-way may have left something behind).
   */
  undo?(context: C, signal: AbortSignal, progress: UndoProgress): Promise<void>;
  /**
   * Once this step has succeeded the operation can no longer be rolled back (a detach that has
   * disconnected the device): a later failure stops instead of undoing.
   */
  readonly pointOfNoReturn?: boolean;
  /**
   * The step changes nothing outside the store (it may read the host): nothing is left to undo
   * or find if a power cut took its journal row. The journal row that starts it (the previous
   * step's boundary) may then be committed deferred-durable (`Store.deferDurability`): the next
   * durable commit — at the latest the one before a step that does change something outside —
   * makes it durable. Leave it unset when unsure: the row is then durable before the step runs.
   */
  readonly storeOnly?: boolean;
  /**
   * For a point-of-no-return step: whether this failure already changed what cannot be put back
   * (a disconnect that let go of the device half-way). Then nothing is undone either, and the
   * operation fails forward. Without it, a failed step is undone like any other.
   */
  failurePassesNoReturn?(error: BerthError): boolean;
}

/** What an undo knows about the undos that ran before it in the same rollback. */
export interface UndoProgress {
  /** Messages of undos that failed so far (a later undo must not erase the record of what is left). */
  readonly failures: readonly string[];
}

/** What a step's `commit` wrote: data for the journal, and the context's change once committed. */
export interface StepCommit<C> {
  data?: Record<string, unknown>;
  apply?(context: C): void;
}
