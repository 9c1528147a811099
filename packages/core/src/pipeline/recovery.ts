import { BerthError, toBerthError } from '../errors.js';
import type { Connector, Device } from '../connection.js';
import type { Consumer } from '../contracts/consumer.js';
import type { Logger } from '../logger.js';
import type { Operation } from '../model.js';
import type { FaultInjector } from '../faults.js';
import { attachSteps } from './attach.js';
import type { PipelineContext, PipelineDeps } from './context.js';
import { detachSteps, markDetachFailed } from './detach.js';
import { summarize, type OperationRunner } from './operation-runner.js';
import type { Step } from './step.js';

/** What recovery did with one unfinished operation. */
export interface RecoveryOutcome {
  operationId: string;
  kind: string;
  action: 'completed' | 'rolled_back' | 'resumed' | 'failed' | 'skipped';
  detail: string;
}

/** What recovery needs besides the pipeline's dependencies. */
export interface RecoveryDeps extends PipelineDeps {
  runner: OperationRunner;
  consumer: () => Consumer;
  owner: string;
  hostname: string;
  undoTimeoutMs: number;
  faults?: FaultInjector;
}

/** Whether the process named by an owner (`pid@host`) may still be running the operation. */
export function ownerAlive(owner: string | null, hostname: string, self: string): boolean {
  if (owner === null) return false;
  if (owner === self) return true;
  const at = owner.indexOf('@');
  const pid = Number(owner.slice(0, at));
  const host = owner.slice(at + 1);
  // Another host's agent owns it: only that agent may recover it.
  if (host !== hostname) return true;
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const INTERRUPTED = (op: Operation): BerthError =>
  new BerthError('CANCELLED', `the process running this ${op.kind} (${op.owner ?? 'unknown'}) stopped before it finished`, {
    hint: 'recovery put everything back as it was; run the command again',
    details: { operationId: op.id },
  });

/** Steps of `pipeline` whose `do` row exists (done or cut short), minus those already undone. */
function touched(op: Operation, names: readonly string[]): Set<string> {
  const started = new Set(op.steps.filter((s) => s.phase === 'do').map((s) => s.name));
  const undone = new Set(op.steps.filter((s) => s.phase === 'undo' && s.state === 'done').map((s) => s.name));
  return new Set(names.filter((n) => started.has(n) && !undone.has(n)));
}

function stepDone(op: Operation, name: string): boolean {
  return op.steps.some((s) => s.phase === 'do' && s.name === name && s.state === 'done');
}

function journalData(op: Operation, name: string): Record<string, unknown> | undefined {
  return op.steps.find((s) => s.phase === 'do' && s.name === name && s.data !== null)?.data ?? undefined;
}

/**
 * Finish an operation whose process died. The rules (one per step, see core's README):
 * - attach, `complete` done → it succeeded; otherwise every started step is undone, newest first
 *   (the one cut short too: every undo is idempotent), so the volume is `available` again.
 * - detach, `disconnect` started → resumed forward (disconnect again, terminate, delete the
 *   attachment): the device may already be gone, so going back would be a lie; otherwise rolled
 *   back (roll_detaching: attached again, link restored).
 */
export async function recoverOperation(deps: RecoveryDeps, op: Operation, logger: Logger): Promise<RecoveryOutcome> {
  const outcome = (action: RecoveryOutcome['action'], detail: string): RecoveryOutcome => ({ operationId: op.id, kind: op.kind, action, detail });
  if (op.kind !== 'attach' && op.kind !== 'detach') {
    await deps.store.operations.finish(op.id, { state: 'failed', error: summarize(INTERRUPTED(op)) });
    return outcome('failed', `${op.kind} operations are not resumable`);
  }
  const volume = op.volumeId ? await deps.store.volumes.get(op.volumeId) : undefined;
  const server = op.serverId ? await deps.store.servers.get(op.serverId) : undefined;
  if (!volume || !server) {
    await deps.store.operations.finish(op.id, { state: 'failed', error: summarize(INTERRUPTED(op)) });
    return outcome('failed', 'its volume or server no longer exists');
  }
  const attachment = op.attachmentId ? await deps.store.attachments.get(op.attachmentId) : undefined;
  const connector = (attachment?.connector ?? (journalData(op, 'connector')?.connector as Connector | undefined)) ?? undefined;
  const transportName = attachment?.transport ?? (journalData(op, 'initialize')?.transport as string | undefined);
  const ctx: PipelineContext = {
    operationId: op.id,
    volume,
    server,
    consumer: deps.consumer(),
    backend: deps.catalog.backend(volume.backend),
    forcedErrors: [],
    ...(attachment ? { attachment } : {}),
    ...(connector ? { connector } : {}),
    // Secrets were never stored: the redacted connection_info is enough to disconnect.
    ...(attachment?.connectionInfo ? { connection: attachment.connectionInfo } : {}),
    ...(transportName ? { transport: deps.catalog.transport(transportName) } : {}),
    ...(attachment?.device ? { device: attachment.device as Device } : {}),
  };
  const options = { operationId: op.id, signal: AbortSignal.timeout(deps.undoTimeoutMs), undoTimeoutMs: deps.undoTimeoutMs, logger, pipeline: op.kind };

  if (op.kind === 'attach') {
    // `complete` is one transaction: the attachment's status says whether it committed, even
    // when the process died before the journal row was closed.
    if (stepDone(op, 'complete') || attachment?.status === 'attached') {
      await deps.store.operations.finish(op.id, { state: 'succeeded', result: { recovered: true } });
      return outcome('completed', 'it had completed; only its journal was unfinished');
    }
    const steps = attachSteps(deps, { mode: attachment?.mode ?? 'rw' });
    const names = touched(op, steps.map((s) => s.name));
    const toUndo = steps.filter((s) => names.has(s.name)).reverse();
    return rollBack(deps, op, ctx, toUndo, options, outcome);
  }

  if (op.attachmentId && !attachment && op.steps.some((s) => s.phase === 'do' && s.name === 'delete_attachment')) {
    await deps.store.operations.finish(op.id, { state: 'succeeded', result: { recovered: true } });
    return outcome('completed', 'the attachment was already deleted; only its journal was unfinished');
  }
  const steps = detachSteps(deps);
  const disconnectStarted = op.steps.some((s) => s.phase === 'do' && s.name === 'disconnect');
  if (disconnectStarted && attachment) {
    const forward = steps.slice(steps.findIndex((s) => s.name === 'disconnect')).filter((s) => !stepDone(op, s.name) || s.name === 'disconnect');
    const result = await deps.runner.run(forward, { ...ctx, force: true }, options);
    if (result.ok) {
      await deps.store.operations.finish(op.id, { state: 'succeeded', result: { recovered: true, timings: result.timings } });
      return outcome('resumed', 'the device was being disconnected: the detach was finished');
    }
    await markDetachFailed(deps, ctx, result.error).catch(() => undefined);
    await deps.store.operations.finish(op.id, { state: 'failed', error: summarize(result.error) });
    return outcome('failed', `resuming the detach failed: ${result.error.message}`);
  }
  const names = touched(op, steps.map((s) => s.name));
  const toUndo = steps.filter((s) => names.has(s.name)).reverse();
  return rollBack(deps, op, ctx, toUndo, options, outcome);
}

async function rollBack(
  deps: RecoveryDeps,
  op: Operation,
  ctx: PipelineContext,
  steps: Array<Step<PipelineContext>>,
  options: Parameters<OperationRunner['undo']>[2],
  outcome: (action: RecoveryOutcome['action'], detail: string) => RecoveryOutcome,
): Promise<RecoveryOutcome> {
  const errors = await deps.runner.undo(steps, ctx, options);
  const error = INTERRUPTED(op);
  if (errors.length === 0) {
    await deps.store.operations.finish(op.id, { state: 'rolled_back', error: summarize(error) });
    return outcome('rolled_back', `undid ${steps.map((s) => s.name).join(', ') || 'nothing'}`);
  }
  const message = `${error.message}; rolling back failed: ${errors.map((e) => toBerthError(e).message).join('; ')}`;
  await deps.store.operations.finish(op.id, { state: 'failed', error: { code: error.code, message, hint: 'run `berth reconcile`' } });
  return outcome('failed', message);
}
