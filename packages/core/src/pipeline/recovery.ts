import { BerthError, toBerthError } from '../errors.js';
import type { Connector, Device } from '../connection.js';
import type { Consumer } from '../contracts/consumer.js';
import type { Logger } from '../logger.js';
import type { Attachment, AttachmentStatus, ErrorSummary, Host, Operation, Server } from '../model.js';
import type { Store } from '../store.js';
import { isStoreOutage } from '../store-errors.js';
import type { FaultInjector } from '../faults.js';
import { attachSteps } from './attach.js';
import { isGuestServer, recomputeVolume, type PipelineContext, type PipelineDeps } from './context.js';
import { hostRootMismatch, hostRootSkip, type HostRootMismatch } from './host-root.js';
import { detachSteps, markDetachFailed } from './detach.js';
import { summarize, type OperationRunner } from './operation-runner.js';
import { isTakenOver, ownedFinish, ownedHostSteps, ownedTransaction } from './operation-fence.js';
import type { RecoveryOutcome } from '../reports.js';
import type { Step } from './step.js';


/** What recovery needs besides the pipeline's dependencies. */
export interface RecoveryDeps extends PipelineDeps {
  runner: OperationRunner;
  /** The consumer of a server (its hypervisor's): the undo of a publish goes back through it. */
  consumer: (server: Server, host?: Host) => Consumer;
  undoTimeoutMs: number;
  faults?: FaultInjector;
}

export { ownerAlive } from '../owner.js';

/**
 * The attachment an attach operation's reserve made, when the operation does not name it: a
 * database written by an older berth, which linked the two in a second write that a crash could
 * miss. It is the attachment of the same volume and server, still in an attach state, made once
 * the operation had started, that no other operation names.
 */
export async function findReservation(store: Store, op: Operation): Promise<Attachment | undefined> {
  if (op.kind !== 'attach' || op.attachmentId !== null || op.volumeId === null || op.serverId === null) return undefined;
  if (!op.steps.some((s) => s.phase === 'do' && s.name === 'reserve')) return undefined;
  const named = new Set((await store.operations.list({ volumeId: op.volumeId })).map((o) => o.attachmentId).filter((id): id is string => id !== null));
  const candidates = (await store.attachments.list({ volumeId: op.volumeId, serverId: op.serverId })).filter(
    (a) => !named.has(a.id) && ['reserved', 'attaching', 'error_attaching'].includes(a.status) && a.createdAt >= op.startedAt,
  );
  return candidates.length === 1 ? candidates[0] : undefined;
}

/**
 * Cancel the operation's host steps still waiting for, or held by, an agent: the process that
 * waited for them is gone, and a returning agent must not act on them while they are undone or
 * resumed. A cancelled item that was claimed counts as run (`ran`), so its undo still happens.
 */
async function cancelWorkItems(deps: RecoveryDeps, op: Operation, owner: string | undefined, cause: RecoveryCause): Promise<void> {
  if (!deps.store.workItems) return;
  const message =
    cause === 'lease-expired'
      ? `the process running this ${op.kind} stopped renewing its lease; ${owner === undefined ? 'another replica' : `replica ${owner}`} took it over`
      : cause === 'database-failed'
        ? `the database failed under this ${op.kind}; recovery took it over`
        : cause === 'orphaned'
          ? `this ${op.kind}'s run ended without settling it; its own process recovered it`
          : `the process running this ${op.kind} stopped; recovery took it over`;
  const reason = { code: 'CANCELLED', message };
  if (owner === undefined) {
    const open = await deps.store.workItems.list({ operationId: op.id, state: ['pending', 'claimed'] });
    for (const item of open) await deps.store.workItems.cancel(item.id, reason).catch(() => undefined);
    return;
  }
  // A replica's takeover: only while the operation is still this replica's, in one commit. One
  // frozen before this line and taken over in turn must not cancel the items (the undos) of the
  // replica that owns the operation now.
  try {
    await ownedTransaction(deps.store, op.id, owner, async (tx) => {
      const open = (await tx.workItems?.list({ operationId: op.id, state: ['pending', 'claimed'] })) ?? [];
      for (const item of open) await tx.workItems?.cancel(item.id, reason);
    });
  } catch (error) {
    if (isTakenOver(error)) throw error;
    // As above: cancelling is best effort (an item that ended meanwhile is left as it ended).
  }
}

/**
 * Why an operation is being recovered, for the error it ends with: `stopped` — the process that
 * ran it is known to be dead (a process of this host that no longer runs; the default);
 * `lease-expired` — another replica took it over because its owner stopped renewing its lease:
 * that owner died, was paused, or could not reach the database (a table lock held past the lease
 * blocks a live replica's renewals just the same), so it may well still run — fenced, it writes
 * nothing more for the operation; `database-failed` — the process running it is alive (the
 * recovering one), but the database failed under the run, which gave the operation up until the
 * database answered again.
 */
/**
 * Why an operation is recovered: the process running it `stopped` (died), stopped renewing its
 * lease (`lease-expired`: another replica takes it over), the database failed under its run
 * (`database-failed`), or its own process, still running, holds it with no run left (`orphaned`:
 * the run ended without its end being written — a write refused, a run stopped — and the replica
 * recovers it once its deadline passed).
 */
export type RecoveryCause = 'stopped' | 'lease-expired' | 'database-failed' | 'orphaned';

/** How the recovery ended the operation, for its error: undone (`rolled_back`), ended `failed` without undoing, or its undo failed. */
type RecoveryEnd = 'undone' | 'ended' | 'undo-failed';

/**
 * The error a recovered operation ends with. `ranIn` is the process that ran it (the one that
 * stopped or stopped renewing), `by` the one that recovered it (a replica's takeover names it).
 */
export function interruptedError(op: Operation, cause: RecoveryCause, ranIn: string | null, by: string | undefined, end: RecoveryEnd): BerthError {
  const details = { operationId: op.id, cause, previousOwner: ranIn, ...(by === undefined ? {} : { recoveredBy: by }) };
  if (cause === 'database-failed') {
    return new BerthError('CANCELLED', `the database failed while this ${op.kind} ran (in ${ranIn ?? 'unknown'}, which kept running); it was undone once the database answered again`, {
      hint: 'no berth process stopped: recovery put everything back as it was once the database was back; run the command again',
      details,
    });
  }
  if (cause === 'lease-expired') {
    const replica = by === undefined ? 'another replica' : `replica ${by}`;
    return new BerthError(
      'CANCELLED',
      `the process running this ${op.kind} (${ranIn ?? 'unknown'}) stopped renewing its lease before it finished (it died, was paused, or could not reach the database); ${replica} took the ${op.kind} over${end === 'undone' ? ' and undid it' : end === 'ended' ? ' and ended it' : ''}`,
      {
        hint:
          end === 'undone'
            ? `everything was put back as it was; if ${ranIn ?? 'that process'} still runs, it was fenced and does nothing more for this ${op.kind}; run the command again`
            : `if ${ranIn ?? 'that process'} still runs, it was fenced and does nothing more for this ${op.kind}; run the command again`,
        details,
      },
    );
  }
  if (cause === 'orphaned') {
    return new BerthError('CANCELLED', `this ${op.kind} was held by ${ranIn ?? 'a running berth process'} with no run of it left there (its end could not be written, or its run or recovery was stopped); that process recovered it after its deadline${end === 'undone' ? ' and undid it' : end === 'ended' ? ' and ended it' : ''}`, {
      hint: end === 'undone' ? 'everything was put back as it was; run the command again' : 'run the command again',
      details,
    });
  }
  return new BerthError('CANCELLED', `the process running this ${op.kind} (${ranIn ?? 'unknown'}) stopped before it finished`, {
    hint: end === 'undone' ? 'recovery put everything back as it was; run the command again' : 'run the command again',
    details,
  });
}

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
 * Whether `op` must be left for another berth: its host steps run in this process (the server's
 * host is this one) on a transport that runs on another host root here than the one the
 * operation connected on (recorded on its attachment, or journalled by `initialize` before the
 * attachment had it). Undoing or resuming it here would act on the wrong kernel — a real logout
 * "undoing" a simulated login, a simulated session left up —, so nothing is run and the
 * operation is left as it is for a berth on that root. Roots are compared, nothing else.
 */
export async function foreignHostRoot(deps: Pick<PipelineDeps, 'store' | 'catalog' | 'localHost'>, op: Operation): Promise<HostRootMismatch | undefined> {
  if (op.kind !== 'attach' && op.kind !== 'detach') return undefined;
  const attachment = op.attachmentId ? await deps.store.attachments.get(op.attachmentId) : await findReservation(deps.store, op);
  const initialized = journalData(op, 'initialize');
  const transport = attachment?.transport ?? (initialized?.transport as string | undefined) ?? null;
  const recorded = attachment?.hostRoot ?? (typeof initialized?.hostRoot === 'string' ? initialized.hostRoot : null);
  if (transport === null || recorded === null) return undefined;
  const hostId = attachment?.hostId ?? op.hostId;
  if (hostId !== null && hostId !== (await deps.localHost()).id) return undefined;
  const subject = attachment ? `the ${op.kind} ${op.id} of attachment ${attachment.id}` : `the ${op.kind} ${op.id}`;
  return hostRootMismatch({ id: attachment?.id ?? op.id, transport, hostRoot: recorded }, (t) => deps.catalog.transportHostRoot(t), subject);
}

/**
 * Finish an operation whose process died. The rules (one per step, see core's README):
 * - attach, `complete` done → it succeeded; otherwise every started step is undone, newest first
 *   (the one cut short too: every undo is idempotent), so the volume is `available` again.
 * - detach, `disconnect` started → resumed forward (disconnect again, terminate, delete the
 *   attachment): the device may already be gone, so going back would be a lie; otherwise rolled
 *   back (roll_detaching: attached again, link restored).
 */
export async function recoverOperation(
  deps: RecoveryDeps,
  op: Operation,
  logger: Logger,
  owner?: string,
  cause: RecoveryCause = 'stopped',
  // The process that ran it, when the caller took it over before (the owner CAS writes the
  // recovering process over it): the error names the one that stopped, not the recovering one.
  ranIn: string | null = op.owner,
): Promise<RecoveryOutcome> {
  // A replica's takeover passes its `owner`: every journal write, host step and end of the
  // recovery is then fenced as a run's is, so a survivor frozen mid-recovery and taken over in
  // turn stops at its first write (`takenOverError`) instead of settling what a third one owns.
  // The journal rows the run (or an earlier recovery) left `running` are closed with the end:
  // a finished operation shows no step still running (a takeover's fleet run, 2026-12-07: a
  // `rolled_back` attach whose cut-short `publish` row still read `running`).
  const finish: Finish = (settled, cutShort = 'failed') =>
    ownedFinish(deps.store, op.id, owner, settled, (tx) => closeCutShortRows(tx, op.id, cutShort, cutShortError(cause, ranIn, owner)));
  const outcome = (action: RecoveryOutcome['action'], detail: string): RecoveryOutcome => ({ operationId: op.id, kind: op.kind, action, detail });
  // Whoever calls: an operation of another host root is never undone nor resumed here.
  const elsewhere = await foreignHostRoot(deps, op);
  if (elsewhere) return outcome('skipped', hostRootSkip(elsewhere));
  if (op.kind !== 'attach' && op.kind !== 'detach') {
    await finish({ state: 'failed', error: summarize(interruptedError(op, cause, ranIn, owner, 'ended')) });
    return outcome('failed', `${op.kind} operations are not resumable`);
  }
  const volume = op.volumeId ? await deps.store.volumes.get(op.volumeId) : undefined;
  const server = op.serverId ? await deps.store.servers.get(op.serverId) : undefined;
  if (!volume || !server) {
    await finish({ state: 'failed', error: summarize(interruptedError(op, cause, ranIn, owner, 'ended')) });
    return outcome('failed', 'its volume or server no longer exists');
  }
  const attachment = op.attachmentId ? await deps.store.attachments.get(op.attachmentId) : await findReservation(deps.store, op);
  if (attachment && op.attachmentId === null) await deps.store.operations.setAttachment(op.id, attachment.id);
  const connector = (attachment?.connector ?? (journalData(op, 'connector')?.connector as Connector | undefined)) ?? undefined;
  const transportName = attachment?.transport ?? (journalData(op, 'initialize')?.transport as string | undefined);
  // Past `dispatch` the host steps to undo or resume run where the server is (this process, or
  // the host's agent); a host nobody can run them on fails the recovery with that reason.
  const dispatched = op.steps.some((s) => s.phase === 'do' && s.name === 'dispatch');
  const hostSteps = dispatched ? ownedHostSteps(await deps.hostSteps(server.hostId), owner) : undefined;
  await cancelWorkItems(deps, op, owner, cause);
  const ctx: PipelineContext = {
    operationId: op.id,
    ...(owner === undefined ? {} : { owner }),
    ...(hostSteps ? { steps: hostSteps, host: hostSteps.host } : {}),
    volume,
    server,
    // The server's own consumer: a guest's disk is unplugged from that guest before the host lets go.
    consumer: deps.consumer(server, hostSteps?.host ?? (await deps.store.hosts.get(server.hostId))),
    backend: deps.catalog.backend(volume.backend),
    forcedErrors: [],
    // A detach's unpublish that kept the volume's name for a sharer: its resumed disconnect removes
    // it if it is the device's last user (an attach's undo learns it again from its publish undo).
    ...(op.kind === 'detach' && journalData(op, 'unpublish')?.stillShared === true ? { volumeNameKept: true } : {}),
    // A guest's unplug cut short: the request may be pending in the guest (its undo looks).
    ...(op.kind === 'detach' && isGuestServer({ server }) && op.steps.some((s) => s.phase === 'do' && s.name === 'unpublish') && !stepDone(op, 'unpublish')
      ? { unpublishOutcomeUnknown: true }
      : {}),
    ...(attachment ? { attachment } : {}),
    ...(connector ? { connector } : {}),
    // Secrets were never stored: the redacted connection_info is enough to disconnect.
    ...(attachment?.connectionInfo ? { connection: attachment.connectionInfo } : {}),
    ...(transportName ? { transport: transportName } : {}),
    ...(attachment?.device ? { device: attachment.device as Device } : {}),
  };
  const options = { operationId: op.id, signal: AbortSignal.timeout(deps.undoTimeoutMs), undoTimeoutMs: deps.undoTimeoutMs, logger, pipeline: op.kind, ...(owner === undefined ? {} : { owner }) };

  if (op.kind === 'attach') {
    // `complete` is one transaction: the attachment's status says whether it committed, even
    // when the process died before the journal row was closed.
    if (stepDone(op, 'complete') || attachment?.status === 'attached') {
      await recomputeVolume(deps.store, volume.id);
      await finish({ state: 'succeeded', result: { recovered: true } }, 'done');
      return outcome('completed', 'it had completed; only its journal was unfinished');
    }
    const steps = attachSteps(deps, { mode: attachment?.mode ?? 'rw' });
    const names = touched(op, steps.map((s) => s.name));
    const toUndo = steps.filter((s) => names.has(s.name)).reverse();
    return rollBack(deps, op, ctx, toUndo, options, outcome, finish, cause, ranIn, owner);
  }

  if (op.attachmentId && !attachment && op.steps.some((s) => s.phase === 'do' && s.name === 'delete_attachment')) {
    // A database written by an older berth deleted the attachment and recomputed the volume in two
    // writes: the volume may still say `detaching`.
    await recomputeVolume(deps.store, volume.id);
    await finish({ state: 'succeeded', result: { recovered: true } }, 'done');
    return outcome('completed', 'the attachment was already deleted; only its journal was unfinished');
  }
  // Rolled back, the attachment goes back to what it was (an `error_detaching` one is not made `attached`).
  const from = journalData(op, 'begin_detaching')?.from;
  const steps = detachSteps(deps, typeof from === 'string' ? { from: from as AttachmentStatus } : {});
  const disconnectStarted = op.steps.some((s) => s.phase === 'do' && s.name === 'disconnect');
  // Undos journalled: the run had decided to roll back (its disconnect refused without touching
  // anything: a holder found first) and died, or lost the database, before it was settled. Resumed
  // forward with force, recovery would let go of the very device the refusal protected.
  const rollingBack = op.steps.some((s) => s.phase === 'undo');
  if (disconnectStarted && attachment && !rollingBack) {
    const forward = steps.slice(steps.findIndex((s) => s.name === 'disconnect')).filter((s) => !stepDone(op, s.name) || s.name === 'disconnect');
    const result = await deps.runner.run(forward, { ...ctx, force: true }, options);
    // Taken over in turn: the replica that owns it now finishes it.
    if (!result.ok && result.fenced) throw result.error;
    // The database failed under it: left running, the next recovery resumes it again.
    if (!result.ok) throwOutage(result.error, ...result.undoErrors);
    await recomputeVolume(deps.store, volume.id).catch(() => undefined);
    if (result.ok) {
      await finish({ state: 'succeeded', result: { recovered: true, timings: result.timings } });
      return outcome('resumed', 'the device was being disconnected: the detach was finished');
    }
    await markDetachFailed(deps, ctx, result.error).catch(() => undefined);
    await finish({ state: 'failed', error: summarize(result.error) });
    return outcome('failed', `resuming the detach failed: ${result.error.message}`);
  }
  const names = touched(op, steps.map((s) => s.name));
  const toUndo = steps.filter((s) => names.has(s.name)).reverse();
  return rollBack(deps, op, ctx, toUndo, options, outcome, finish, cause, ranIn, owner);
}

/**
 * Write how a recovered operation ended (fenced by its owner's confirmation when it has one),
 * closing in the same transaction every journal row still `running`: `failed` with the reason it
 * was cut short (its step is undone, or run again in a row of its own), or `done` where recovery
 * found that its work had committed (`cutShort`).
 */
type Finish = (settled: Parameters<Store['operations']['finish']>[1], cutShort?: 'done' | 'failed') => Promise<Operation>;

/** Why a row the interrupted run left `running` was cut short. */
function cutShortError(cause: RecoveryCause, ranIn: string | null, by: string | undefined): ErrorSummary {
  const who = ranIn ?? 'the process running it';
  const message =
    cause === 'database-failed'
      ? 'cut short: the database failed under it; recovery took the operation over'
      : cause === 'lease-expired'
        ? `cut short: ${who} stopped renewing the operation's lease; ${by === undefined ? 'another replica' : `replica ${by}`} took the operation over`
        : cause === 'orphaned'
          ? `cut short: no run of the operation was left in ${who}, which holds it; that process recovered it`
          : `cut short: ${who} stopped; recovery took the operation over`;
  return { code: 'CANCELLED', message };
}

/**
 * Settle `failed` an operation whose recovery itself failed — not for a database outage, which
 * leaves it running for the next recovery — closing in the same transaction its journal rows still
 * `running` (a finished operation shows no step running). Fenced by `owner` when it has one.
 */
export function finishFailedRecovery(store: Store, operationId: string, owner: string | undefined, error: ErrorSummary): Promise<Operation> {
  return ownedFinish(store, operationId, owner, { state: 'failed', error }, (tx) =>
    closeCutShortRows(tx, operationId, 'failed', { code: 'CANCELLED', message: `cut short: its recovery failed: ${error.message}` }),
  );
}

/** Close the rows of `operationId`'s journal still `running` (in the transaction that ends it). */
async function closeCutShortRows(tx: Store, operationId: string, state: 'done' | 'failed', error: ErrorSummary): Promise<void> {
  const current = await tx.operations.require(operationId);
  for (const row of current.steps) {
    if (row.state !== 'running') continue;
    await tx.operations.endStep(operationId, row.seq, state === 'done' ? { state } : { state, error });
  }
}

async function rollBack(
  deps: RecoveryDeps,
  op: Operation,
  ctx: PipelineContext,
  steps: Array<Step<PipelineContext>>,
  options: Parameters<OperationRunner['undo']>[2],
  outcome: (action: RecoveryOutcome['action'], detail: string) => RecoveryOutcome,
  finish: Finish,
  cause: RecoveryCause,
  ranIn: string | null,
  owner: string | undefined,
): Promise<RecoveryOutcome> {
  const errors = await deps.runner.undo(steps, ctx, options);
  // The database failed under an undo: left running, the next recovery runs the undos again.
  throwOutage(...errors);
  // Whatever the undos did, the volume's status follows its attachments (an older berth could die
  // between two writes and leave it saying `detaching` with no attachment left).
  await recomputeVolume(deps.store, ctx.volume.id).catch(() => undefined);
  const error = interruptedError(op, cause, ranIn, owner, errors.length === 0 ? 'undone' : 'undo-failed');
  if (errors.length === 0) {
    await finish({ state: 'rolled_back', error: summarize(error) });
    return outcome('rolled_back', `undid ${steps.map((s) => s.name).join(', ') || 'nothing'}`);
  }
  const message = `${error.message}; rolling back failed: ${errors.map((e) => toBerthError(e).message).join('; ')}`;
  await finish({
    state: 'failed',
    error: {
      code: error.code,
      message,
      // A guest that may still drop the disk: --force refuses while it holds it; a plain detach finishes once it let go.
      hint:
        ctx.unplugMayBePending === true
          ? `once the guest let go, \`berth detach ${ctx.volume.name}\` (or \`berth reconcile\`) finishes it`
          : `\`berth reconcile\` finishes it (or \`berth detach ${ctx.volume.name} --force\`)`,
    },
  });
  return outcome('failed', message);
}

/**
 * Throw the first error that says the database failed (`isStoreOutage`): the operation is then
 * not settled — its callers leave it `running` (`deferred`) for the next recovery, which runs its
 * undos or its detach again from the journal. Settled `failed`, its records would stay half
 * rolled back for good (a volume `reserved` by no operation: a fleet fault run, 2026-12-05).
 */
function throwOutage(...errors: unknown[]): void {
  const outage = errors.find(isStoreOutage);
  if (outage !== undefined) throw outage;
}
