import { toBerthError } from '../../errors.js';
import { isStoreOutage } from '../../store-errors.js';
import { isTakenOver } from '../../pipeline/operation-fence.js';
import { summarize } from '../../pipeline/operation-runner.js';
import { hostRootSkip } from '../../pipeline/host-root.js';
import { finishFailedRecovery, foreignHostRoot, recoverOperation, type RecoveryDeps } from '../../pipeline/recovery.js';
import { commandsEnded, DEAD_OWNER_KILL_MARGIN_MS, ownerState } from '../../owner.js';
import type { RecoveryOutcome } from '../../reports.js';
import { serverConsumer } from '../../pipeline/server-consumer.js';
import type { ServiceParts } from '../parts.js';
import type { OperationLauncher } from './launcher.js';

/** What recovery needs, from the service's parts. */
export function recoveryDeps(parts: ServiceParts): RecoveryDeps {
  return {
    ...parts.deps,
    runner: parts.runner,
    consumer: (server, host) => serverConsumer(parts, server, host),
    undoTimeoutMs: parts.config.undoTimeoutMs,
    faults: parts.faults,
  };
}

/**
 * Finish every `running` operation whose owner is a dead process on this host (or that this
 * process abandoned and still owns: a replica may have claimed it since), each under its volume lock.
 */
export async function recoverDeadOperations(parts: ServiceParts, launcher: OperationLauncher): Promise<RecoveryOutcome[]> {
  const { store, identity, owner } = parts;
  const outcomes: RecoveryOutcome[] = [];
  for (const operation of await store.operations.list({ state: 'running' })) {
    // Abandoned only while still this process's: a replica that took it over since owns it now.
    const abandoned = launcher.isAbandoned(operation.id) && operation.owner === owner;
    if (!abandoned) {
      const left = ownerState(operation.owner, identity.hostname, owner);
      if (left.state === 'alive') continue;
      // Its process is dead but a command it started still runs (a SIGKILLed CLI's `iscsiadm
      // --login`): undoing beside it could leave what it makes behind, or undo under it. Its
      // spawner ends it at the command's own timeout: wait that long at most. One that outlives
      // even its SIGKILL (stuck in the kernel: a flush on a dead path) must not keep the operation
      // running for good: it is recovered beside it, with a warning.
      if (left.state === 'commands' && !(await commandsEnded(left.pid, parts.config.commandTimeoutMs + DEAD_OWNER_KILL_MARGIN_MS))) {
        parts.logger.warn({ operationId: operation.id, owner: operation.owner }, 'recovery: the dead owner\'s commands still run past their timeout; recovering beside them');
      }
    }
    // Connected on another host root than this berth's transport runs on: left as it is (not even
    // its owner is taken) for a berth on that root, which recovers it when it opens.
    const elsewhere = await foreignHostRoot(parts.deps, operation);
    if (elsewhere) {
      const detail = hostRootSkip(elsewhere);
      parts.logger.warn({ operationId: operation.id, recordedRoot: elsewhere.recorded, hostRoot: elsewhere.here }, `recovery: ${detail}`);
      outcomes.push({ operationId: operation.id, kind: operation.kind, action: 'skipped', detail });
      continue;
    }
    try {
      // A compare-and-swap on the owner: of two processes starting at once, one recovers it.
      await store.operations.setOwner(operation.id, owner, operation.owner);
    } catch {
      continue;
    }
    const log = parts.logger.child({ operationId: operation.id, recovery: true });
    const recover = async (): Promise<RecoveryOutcome | undefined> => {
      // Under the lock, read again: another recovery in this process (the replica loop's takeover
      // of an expired lease, a reconcile) may have finished it meanwhile — its undos must not run twice.
      const current = await store.operations.require(operation.id);
      if (current.state !== 'running' || current.owner !== owner) return undefined;
      try {
        // Fenced by its owner where replicas may take operations over (a store with leases): the
        // owner CAS above leaves a replica's lease passed, so another replica's claim may take the
        // operation in the meantime — then this recovery stops at its first write instead of
        // undoing and settling beside that one.
        // Named by the process that ran it: the owner CAS above wrote this one over it. One this
        // process abandoned was given up while the database failed (it did not stop).
        return await recoverOperation(recoveryDeps(parts), current, log, store.operations.claimExpired ? owner : undefined, abandoned ? 'database-failed' : 'stopped', abandoned ? current.owner : operation.owner);
      } catch (error) {
        if (isTakenOver(error)) return { operationId: operation.id, kind: operation.kind, action: 'skipped', detail: 'a replica took it over meanwhile' };
        const e = toBerthError(error);
        // The database failed under it: not settled, the next recovery runs it again.
        if (isStoreOutage(e)) return { operationId: operation.id, kind: operation.kind, action: 'deferred', detail: `the database failed (${e.message}); it stays running for the next recovery` };
        await finishFailedRecovery(store, operation.id, undefined, summarize(e)).catch(() => undefined);
        return { operationId: operation.id, kind: operation.kind, action: 'failed', detail: e.message };
      }
    };
    const outcome = operation.volumeId ? await parts.volumeLocks.withLock(operation.volumeId, recover) : await recover();
    if (outcome?.action === 'deferred') launcher.abandon(operation.id);
    else launcher.recovered(operation.id);
    if (outcome === undefined) continue;
    log.warn({ action: outcome.action, detail: outcome.detail }, 'recovered an interrupted operation');
    outcomes.push(outcome);
  }
  return outcomes;
}
