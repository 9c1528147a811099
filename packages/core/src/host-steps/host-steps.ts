import type { HostStepName, HostStepPayload, HostStepResult } from '../agent-protocol.js';
import type { Host } from '../model.js';

// The host-step seam's types alone: the pipelines and reconcile import them from here, so that no
// import (type-only included) leads from them back to the executor, which runs the steps.

/** A host step's payload as the pipeline gives it: the executor adds the deadline. */
export type HostStepRequest<S extends HostStepName> = Omit<HostStepPayload<S>, 'deadlineAt'>;

/** One call of a host step. */
export interface HostStepCall {
  /** The operation the step belongs to (none for a reconcile fix outside an operation). */
  operationId?: string;
  /** The step's deadline (the operation's, or an undo's). */
  signal: AbortSignal;
  /** The call is an undo (its deadline is `undoTimeoutMs`, not the operation's). */
  undo?: boolean;
  /**
   * This process, when another replica may take the operation over (replica leases): the
   * executor hands the step out only while the operation is still this owner's — a remote one
   * confirms it in the transaction that creates the work item, a local one just before it runs
   * the step. Absent otherwise (embedded mode): nothing more is read or written.
   */
  owner?: string;
}

/**
 * Who runs the host steps of one host: this process (`local`, the embedded default) or the
 * host's `berth agent` through work items (`remote`). The pipelines call this and never a
 * transport or consumer directly, so a host step is a journalled step whatever its executor.
 */
export interface HostSteps {
  readonly kind: 'local' | 'remote';
  /** The host the steps run on. */
  readonly host: Host;
  /** Who runs them: `in-process`, or the agent's instance (for the journal). */
  readonly agent: string;
  /** Run `step` on the host; resolves with its parsed result. */
  run<S extends HostStepName>(step: S, payload: HostStepRequest<S>, call: HostStepCall): Promise<HostStepResult<S>>;
  /**
   * Whether `step` of `operationId` may have run on the host: always for a local executor; for a
   * remote one, whether its agent ever claimed the item — asking cancels an item still open first,
   * so that no agent runs it after the answer. An undo of a step that never ran there has nothing
   * to undo on the host.
   */
  ran(operationId: string, step: HostStepName): Promise<boolean>;
}

/** A host whose `berth agent` registered. */
export type AgentHost = Host & { agent: NonNullable<Host['agent']> };
