import { HOST_STEP_SCHEMAS, hostChannel, type HostStepName, type HostStepResult } from '../agent-protocol.js';
import { recordWithoutSecrets } from '../connection.js';
import { BerthError, ERROR_CODES, parseWith, toBerthError, type BerthErrorCode } from '../errors.js';
import type { Host } from '../model.js';
import { ownedTransaction } from '../pipeline/operation-fence.js';
import type { Store } from '../store.js';
import type { WorkItem } from '../work-item.js';
import type { AgentHost, HostStepCall, HostSteps } from './host-steps.js';
import type { WaiterStore, WorkItemWaiter } from './work-item-waiter.js';

/** What the remote executor needs. */
export interface RemoteHostStepsDeps {
  store: Store;
  waiter: WorkItemWaiter;
  /** Deadline of an undo's host step. */
  undoTimeoutMs: number;
  /** An agent not seen for this long is offline (for the messages). */
  offlineAfterMs: number;
  /** Operations' deadlines already read (shared by the executors of one process). */
  deadlines: OperationDeadlines;
}

/** How many operations' deadlines `OperationDeadlines` keeps (far more than run at once). */
const DEADLINES_KEPT = 1_024;

/**
 * The deadlines of the operations whose host steps this process ran: an operation's deadline is
 * written once, when it is created, so its steps read the row once rather than on every step.
 */
export class OperationDeadlines {
  private readonly known = new Map<string, string>();

  /** The deadline of `operationId`, read from the store the first time. */
  async of(store: Store, operationId: string): Promise<string | undefined> {
    const known = this.known.get(operationId);
    if (known !== undefined) return known;
    const deadlineAt = (await store.operations.get(operationId))?.deadlineAt;
    if (deadlineAt === undefined) return undefined;
    // The oldest entry goes first (a Map keeps insertion order): it belongs to a finished operation.
    if (this.known.size >= DEADLINES_KEPT) this.known.delete(this.known.keys().next().value ?? '');
    this.known.set(operationId, deadlineAt);
    return deadlineAt;
  }
}

/** Steps whose payload carries a deadline the agent's signal follows. */
const WITH_DEADLINE: ReadonlySet<HostStepName> = new Set(['connect', 'release', 'disconnect']);

/**
 * The host steps of a host that runs `berth agent`: each step is a work item of the operation,
 * created with a notification to the host's channel in one transaction (sent when it commits),
 * then waited for. The agent claims it, runs `runHostStep` and reports; a failure comes back as
 * the agent's error, named with the host. When the step's deadline passes first, the item is
 * cancelled (a compare-and-swap, so a returning agent never runs it): from `pending` the step
 * never ran on the host; from `claimed` it may have — `ran()` tells an undo which.
 */
export function remoteHostSteps(deps: RemoteHostStepsDeps, host: AgentHost): HostSteps {
  const { store } = deps;
  const { workItems } = agentStore(store, host);
  return {
    kind: 'remote',
    host,
    agent: host.agent.instance,
    async run<S extends HostStepName>(step: S, payload: object, call: HostStepCall): Promise<HostStepResult<S>> {
      const operationId = call.operationId;
      if (operationId === undefined) throw new BerthError('INTERNAL', `host step ${step} on host ${host.name} needs an operation`);
      const deadlineAt = await deadlineOf(deps, operationId, call);
      // Stored without secrets (the store drops them again); the API adds credentials to a claim answer.
      const stored = recordWithoutSecrets({ ...payload, ...(WITH_DEADLINE.has(step) ? { deadlineAt } : {}) });
      const create = async (tx: Store): Promise<WorkItem> => {
        const created = await required(tx.workItems).create({ operationId, hostId: host.id, step, payload: stored });
        await tx.notifications?.notify(hostChannel(host.id));
        return created;
      };
      // With an owner, the item exists only if the operation is still this process's when it
      // commits (confirmed last in the same transaction): a process frozen past its lease hands
      // no work to the host after another replica took the operation over.
      const item = await ownedTransaction(store, operationId, call.owner, create);
      let finished: WorkItem;
      try {
        // Called right after the commit, nothing in between: the waiter need not read the item first.
        finished = await deps.waiter.wait(item.id, call.signal, true);
      } catch (raw) {
        if (!call.signal.aborted) throw raw;
        finished = await giveUp(deps, host, item, step, call);
      }
      if (finished.state === 'failed') {
        const error = finished.error;
        throw new BerthError(codeOf(error?.code), `on host ${host.name}: ${error?.message ?? `step ${step} failed`}`, {
          ...(error?.hint ? { hint: error.hint } : {}),
          // `untouched` travels as the driver said it, so a detach rolls back as a local one does —
          // of the item's only run: an earlier attempt (an agent that died holding it) may have done
          // what this one's "untouched" cannot speak for.
          // The guest consumers' flags travel too (a paused guest's pending unplug: `error_detaching`).
          details: {
            hostId: host.id,
            step,
            workItemId: item.id,
            ranOnHost: finished.attempts > 0,
            ...(error?.untouched === true && finished.attempts <= 1 ? { untouched: true } : {}),
            ...(error?.guestHoldsDevice === true ? { guestHoldsDevice: true } : {}),
            ...(error?.unplugRequested === true ? { unplugRequested: true } : {}),
          },
        });
      }
      const schema = HOST_STEP_SCHEMAS[step].result;
      return parseWith(schema, finished.result ?? {}, `${step} result from host ${host.name}`) as HostStepResult<S>;
    },
    async ran(operationId, step) {
      // An item still open (its wait failed for another reason than the deadline, which cancels
      // it: the database failed under it) is cancelled first, a compare-and-swap: the undo that
      // asks must not skip a step an agent then runs after it (a device connected for nobody).
      const open = await workItems.list({ operationId, hostId: host.id, state: ['pending', 'claimed'] });
      for (const item of open.filter((i) => i.step === step)) {
        await workItems.cancel(item.id, { code: 'CANCELLED', message: `cancelled: the ${step} is being undone` }).catch((error: unknown) => {
          // Ended meanwhile (done or failed): read below as it ended.
          if (!(BerthError.is(error) && error.code === 'CONFLICT')) throw error;
        });
      }
      const items = await workItems.list({ operationId, hostId: host.id });
      return items.some((i) => i.step === step && i.attempts > 0);
    },
  } as HostSteps;
}

/** The agent's error code, when it is one of berth's. */
function codeOf(code: string | undefined): BerthErrorCode {
  return (ERROR_CODES as readonly string[]).includes(code ?? '') ? (code as BerthErrorCode) : 'DRIVER_ERROR';
}

/** The store's many-hosts members; UNPROCESSABLE naming the host when the store has none. */
export function agentStore(store: Store, host: Host): WaiterStore {
  if (!store.workItems || !store.notifications) {
    throw new BerthError('UNPROCESSABLE', `host ${host.name} runs a berth agent, but this store cannot hand it work`, {
      hint: 'use a store with work items (SQLite or PostgreSQL from @berth/store) for many hosts',
    });
  }
  return { workItems: store.workItems, notifications: store.notifications };
}

function required<T>(value: T | undefined): T {
  if (value === undefined) throw new BerthError('INTERNAL', 'the store lost its work items inside a transaction');
  return value;
}

/**
 * When the agent must have finished: the operation's deadline, or an undo's. A step asked for once
 * the operation's deadline has passed is run by a caller that goes on past it on purpose with a
 * budget of its own — recovery finishing a detach whose disconnect had started, reconcile's fixes
 * in a long run — and gets an undo's budget: handed the passed deadline, the agent would abort it
 * at once (the detach then left `error_detaching` by every recovery).
 */
async function deadlineOf(deps: RemoteHostStepsDeps, operationId: string, call: HostStepCall): Promise<string> {
  const budget = new Date(Date.now() + deps.undoTimeoutMs).toISOString();
  if (call.undo) return budget;
  const deadline = await deps.deadlines.of(deps.store, operationId);
  return deadline !== undefined && Date.parse(deadline) > Date.now() ? deadline : budget;
}

/**
 * The deadline passed while waiting: cancel the item (so no agent runs or reports it any more) and
 * say why, naming the host and whether the step may have run there. An item that finished just
 * before the cancel is returned as it is (the runner fails the step on its signal anyway and
 * undoes it, which is right: it ran).
 */
async function giveUp(deps: RemoteHostStepsDeps, host: AgentHost, item: WorkItem, step: string, call: HostStepCall): Promise<WorkItem> {
  const reason = toBerthError(call.signal.reason);
  const fresh = (await deps.store.hosts.get(host.id).catch(() => undefined))?.agent;
  const lastSeen = Date.parse(fresh?.lastSeenAt ?? host.agent.lastSeenAt);
  // Only what is known: when the agent was last heard from. "Online" would mislead — an agent is
  // called offline only after offlineAfterMs (45 s), longer than many a deadline.
  const silentMs = Number.isNaN(lastSeen) ? undefined : Math.max(0, Date.now() - lastSeen);
  const offline = silentMs === undefined || silentMs > deps.offlineAfterMs;
  const agentState = silentMs === undefined ? 'never heard from' : `last heard from ${Math.round(silentMs / 1000)} s ago`;
  let cancelled: WorkItem;
  try {
    cancelled = await required(deps.store.workItems).cancel(item.id, { code: reason.code, message: `cancelled: ${reason.message}` });
  } catch (error) {
    const current = await required(deps.store.workItems).get(item.id);
    if (current && (current.state === 'done' || current.state === 'failed')) return current;
    throw error;
  }
  const claimed = cancelled.attempts > 0;
  if (reason.code === 'CANCELLED') {
    // The caller cancelled (Ctrl-C), not the deadline: said as it is. An item taken back while
    // still pending (the compare-and-swap from `pending`) never ran: nothing was touched there.
    throw new BerthError('CANCELLED', `${reason.message} (host ${host.name}'s agent ${claimed ? `was running step ${step}` : `had not picked up step ${step}`})`, {
      details: { ...reason.details, hostId: host.id, step, workItemId: item.id, ranOnHost: claimed, ...(claimed ? {} : { untouched: true }) },
      cause: reason,
    });
  }
  const what = claimed ? `did not finish step ${step}` : `did not pick up step ${step}`;
  throw new BerthError('TIMEOUT', `host ${host.name}'s agent ${what} before the ${call.undo ? 'undo' : 'operation'}'s deadline (${agentState})`, {
    hint: `${offline ? `start \`berth agent\` on ${host.name}` : `check that \`berth agent\` runs on ${host.name} (start it if not; if it does, it is slow or stuck: see its log, and raise operationTimeoutMs if the step needs longer)`}${claimed ? `; the step may have run there: the agent undoes what is queued for it when it is back, and if the volume is still not as it should be then (\`berth volume show\`), \`berth detach <volume> --force\`` : ''}`,
    details: { hostId: host.id, step, workItemId: item.id, ranOnHost: claimed, ...(silentMs === undefined ? {} : { agentSilentMs: silentMs }) },
    cause: reason,
  });
}
