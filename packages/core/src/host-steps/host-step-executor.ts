import { BerthError } from '../errors.js';
import type { Host } from '../model.js';
import type { PipelineDeps } from '../pipeline/context.js';
import type { AgentHost, HostSteps } from './host-steps.js';
import { ownedTransaction } from '../pipeline/operation-fence.js';
import { withStoreRetry } from '../pipeline/store-retry.js';
import { runHostStep } from './run-host-step.js';

export type { AgentHost, HostStepCall, HostStepRequest, HostSteps } from './host-steps.js';

/** The host steps run by this process (the host it runs on). */
export function localHostSteps(deps: Pick<PipelineDeps, 'catalog' | 'logger' | 'baseConnector' | 'config' | 'store'>, host: Host): HostSteps {
  const target = { catalog: deps.catalog, logger: deps.logger, baseConnector: () => deps.baseConnector() };
  return {
    kind: 'local',
    host,
    agent: 'in-process',
    async run(step, payload, call) {
      // With an owner, confirmed just before the step runs (a check, then the act: it narrows the
      // window of a process frozen past its lease to the step itself; see core's README).
      // A store that is busy a moment (SQLite's lock, PostgreSQL ending a connection on purpose)
      // is retried as the pipeline's own writes are: the check must not fail a healthy step.
      const { operationId, owner } = call;
      if (owner !== undefined && operationId !== undefined) {
        await withStoreRetry(() => ownedTransaction(deps.store, operationId, owner, () => Promise.resolve()), { what: 'confirm the operation owner', signal: call.signal });
      }
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
