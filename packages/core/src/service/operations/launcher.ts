import { createDeadline, type Deadline } from '../../deadline.js';
import { BerthError, toBerthError } from '../../errors.js';
import type { Consumer } from '../../contracts/consumer.js';
import type { Attachment, Operation, Server, Volume } from '../../model.js';
import type { PipelineContext } from '../../pipeline/context.js';
import { markDetachFailed } from '../../pipeline/detach.js';
import { summarize, unsettledBy, type RunOutcome } from '../../pipeline/operation-runner.js';
import { isTakenOver, ownedFinish, takenOverError } from '../../pipeline/operation-fence.js';
import type { Step } from '../../pipeline/step.js';
import { withStoreRetry } from '../../pipeline/store-retry.js';
import type { OperationOutcome, StartedOperation } from '../../service.js';
import { withDeferredDurability, type Store } from '../../store.js';
import type { ServiceParts } from '../parts.js';

/** What an operation runs: its context and its steps. */
export interface PreparedRun {
  ctx: PipelineContext;
  steps: Array<Step<PipelineContext>>;
}

/** An attach or detach to journal and run. */
export interface LaunchRequest {
  kind: 'attach' | 'detach';
  volume: Volume;
  server: Server;
  attachment?: Attachment;
  idempotencyKey: string | undefined;
}

/**
 * Journals attach and detach operations and runs them under the volume lock and a deadline,
 * settling each in the store; keeps what this process knows of its own operations (in flight,
 * abandoned to recovery).
 */
export class OperationLauncher {
  private readonly inflight = new Map<string, Promise<OperationOutcome>>();
  /**
   * Operations of this process that could not be settled in the store (its writes kept failing):
   * recovery treats them as a dead process's, so the next `recover()` — at the next command's
   * start, or `berth reconcile` in a long-running server — finishes them.
   */
  private readonly abandoned = new Set<string>();
  /** Operations whose steps started running (the ones `track` must not call rolled back). */
  private readonly executing = new Set<string>();
  /** Per in-flight operation: fired when another replica took it over. */
  private readonly fences = new Map<string, AbortController>();
  /** Per in-flight operation: fired by its caller's `cancel` (Ctrl-C in the CLI). */
  private readonly cancels = new Map<string, { kind: 'attach' | 'detach'; controller: AbortController }>();
  /** As one of several replicas: the lease each new operation gets (renewed by the heartbeat). */
  private replicaLeaseMs: number | undefined;
  /** In-flight operations created with a lease (only those can be taken over, so fenced). */
  private readonly leased = new Set<string>();

  constructor(private readonly parts: ServiceParts) {}

  /** A retry with a used idempotency key gets the first operation back. */
  async replay(key: string | undefined): Promise<StartedOperation | undefined> {
    if (key === undefined) return undefined;
    const operation = await this.parts.store.operations.findByIdempotencyKey(key);
    if (!operation) return undefined;
    const running = this.inflight.get(operation.id);
    return { operation, done: running ?? this.settled(operation) };
  }

  /**
   * Journal a new operation, then run the steps `prepare` gives under the volume lock (queued,
   * never rejected) and a deadline that counts the wait for the lock too.
   */
  async launch(what: LaunchRequest, prepare: (operationId: string, signal: AbortSignal) => Promise<PreparedRun>): Promise<StartedOperation> {
    const { store, config, logger, owner } = this.parts;
    // Deferred-durable: the first steps of both pipelines are store-only, so the first durable
    // commit (the row that starts `initialize`, or a detach's `unpublish`) comes before anything
    // outside the store changes, and makes this row durable with it. A power cut before that loses
    // the operation with everything it did, which is nothing outside the store; an API client
    // that already holds its id then finds no such operation and retries (its idempotency key
    // is free again).
    const operation = await withDeferredDurability(store, () => withStoreRetry(() => store.operations.create({
      kind: what.kind,
      volumeId: what.volume.id,
      serverId: what.server.id,
      ...(what.attachment ? { attachmentId: what.attachment.id } : {}),
      hostId: what.attachment?.hostId ?? what.server.hostId,
      idempotencyKey: what.idempotencyKey ?? null,
      owner,
      deadlineAt: new Date(Date.now() + config.operationTimeoutMs).toISOString(),
      ...(this.replicaLeaseMs === undefined ? {} : { leaseMs: this.replicaLeaseMs }),
    }), { what: `recording the ${what.kind}`, budgetMs: config.operationTimeoutMs, logger }));
    const fence = new AbortController();
    this.fences.set(operation.id, fence);
    if (this.replicaLeaseMs !== undefined) this.leased.add(operation.id);
    const cancel = new AbortController();
    this.cancels.set(operation.id, { kind: what.kind, controller: cancel });
    // A takeover stops the run as its deadline would (the signal every step and wait follows). A
    // cancel stops the wait for the volume lock and the steps before the point of no return (the
    // runner's `cancel`), which then roll back as at a passed deadline; the preparation keeps the
    // deadline (its store, retried within it, serves the undos and the steps past that point too).
    const deadline = createDeadline(config.operationTimeoutMs, fence.signal);
    const done = this.track(
      operation.id,
      this.parts.volumeLocks.withLock(
        what.volume.id,
        () => this.execute(operation.id, what.kind, deadline, cancel.signal, () => prepare(operation.id, deadline.signal)),
        AbortSignal.any([deadline.signal, cancel.signal]),
      ),
    );
    return { operation, done };
  }

  /** The context of one run of the pipeline on `volume` and `server`, publishing with `consumer` (`serverConsumer`). */
  context(operationId: string, volume: Volume, server: Server, consumer: Consumer): PipelineContext {
    const { catalog } = this.parts;
    return {
      operationId,
      volume,
      server,
      consumer,
      backend: catalog.backend(volume.backend),
      forcedErrors: [],
      // With replica leases, every host step confirms the operation is still this process's.
      ...(this.leased.has(operationId) ? { owner: this.parts.owner } : {}),
    };
  }

  /** Give every operation launched from now on a lease of `leaseMs` (`berth serve` with other replicas). */
  useReplicaLeases(leaseMs: number): void {
    this.replicaLeaseMs = leaseMs;
  }

  /** Operations this process is running now that hold a lease (launched once replica leases were on). */
  leasedInflightIds(): string[] {
    return [...this.inflight.keys()].filter((id) => this.leased.has(id));
  }

  /**
   * Another replica took `operationId` over (its lease passed while this process could not renew
   * it): stop running it at once, write nothing more, undo nothing — the new owner does.
   */
  fence(operationId: string): void {
    const fence = this.fences.get(operationId);
    if (!fence || fence.signal.aborted) return;
    this.parts.logger.warn({ operationId }, 'another replica took this operation over; stopping it here');
    fence.abort(takenOverError(operationId));
  }

  /**
   * Cancel an operation this process runs, as its caller gave up on it, with CANCELLED (`reason`
   * says why): a queued one never starts; a running one stops where a passed deadline would stop
   * it and rolls back — an attach undoes what it did, a detach before its point of no return
   * too — but a detach past it (the device let go) finishes. Its promise settles once that is
   * done. False when it does not run here (or already ended).
   */
  cancel(operationId: string, reason: string): boolean {
    const entry = this.cancels.get(operationId);
    if (!entry || entry.controller.signal.aborted || !this.inflight.has(operationId)) return false;
    this.parts.logger.warn({ operationId, reason }, `${entry.kind} cancelled by its caller`);
    entry.controller.abort(
      new BerthError('CANCELLED', `the ${entry.kind} was cancelled: ${reason}`, { details: { operationId } }),
    );
    return true;
  }

  /** Whether this process is running `operationId` now (queued on its volume lock, or executing). */
  isRunning(operationId: string): boolean {
    return this.inflight.has(operationId);
  }

  /** Whether recovery may take an operation this process owns: it gave it up and it no longer runs. */
  isAbandoned(operationId: string): boolean {
    return this.abandoned.has(operationId) && !this.inflight.has(operationId);
  }

  /** Recovery could not finish `operationId` now (the database failed): the next `recover()` tries again. */
  abandon(operationId: string): void {
    this.abandoned.add(operationId);
  }

  /** Recovery finished an abandoned operation. */
  recovered(operationId: string): void {
    this.abandoned.delete(operationId);
  }

  /** Wait until every operation of this process has ended. */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()]);
  }

  /**
   * Run the steps `prepare` gives, journal the outcome and settle the operation. The operation is
   * called `rolled_back` only when its undos really ran; when its end cannot be written (the
   * store keeps failing), it stays `running` and is handed to recovery (`abandoned`).
   */
  private async execute(
    operationId: string,
    kind: 'attach' | 'detach',
    deadline: Deadline,
    cancel: AbortSignal,
    prepare: () => Promise<PreparedRun>,
  ): Promise<OperationOutcome> {
    const { store, config } = this.parts;
    const log = this.parts.logger.child({ operationId });
    this.executing.add(operationId);
    // With replica leases, the end is written only while the operation is still this process's.
    const owner = this.leased.has(operationId) ? this.parts.owner : undefined;
    const end = (settled: Parameters<Store['operations']['finish']>[1], before?: (tx: Store) => Promise<unknown>): Promise<Operation> =>
      ownedFinish(store, operationId, owner, settled, before);
    const settle = (what: string, fn: () => Promise<Operation>): Promise<Operation | undefined> =>
      withStoreRetry(fn, { what, signal: AbortSignal.timeout(config.undoTimeoutMs), logger: log }).catch((error: unknown) => {
        // Another replica owns it now and settles it; this process only tells its caller.
        if (isTakenOver(error)) throw error;
        this.abandoned.add(operationId);
        log.error({ err: toBerthError(error).message }, 'could not record how the operation ended; recovery will finish it');
        return undefined;
      });
    let ctx: PipelineContext;
    let steps: Array<Step<PipelineContext>>;
    try {
      ({ ctx, steps } = await prepare());
    } catch (raw) {
      // No step ran: nothing to undo.
      const error = toBerthError(raw);
      error.details.operationId = operationId;
      try {
        await settle('recording the failure', () => end({ state: 'rolled_back', error: summarize(error) }));
      } finally {
        deadline.dispose();
      }
      throw error;
    }
    try {
      const fenced = this.fences.get(operationId)?.signal;
      const outcome = await this.parts.runner.run(steps, ctx, {
        operationId,
        signal: deadline.signal,
        cancel,
        ...(fenced ? { fenced } : {}),
        ...(owner === undefined ? {} : { owner }),
        undoTimeoutMs: config.undoTimeoutMs,
        logger: log,
        faults: this.parts.faults,
        pipeline: kind,
      });
      // The steps are over: a cancel from now on changes nothing, and says so (`cancel` → false).
      this.cancels.delete(operationId);
      if (outcome.ok) {
        const warnings = outcome.journalErrors.map((e) => `the journal could not be written (${e.message}); the next berth command completes it`);
        const result = {
          timings: outcome.timings,
          ...(ctx.attachment ? { attachmentId: ctx.attachment.id } : {}),
          ...(ctx.device ?? ctx.attachment?.device ? { device: (ctx.device ?? ctx.attachment?.device)?.path } : {}),
          ...(ctx.publishedPath ? { publishedPath: ctx.publishedPath } : {}),
        };
        // An attach's timings go on its attachment in the same commit as the operation's end.
        const timed = kind === 'attach' ? ctx.attachment : undefined;
        const record = (): Promise<Operation> =>
          end(
            { state: 'succeeded', result },
            timed === undefined
              ? undefined
              : async (tx) => {
                  ctx.attachment = await tx.attachments.update(timed.id, { timings: outcome.timings });
                },
          );
        // The runner wrote the last step's end durably (attach `complete`, detach
        // `delete_attachment`): recovery already reads this operation as succeeded from it, so its
        // own end (and the attach's timings) may be deferred-durable. Not when a journal write
        // failed: then this row is the durable record of the outcome.
        let operation = await settle('recording success', () => (outcome.journalErrors.length === 0 ? withDeferredDurability(store, record) : record()));
        if (operation === undefined) {
          // The work is done and recorded; only the operation's row is behind.
          warnings.push('the operation could not be marked succeeded; the next berth command does it');
          operation = await store.operations.require(operationId).catch(() => undefined);
        }
        // The volume as the last step's commit stored it (complete, delete_attachment): nothing
        // of this operation wrote it since, so it is not read again.
        return {
          operation: operation ?? ({ id: operationId, kind, state: 'running' } as Operation),
          volume: ctx.volume,
          attachment: ctx.attachment,
          ...(warnings.length > 0 ? { warnings } : {}),
        };
      }
      if (outcome.fenced) {
        // The new owner settles it; this process only tells its caller.
        outcome.error.details.operationId = operationId;
        throw outcome.error;
      }
      // The database, not the host, stopped the rollback (or a detach past its point of no
      // return), or lost a step's commit after it may have taken effect: settling it would leave
      // its records half rolled back for good (a volume `reserved` by no operation). It stays
      // `running`, handed to recovery, which rolls back (or finishes the detach) from the journal
      // and the records once the database is back.
      const outage = unsettledBy(outcome);
      if (outage !== undefined) {
        this.abandoned.add(operationId);
        log.error({ err: outage.message }, outcome.unknown ? 'a step commit was lost with its connection; recovery will settle the operation' : 'the database failed during the rollback; recovery will finish it');
        const message = outage === outcome.error
          ? `${outcome.error.message} (the database failed before the ${kind} could finish or be rolled back)`
          : `${outcome.error.message} (and the database failed before the rollback could finish: ${outage.message})`;
        throw new BerthError(outcome.error.code, message, {
          hint: 'nothing is left half done for good: once the database is back, recovery (the next berth command, or another replica) finishes it',
          details: { ...outcome.error.details, operationId },
          cause: outcome.error,
        });
      }
      if (outcome.forward) await markDetachFailed(this.parts.deps, ctx, outcome.error).catch(() => undefined);
      const error = failureOf(outcome, ctx, operationId);
      const state = outcome.rolledBack ? 'rolled_back' : 'failed';
      const settled = await settle('recording the failure', () =>
        end({ state, error: summarize(error), result: { timings: outcome.timings } }),
      );
      if (settled === undefined) {
        throw new BerthError(error.code, `${error.message} (and the outcome could not be recorded)`, {
          hint: `${error.hint ? `${error.hint}; ` : ''}the next berth command (or \`berth reconcile\`) finishes what is left`,
          details: { ...error.details, operationId },
          cause: error,
        });
      }
      throw error;
    } finally {
      deadline.dispose();
    }
  }

  private track(operationId: string, running: Promise<OperationOutcome>): Promise<OperationOutcome> {
    // An operation that never reached its first step (cancelled or timed out while queued on the
    // volume lock) must not stay `running`; one that did is settled by `execute`.
    const promise = running.catch(async (raw: unknown) => {
      const error = toBerthError(raw);
      error.details.operationId ??= operationId;
      if (!this.executing.has(operationId) && !this.fences.get(operationId)?.signal.aborted) {
        await withStoreRetry(() => this.parts.store.operations.finish(operationId, { state: 'rolled_back', error: summarize(error) }), {
          what: 'recording the cancellation',
          budgetMs: this.parts.config.undoTimeoutMs,
        }).catch(() => this.abandoned.add(operationId));
      }
      throw error;
    });
    this.inflight.set(operationId, promise);
    const untrack = (): void => {
      this.inflight.delete(operationId);
      this.executing.delete(operationId);
      this.fences.delete(operationId);
      this.cancels.delete(operationId);
      this.leased.delete(operationId);
    };
    promise.then(untrack, untrack);
    return promise;
  }

  private async settled(operation: Operation): Promise<OperationOutcome> {
    if (operation.error) {
      throw new BerthError(operation.error.code as BerthError['code'], operation.error.message, {
        ...(operation.error.hint ? { hint: operation.error.hint } : {}),
        details: { operationId: operation.id },
      });
    }
    const volume = await this.parts.store.volumes.require(operation.volumeId ?? '');
    const attachment = operation.attachmentId ? await this.parts.store.attachments.get(operation.attachmentId) : undefined;
    return { operation, volume, attachment };
  }
}

/** The error a failed run ends with, its hint naming the command that works. */
function failureOf(outcome: Extract<RunOutcome, { ok: false }>, ctx: PipelineContext, operationId: string): BerthError {
  const name = ctx.volume.name;
  const finish = `berth detach ${name} --force`;
  let failed = outcome.error;
  // A forced detach that went past failed steps and then failed (its deadline, spent waiting on
  // them): what it went past is why — "passed its deadline" alone named neither the step nor the
  // host whose agent was cut off (a fault explorer).
  if (ctx.forcedErrors.length > 0 && failed.details.forcedErrors !== true) {
    failed = new BerthError(failed.code, `${failed.message} (the forced detach had gone past: ${ctx.forcedErrors.join('; ')})`, {
      ...(failed.hint === undefined ? {} : { hint: failed.hint }),
      details: { ...failed.details },
      cause: failed,
    });
  }
  // A host step's hint names the command for any volume: this one's name in it.
  const own = failed.hint?.replaceAll('berth detach <volume> --force', finish);
  let error = failed;
  if (outcome.undoErrors.length > 0) {
    error = new BerthError(failed.code, `${failed.message} (and the rollback failed: ${outcome.undoErrors.map((e) => e.message).join('; ')})`, {
      hint: `${own ? `${own}; then ` : ''}\`${finish}\` (or \`berth reconcile\`) removes what was left behind`,
      details: { ...failed.details },
      cause: failed,
    });
  } else if (outcome.forward) {
    // The step's own hint may already name the same command ("run it again"): said once.
    error = new BerthError(failed.code, `${failed.message}; the attachment is now error_detaching`, {
      hint: own === undefined ? `finish it with \`${finish}\` (or \`berth reconcile\`)` : own.includes(finish) ? own : `${own}; then finish it with \`${finish}\` (or \`berth reconcile\`)`,
      details: { ...failed.details },
      cause: failed,
    });
  }
  error.details.operationId = operationId;
  return error;
}
