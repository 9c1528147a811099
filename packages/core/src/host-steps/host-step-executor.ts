import type { HostStepName, HostStepPayload, HostStepResult } from '../agent-protocol.js';
import { BerthError } from '../errors.js';
import type { Host } from '../model.js';
import type { PipelineDeps } from '../pipeline/context.js';
import { runHostStep } from './run-host-step.js';

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
   * remote one, whether its agent ever claimed the item. An undo of a step that never ran there
   * has nothing to undo on the host.
   */
  ran(operationId: string, step: HostStepName): Promise<boolean>;
}

/** The host steps run by this process (the host it runs on). */
export function localHostSteps(deps: Pick<PipelineDeps, 'catalog' | 'logger' | 'baseConnector' | 'config'>, host: Host): HostSteps {
  const target = { catalog: deps.catalog, logger: deps.logger, baseConnector: () => deps.baseConnector() };
  return {
    kind: 'local',
    host,
    agent: 'in-process',
    run(step, payload, call) {
      // The deadline travels as the signal in-process; the payload still carries one to parse.
      const timeoutMs = call.undo ? deps.config.undoTimeoutMs : deps.config.operationTimeoutMs;
      const full = { ...payload, deadlineAt: new Date(Date.now() + timeoutMs).toISOString() };
      return runHostStep(target, step, step === 'connect' || step === 'release' || step === 'disconnect' ? full : payload, {
        ...(call.operationId === undefined ? {} : { operationId: call.operationId }),
        signal: call.signal,
      });
    },
    ran: () => Promise.resolve(true),
  };
}

/** A host whose `berth agent` registered. */
export type AgentHost = Host & { agent: NonNullable<Host['agent']> };

/**
 * The executor of `hostId`'s steps: the host's `berth agent` once one registered (`remote`, work
 * items); else this process for its own host; a host with neither cannot run any, which is
 * refused before anything is enqueued or touched.
 */
export async function hostStepsFor(deps: PipelineDeps, hostId: string, remote?: (host: AgentHost) => HostSteps): Promise<HostSteps> {
  const host = await deps.store.hosts.get(hostId);
  if (host?.agent && remote) return remote(host as AgentHost);
  const local = await deps.localHost();
  if (hostId === local.id) return localHostSteps(deps, local);
  const name = host?.name ?? hostId;
  throw new BerthError('UNPROCESSABLE', `host ${name} has no berth agent, and it is not this host (${local.name})`, {
    hint: `run \`berth agent --api <url>\` on ${name} (or run the command on ${name} itself)`,
    details: { hostId },
  });
}
