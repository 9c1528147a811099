import { hostChannel } from '../agent-protocol.js';
import { BerthError, toBerthError } from '../errors.js';
import type { Operation } from '../model.js';
import { commandsEnded, DEAD_OWNER_KILL_MARGIN_MS } from '../owner.js';
import { isTakenOver } from '../pipeline/operation-fence.js';
import { finishFailedRecovery, recoverOperation, type RecoveryCause } from '../pipeline/recovery.js';
import type { RecoveryOutcome } from '../reports.js';
import type { OperationLauncher } from './operations/launcher.js';
import { recoveryDeps } from './operations/recover.js';
import type { ServiceParts } from './parts.js';
import { isStoreOutage } from '../store-errors.js';

/** The longest pause between two recoveries of one operation the database keeps deferring. */
const MAX_RETRY_PAUSE_MS = 60_000;
/** Operations one beat starts recovering, of those taken over and of its own orphans each. */
const ADOPT_PER_BEAT = 10;

/**
 * What keeps several API replicas sharing one store interchangeable (`berth serve`). Every
 * `replica.heartbeatMs` it:
 * 1. renews the lease of every operation this process owns (`operations.heartbeat`); one of its
 *    in-flight operations (launched before the renewal) missing from the answer whose row now
 *    names another owner was taken over while this one could not renew (a long pause, a lost
 *    database): its run is fenced — stopped, nothing more written or undone;
 * 2. takes over up to 10 operations whose lease passed (their replica died) and finishes them
 *    with the recovery rules, under the volume lock: an attach rolls back unless `complete` was
 *    done, a detach past `disconnect` goes forward;
 * 3. recovers (up to 10 a beat) the operations it owns but no longer runs: at once those its runs
 *    or recoveries gave up because the database failed under them (the beat's renewal just proved
 *    it answers again; one deferred again is retried after a growing pause, up to a minute), the
 *    others once their deadline and undo budget passed (their end could not be written here; the
 *    renewal would otherwise keep them `running` forever);
 * 4. puts back the work items whose agent lost its lease (`workItems.expire`) and wakes their
 *    hosts' agents.
 * Takeover bound: an operation of a dead replica is taken over at most `leaseMs + heartbeatMs`
 * (6 s + 2 s by default) after its last renewal, plus the recovery's own work.
 */
export class ReplicaMaintenance {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private readonly recovering = new Map<string, Promise<RecoveryOutcome | undefined>>();
  /**
   * Orphans recovery left as they are (made on another host root: only a berth on that root may
   * touch them; `berth doctor` names them). Asked once per process, not at every beat.
   */
  private readonly leftAlone = new Set<string>();
  /** Operations whose recovery the database deferred: when the next try is due, and the pause after it. */
  private readonly retries = new Map<string, { at: number; pauseMs: number }>();
  /** Why a takeover the database deferred was begun: its later recovery ends with the same reason. */
  private readonly deferredCause = new Map<string, { cause: RecoveryCause; from: string | null }>();

  constructor(
    private readonly parts: ServiceParts,
    private readonly launcher: OperationLauncher,
  ) {
    const { operations } = parts.store;
    if (!operations.heartbeat || !operations.claimExpired) {
      throw new BerthError('UNPROCESSABLE', 'this store cannot share operations between replicas (no operation leases)', {
        hint: 'run replicas on a shared store from @berth/store (PostgreSQL), or run one `berth serve`',
      });
    }
  }

  /** Start beating; operations launched from now on get a lease. Returns the function that stops it. */
  start(): () => Promise<void> {
    const { leaseMs, heartbeatMs } = this.parts.config.replica;
    this.launcher.useReplicaLeases(leaseMs);
    this.parts.deps.replicaLeases = { ttlMs: leaseMs, renewEveryMs: heartbeatMs };
    // A heartbeat is periodic by nature: the lease is only kept by renewing it.
    this.timer = setInterval(() => void this.beat(), heartbeatMs);
    this.timer.unref();
    void this.beat();
    return async () => {
      clearInterval(this.timer);
      this.timer = undefined;
      await this.running;
      await Promise.allSettled([...this.recovering.values()]);
    };
  }

  /** One beat (never two at once: a slow store skips a beat rather than piling them up). */
  beat(): Promise<void> {
    this.running ??= this.once().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async once(): Promise<void> {
    const { store, owner, logger, config } = this.parts;
    const { leaseMs } = config.replica;
    try {
      // Only runs in flight before the renewal was sent are checked against its answer: one
      // launched while it was under way is missing from it because its row was written after the
      // statement read the table, not because another replica took it (fencing it would leave it
      // `running`, renewed by this very beat, for no one to finish).
      const before = this.launcher.leasedInflightIds();
      const held = new Set(await store.operations.heartbeat!(owner, leaseMs));
      for (const id of before) if (!held.has(id) && (await this.takenOver(id))) this.launcher.fence(id);
      await this.adoptOrphans(held);
      const taken = await store.operations.claimExpired!(owner, leaseMs, ADOPT_PER_BEAT);
      // Recoveries run beside the beat: a long one must not stop the renewals.
      for (const operation of taken) {
        if (!this.recovering.has(operation.id)) this.recovering.set(operation.id, this.takeOver(operation, 'lease-expired'));
      }
      if (store.workItems && store.notifications) {
        const expired = await store.workItems.expire();
        for (const hostId of new Set(expired.map((i) => i.hostId))) await store.notifications.notify(hostChannel(hostId));
      }
    } catch (error) {
      logger.warn({ err: toBerthError(error).message }, 'replica heartbeat failed; retrying at the next beat');
    }
  }

  /**
   * The renewal keeps every `running` row this process owns alive, including one it no longer
   * runs (its end could not be written, or its run was stopped): no other replica would ever take
   * it over, so this one does, by the recovery rules. One that a run or a recovery of this process
   * gave up because the database failed (`abandoned`) is taken at once — the renewal that listed it
   * just proved the database answers, and its volume stays refused to every request until it is
   * settled; any other only once its deadline and undo budget have passed, when a run of this
   * process would have settled it: a row just written by a launch not yet in flight is never touched.
   */
  private async adoptOrphans(held: ReadonlySet<string>): Promise<void> {
    const { store, config, logger } = this.parts;
    const now = Date.now();
    // Settled by another way since (a `recover()`, a reconcile) or taken over by another replica:
    // not this replica's to retry any more.
    for (const id of this.retries.keys()) {
      if (held.has(id) || this.recovering.has(id)) continue;
      this.retries.delete(id);
      this.deferredCause.delete(id);
      this.launcher.recovered(id);
    }
    // At most as many at once as a beat takes over from dead replicas: a long outage may have
    // left many, and each recovery runs its host undos again.
    let started = 0;
    for (const id of held) {
      if (started >= ADOPT_PER_BEAT) break;
      if (this.launcher.isRunning(id) || this.recovering.has(id) || this.leftAlone.has(id)) continue;
      const abandoned = this.launcher.isAbandoned(id);
      if (abandoned && (this.retries.get(id)?.at ?? 0) > now) continue;
      const operation = await store.operations.get(id);
      if (operation?.state !== 'running') {
        this.retries.delete(id);
        this.deferredCause.delete(id);
        continue;
      }
      if (!abandoned && Date.parse(operation.deadlineAt) + config.undoTimeoutMs > now) continue;
      logger.warn(
        { operationId: id },
        abandoned
          ? 'an operation of this replica was left running when the database failed; recovering it now that the database answers'
          : 'an operation of this replica passed its deadline with no run left here; recovering it',
      );
      // Abandoned: this process runs on, the database failed under its run (unless a takeover of
      // a dead replica's operation was deferred by the outage: then its owner did stop).
      // A deferred takeover keeps naming the replica it was taken from.
      const deferred = this.deferredCause.get(id);
      this.recovering.set(id, this.takeOver(deferred ? { ...operation, previousOwner: deferred.from } : operation, abandoned ? (deferred?.cause ?? 'database-failed') : (deferred?.cause ?? 'orphaned')));
      started += 1;
    }
  }

  /**
   * Whether another replica owns `operationId` now: fencing stops a run for good, so it needs that
   * evidence, not just the operation's absence from a renewal (one that has just ended is absent too).
   */
  private async takenOver(operationId: string): Promise<boolean> {
    // A read that fails is no evidence: the next beat asks again.
    const operation = await this.parts.store.operations.get(operationId).catch(() => undefined);
    return operation !== undefined && operation.owner !== this.parts.owner;
  }

  /** Finish an operation a dead replica left, under its volume lock. */
  private async takeOver(operation: Operation & { previousOwner?: string | null }, cause: RecoveryCause): Promise<RecoveryOutcome | undefined> {
    const { store, logger, volumeLocks } = this.parts;
    const log = logger.child({ operationId: operation.id, takeover: true });
    // Who ran it: the claim's previous owner (the operation's owner is this replica now).
    const from = operation.previousOwner === undefined ? operation.owner : operation.previousOwner;
    log.warn({ from }, 'taking over an operation whose replica stopped renewing it');
    const recover = async (): Promise<RecoveryOutcome> => {
      try {
        // Which process the dead owner was is not known here (only its owner name): a
        // replica on this host SIGKILLed mid-step may have left a command running (its spawner
        // stays for it). Any dead process's commands on this host are waited for — none, unless a
        // berth died here in the last command timeout — so that no undo runs beside them.
        if (!(await commandsEnded(undefined, this.parts.config.commandTimeoutMs + DEAD_OWNER_KILL_MARGIN_MS))) {
          log.warn({ from }, 'a dead berth process\'s commands still run on this host; recovering beside them');
        }
        const current = await store.operations.require(operation.id);
        // Settled while this waited for the volume lock.
        if (current.state !== 'running') return { operationId: operation.id, kind: operation.kind, action: 'skipped', detail: `already ${current.state}` };
        // Fenced by this replica's ownership: frozen mid-recovery and taken over in turn, it stops at its first write.
        return await recoverOperation(recoveryDeps(this.parts), current, log, this.parts.owner, cause, from);
      } catch (error) {
        if (isTakenOver(error)) return { operationId: operation.id, kind: operation.kind, action: 'skipped', detail: 'another replica took it over in turn' };
        const e = toBerthError(error);
        // The database failed under it: not settled. Still this replica's and renewed by its
        // heartbeat, it is taken up again by `adoptOrphans` at a later beat.
        if (isStoreOutage(e)) return { operationId: operation.id, kind: operation.kind, action: 'deferred', detail: `the database failed (${e.message}); it stays running and is recovered again` };
        await finishFailedRecovery(store, operation.id, this.parts.owner, { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) }).catch(() => undefined);
        return { operationId: operation.id, kind: operation.kind, action: 'failed', detail: e.message };
      }
    };
    let outcome: RecoveryOutcome | undefined;
    try {
      outcome = operation.volumeId ? await volumeLocks.withLock(operation.volumeId, recover) : await recover();
      log.warn({ action: outcome.action, detail: outcome.detail }, 'took over an operation');
      // Skipped while still running: not this process's to finish (another host root).
      if (outcome.action === 'skipped' && (await store.operations.get(operation.id).catch(() => undefined))?.state === 'running') this.leftAlone.add(operation.id);
      return outcome;
    } finally {
      if (outcome?.action === 'deferred') {
        // Still this replica's and renewed: a later beat tries again, each time after a longer pause.
        const pauseMs = this.retries.get(operation.id)?.pauseMs ?? this.parts.config.replica.heartbeatMs;
        this.retries.set(operation.id, { at: Date.now() + pauseMs, pauseMs: Math.min(pauseMs * 2, MAX_RETRY_PAUSE_MS) });
        this.launcher.abandon(operation.id);
        this.deferredCause.set(operation.id, { cause, from });
      } else {
        this.deferredCause.delete(operation.id);
        this.retries.delete(operation.id);
        this.launcher.recovered(operation.id);
      }
      this.recovering.delete(operation.id);
    }
  }
}
