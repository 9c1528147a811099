import { hostChannel } from '../agent-protocol.js';
import { BerthError, toBerthError } from '../errors.js';
import type { Operation } from '../model.js';
import { recoverOperation } from '../pipeline/recovery.js';
import type { RecoveryOutcome } from '../reports.js';
import type { OperationLauncher } from './operations/launcher.js';
import { recoveryDeps } from './operations/recover.js';
import type { ServiceParts } from './parts.js';

/**
 * What keeps several API replicas sharing one store interchangeable (`berth serve`). Every
 * `replica.heartbeatMs` it:
 * 1. renews the lease of every operation this process owns (`operations.heartbeat`); one of its
 *    in-flight operations missing from the answer was taken over by another replica while this
 *    one could not renew (a long pause, a lost database): its run is fenced — stopped, nothing
 *    more written or undone;
 * 2. takes over up to 10 operations whose lease passed (their replica died) and finishes them
 *    with the recovery rules, under the volume lock: an attach rolls back unless `complete` was
 *    done, a detach past `disconnect` goes forward;
 * 3. puts back the work items whose agent lost its lease (`workItems.expire`) and wakes their
 *    hosts' agents.
 * Takeover bound: an operation of a dead replica is taken over at most `leaseMs + heartbeatMs`
 * (6 s + 2 s by default) after its last renewal, plus the recovery's own work.
 */
export class ReplicaMaintenance {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private readonly recovering = new Map<string, Promise<RecoveryOutcome | undefined>>();

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
      const held = new Set(await store.operations.heartbeat!(owner, leaseMs));
      for (const id of this.launcher.leasedInflightIds()) if (!held.has(id)) this.launcher.fence(id);
      const taken = await store.operations.claimExpired!(owner, leaseMs, 10);
      // Recoveries run beside the beat: a long one must not stop the renewals.
      for (const operation of taken) {
        if (!this.recovering.has(operation.id)) this.recovering.set(operation.id, this.takeOver(operation));
      }
      if (store.workItems && store.notifications) {
        const expired = await store.workItems.expire();
        for (const hostId of new Set(expired.map((i) => i.hostId))) await store.notifications.notify(hostChannel(hostId));
      }
    } catch (error) {
      logger.warn({ err: toBerthError(error).message }, 'replica heartbeat failed; retrying at the next beat');
    }
  }

  /** Finish an operation a dead replica left, under its volume lock. */
  private async takeOver(operation: Operation): Promise<RecoveryOutcome | undefined> {
    const { store, logger, volumeLocks } = this.parts;
    const log = logger.child({ operationId: operation.id, takeover: true });
    log.warn({ from: operation.owner }, 'taking over an operation whose replica stopped renewing it');
    const recover = async (): Promise<RecoveryOutcome> => {
      try {
        return await recoverOperation(recoveryDeps(this.parts), await store.operations.require(operation.id), log);
      } catch (error) {
        const e = toBerthError(error);
        await store.operations.finish(operation.id, { state: 'failed', error: { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) } }).catch(() => undefined);
        return { operationId: operation.id, kind: operation.kind, action: 'failed', detail: e.message };
      }
    };
    try {
      const outcome = operation.volumeId ? await volumeLocks.withLock(operation.volumeId, recover) : await recover();
      log.warn({ action: outcome.action, detail: outcome.detail }, 'took over an operation');
      return outcome;
    } finally {
      this.recovering.delete(operation.id);
    }
  }
}
