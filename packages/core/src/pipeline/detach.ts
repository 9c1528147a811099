import { BerthError, toBerthError } from '../errors.js';
import type { Attachment, AttachmentStatus } from '../model.js';
import { zConnector, type Connector } from '../connection.js';
import { backendVolume, deleteAttachmentRecord, deleteDetachingAttachment, isGuestServer, recomputeVolume, transitionAttachment, type PipelineContext, type PipelineDeps } from './context.js';
import { publishShared, releaseShared, terminateUnshared, unpublishShared, type ReleaseOutcome } from './device-sharing.js';
import { applyTransition, required } from './attach.js';
import type { Step } from './step.js';
import { refuseOfflineAgent } from '../host-steps/offline-agent.js';
import type { HostSteps } from '../host-steps/host-steps.js';
import { consumerNameFor } from '../hypervisor.js';
import { ownedHostSteps } from './operation-fence.js';
import { isStoreOutage } from '../store-errors.js';

/** Attachment statuses a detach starts from (a forced one also cleans up failed attaches/detaches). */
export function detachableFrom(force: boolean): AttachmentStatus[] {
  return force ? ['attached', 'error_attaching', 'error_detaching'] : ['attached', 'error_detaching'];
}

/**
 * With `force`, a failing host-side step is recorded and the detach goes on (os-brick's `force`):
 * everything that can be removed is, and the operation then fails listing every error.
 */
function tolerant(ctx: PipelineContext, step: string, fn: () => Promise<void>): Promise<void> {
  return fn().catch((error: unknown) => {
    if (!ctx.force) throw error;
    const e = toBerthError(error);
    // The database failing is not the host's step failing: going on, the detach would end in
    // `error_detaching` for an outage; failing here, it is left to recovery (`unsettledBy`).
    if (isStoreOutage(e)) throw e;
    // A guest that may still have the disk is never gone through, not even forced: disconnecting
    // the host side under it would pull a live disk out of the VM (Nova's detach bugs). A guest
    // consumer's unpublish succeeds once the disk is gone or the guest is not running, so any
    // failure of it (`guestHoldsDevice`, or one whose details an agent's answer did not carry)
    // means berth cannot tell the guest let go. The guest must let go, or stop, first.
    if (e.details.guestHoldsDevice === true || (step === 'unpublish' && isGuestServer(ctx))) throw stillInGuest(ctx, e);
    ctx.forcedErrors.push(`${step}: ${e.message}`);
  });
}

/**
 * Whether the server's guest still has berth's own disk for the volume (its consumer's
 * `guestDisks`, here or through the host's agent). A guest that cannot be listed counts as not
 * having it: the undo then goes on as before (publishing into an unreachable guest fails itself).
 */
async function guestStillHasDisk(deps: PipelineDeps, ctx: PipelineContext, signal: AbortSignal): Promise<boolean> {
  const steps = required(ctx.steps, 'host steps');
  const { disks } = await steps.run('guest_disks', { consumer: consumerNameFor(ctx.server, deps.config.consumer), server: ctx.server }, { operationId: ctx.operationId, signal });
  return (disks ?? []).some((disk) => disk.serial === ctx.volume.id && disk.plugged !== false);
}

/**
 * Whether a failed unpublish left an unplug request with the guest: its consumer said so
 * (`unplugRequested`), or it is a guest consumer's TIMEOUT with `guestHoldsDevice` (the request was
 * made and the guest has not acted on it yet: it stays pending in the hypervisor).
 */
function unplugRequested(error: BerthError): boolean {
  return error.details.unplugRequested === true || (error.code === 'TIMEOUT' && error.details.guestHoldsDevice === true);
}

/** A forced detach refused because the guest still has the disk: what to do about it. */
function stillInGuest(ctx: PipelineContext, error: BerthError): BerthError {
  return new BerthError(error.code, error.message, {
    hint: `the guest of server ${ctx.server.name} may still have the disk: let it release it (or shut the guest down), then run \`berth detach ${ctx.volume.name} --force\` again; --force never disconnects a disk a guest still holds`,
    details: { ...error.details },
    cause: error,
  });
}

/**
 * Whom an attachment that recorded no connector was exported to (an attach whose `initialize`
 * exported, then failed before its commit, and whose undo could not remove the export): the
 * connector its attach journalled, else its host's registered one (an agent's), else this host's
 * base connector. The bare base connector alone names no initiator: the export would be removed
 * for nobody (or for the wrong host) and stay.
 */
async function exportedConnector(deps: PipelineDeps, attachment: Attachment): Promise<Connector> {
  const attaches = await deps.store.operations.list({ kind: 'attach', volumeId: attachment.volumeId });
  for (const op of attaches) {
    if (op.attachmentId !== attachment.id) continue;
    const journalled = zConnector.safeParse(op.steps.find((s) => s.phase === 'do' && s.name === 'connector' && s.data?.connector !== undefined)?.data?.connector);
    if (journalled.success) return journalled.data;
  }
  const host = await deps.store.hosts.get(attachment.hostId);
  if (host?.connector && host.id !== (await deps.localHost()).id) return host.connector;
  return deps.baseConnector();
}

/**
 * Refuse a detach whose attachment's transport is not there to disconnect it — not in this
 * process's catalog (local steps: uninstalled with `plugins uninstall --force`, or its factory
 * fails) nor on the host's agent (remote steps) — before anything is touched: going on, unpublish
 * removed the names and the attachment ended `error_detaching` before the disconnect failed.
 * Not for `--force`, which goes on through errors as it does for any failing step.
 */
function refuseMissingTransport(deps: PipelineDeps, steps: HostSteps, attachment: Attachment, volumeName: string): void {
  const name = attachment.transport;
  if (!name || !attachment.connectionInfo) return;
  let missing: string | undefined;
  if (steps.kind === 'remote') {
    const has = steps.host.agent?.transports;
    if (has && !has.includes(name)) missing = `host ${steps.host.name}'s agent has no transport ${name} (it has ${has.join(', ') || 'none'})`;
  } else {
    try {
      deps.catalog.transport(name);
    } catch (error) {
      const e = toBerthError(error);
      missing = e.code === 'PLUGIN_ERROR' ? e.message : `no transport named ${name} is installed (installed: ${deps.catalog.transportNames().join(', ') || 'none'})`;
    }
  }
  if (missing === undefined) return;
  throw new BerthError('UNPROCESSABLE', `volume ${volumeName} was attached through transport ${name}, which cannot disconnect it here: ${missing}; nothing was changed`, {
    hint: `reinstall the plugin that provides transport ${name} (\`berth plugins install <package>\`${steps.kind === 'remote' ? ` on ${steps.host.name}, then restart its \`berth agent\`` : ''}), then detach again; \`berth detach ${volumeName} --force\` goes on without it (the device stays connected)`,
    details: { transport: name, hostId: steps.host.id, reason: 'transport-missing', untouched: true },
  });
}

/**
 * The detach pipeline, the attach mirrored: begin_detaching → dispatch → unpublish → disconnect →
 * terminate → delete_attachment. Before `disconnect` a failure rolls back (roll_detaching: the
 * volume stays in use, the attachment stays attached). `disconnect` is the point of no return: once
 * it succeeded, or failed after it may have let go of the device (a loop device whose detach the
 * kernel deferred to the last close), a failure leaves the attachment `error_detaching` for
 * `berth detach --force` or `berth reconcile`, instead of pretending it is attached. Only a
 * disconnect that failed without touching anything (`details.untouched`: a holder found first, an
 * identity that no longer matches) is rolled back.
 */
export function detachSteps(deps: PipelineDeps, resumed: { from?: AttachmentStatus } = {}): Array<Step<PipelineContext>> {
  const { store } = deps;
  // The status begin_detaching moved the attachment from, which its undo puts back: learned at its
  // commit, or — for recovery, which runs these steps anew — from its journal data (`resumed`).
  let original: AttachmentStatus = resumed.from ?? 'attached';
  return [
    {
      name: 'begin_detaching',
      storeOnly: true,
      async run(ctx) {
        return { attachmentId: required(ctx.attachment, 'attachment').id };
      },
      async commit(ctx, tx) {
        const seen = required(ctx.attachment, 'attachment');
        const from = detachableFrom(ctx.force ?? false);
        // The status the launcher saw (before the volume lock) as the CAS's only accepted one:
        // when the CAS holds, that is the status an undo puts back, and nothing is read first.
        // When it does not (the attachment changed since), read it here and CAS from the list.
        let was: AttachmentStatus = seen.status;
        let attachment: Attachment | undefined;
        if (from.includes(seen.status)) {
          attachment = await tx.attachments.transition(seen.id, [seen.status], 'detaching').catch((error: unknown) => {
            if (BerthError.is(error) && (error.code === 'CONFLICT' || error.code === 'NOT_FOUND')) return undefined;
            throw error;
          });
        }
        if (attachment === undefined) {
          was = (await tx.attachments.require(seen.id)).status;
          attachment = await tx.attachments.transition(seen.id, from, 'detaching');
        }
        const changed = { attachment, volume: await recomputeVolume(tx, attachment.volumeId) };
        return {
          data: { from: was },
          apply: (c) => {
            original = was;
            applyTransition(c, changed);
          },
        };
      },
      async undo(ctx, _signal, progress) {
        if (ctx.attachment?.status !== 'detaching') return;
        // A later undo that failed (the unpublish's: the guest's disk, or the host's name, may not
        // be back) leaves the attachment `error_detaching`, not `attached` over what is not there.
        const back: AttachmentStatus = original === 'attached' && progress.failures.length === 0 ? 'attached' : 'error_detaching';
        // A pending unplug is not a failed rollback: the detach is waiting for the guest.
        const why = ctx.unplugMayBePending === true ? 'the detach is waiting for the guest' : 'the rollback of the detach failed';
        const failed = progress.failures.length > 0 ? { error: `${why}: ${progress.failures.join('; ')}` } : undefined;
        const changed = await transitionAttachment(store, ctx.attachment.id, ['detaching'], back, failed);
        ctx.attachment = changed.attachment;
        ctx.volume = changed.volume;
      },
    },
    {
      name: 'dispatch',
      storeOnly: true,
      async run(ctx) {
        const steps = ownedHostSteps(await deps.hostSteps(ctx.server.hostId), ctx.owner);
        refuseOfflineAgent(steps, deps.config.agent, 'detach');
        if (!ctx.force) refuseMissingTransport(deps, steps, required(ctx.attachment, 'attachment'), ctx.volume.name);
        ctx.steps = steps;
        ctx.host = steps.host;
        return { hostId: steps.host.id, agent: steps.agent };
      },
    },
    {
      name: 'unpublish',
      async run(ctx, signal) {
        const attachment = required(ctx.attachment, 'attachment');
        let shared = false;
        const went = ctx.forcedErrors.length;
        await tolerant(ctx, 'unpublish', async () => {
          const steps = required(ctx.steps, 'host steps');
          const request = { steps, consumer: ctx.consumer, server: ctx.server, attachment, volume: ctx.volume, signal, operationId: ctx.operationId };
          shared = (await unpublishShared(deps, request).catch((error: unknown) => {
            if (BerthError.is(error) && error.details.untouched === true) ctx.unpublishUntouched = true;
            if (BerthError.is(error) && unplugRequested(error)) ctx.unplugMayBePending = true;
            throw error;
          })).stillShared;
        });
        ctx.volumeNameKept = shared;
        // A forced detach that went past this step's failure: the journal says so, not a plain "done".
        return { stillShared: shared, ...(ctx.forcedErrors.length > went ? { forcedPast: ctx.forcedErrors.slice(went).join('; ') } : {}) };
      },
      async undo(ctx, signal) {
        const attachment = ctx.attachment;
        if (ctx.unpublishUntouched === true) return;
        // Recovery cannot tell whether the request went out: a guest that still has the disk may have it pending.
        const stoppedMidUnplug = ctx.unpublishOutcomeUnknown === true && (await guestStillHasDisk(deps, ctx, signal));
        if (stoppedMidUnplug) ctx.unplugMayBePending = true;
        if (ctx.unplugMayBePending === true) {
          // Publishing again would find the device still there ("Duplicate device ID": kept) and
          // call the detach undone, and the guest would drop the disk at its next chance while the
          // attachment read `attached` (a paused guest at its resume: an explorer's standing item).
          const asked = stoppedMidUnplug
            ? `the berth that detached volume ${ctx.volume.name} stopped while it had the guest of server ${ctx.server.name} release the disk, and the guest still has it: it may have been asked to, and may still let go`
            : `the guest of server ${ctx.server.name} was asked to release the disk of volume ${ctx.volume.name} and may still do so`;
          throw new BerthError('CONFLICT', `${asked} at any moment (when it resumes, or frees the disk); the detach cannot be undone`, {
            hint: `once the guest let go, run \`berth detach ${ctx.volume.name}\` again (or \`berth reconcile\`); the host side stays connected until then`,
            details: { guestHoldsDevice: true, unplugRequested: true, volumeId: ctx.volume.id, serverId: ctx.server.id },
          });
        }
        if (attachment?.device && attachment.publishedPath) {
          const { consumer, server, volume, operationId } = ctx;
          const steps = required(ctx.steps, 'host steps');
          // An unpublish the host's agent never picked up took nothing away there: nothing to put
          // back (asking a silent agent to publish again only waited out the undo's deadline too,
          // and then read "the rollback failed" for an attachment that was never touched).
          if (!(await steps.ran(operationId, 'unpublish'))) return;
          await publishShared(deps, { steps, consumer, server, attachment, volume, device: attachment.device, signal, operationId, undo: true });
        }
      },
    },
    {
      name: 'disconnect',
      pointOfNoReturn: true,
      // Only a disconnect that says it touched nothing may be rolled back into `attached`.
      failurePassesNoReturn: (error) => error.details.untouched !== true,
      async run(ctx, signal) {
        const attachment = required(ctx.attachment, 'attachment');
        const { transport, connectionInfo } = attachment;
        if (!transport || !connectionInfo) return { skipped: 'never connected' };
        let outcome: ReleaseOutcome | undefined;
        const went = ctx.forcedErrors.length;
        await tolerant(ctx, 'disconnect', async () => {
          outcome = await releaseShared(deps, {
            steps: required(ctx.steps, 'host steps'),
            hostId: attachment.hostId,
            volume: ctx.volume,
            attachment,
            transport,
            connection: connectionInfo,
            ...(attachment.device ? { device: attachment.device } : {}),
            force: ctx.force ?? false,
            signal,
            operationId: ctx.operationId,
            ...(ctx.volumeNameKept === true ? { volumeNameKept: true } : {}),
            // The boundary to `terminate` (not store-only) is durable and comes next.
            deferRecord: true,
          });
        });
        return {
          device: attachment.device?.path ?? null,
          ...(outcome ? { disconnected: outcome.disconnected, sharers: outcome.sharers, identityMismatch: outcome.identityMismatch } : {}),
          ...(ctx.forcedErrors.length > went ? { forcedPast: ctx.forcedErrors.slice(went).join('; ') } : {}),
        };
      },
    },
    {
      name: 'terminate',
      async run(ctx, signal) {
        const attachment = required(ctx.attachment, 'attachment');
        const connector = attachment.connector ?? (await exportedConnector(deps, attachment));
        // The export is the host's: other attachments of the volume on this host still use it
        // (decided under the export's lease, which an attach's `initialize` holds to its record).
        // Forced, a wait for the lease that gives up leaves the export (reconcile removes it).
        const { backend, volume } = ctx;
        let sharing = 0;
        await tolerant(ctx, 'terminate', async () => {
          sharing = await terminateUnshared(deps, volume, connector, attachment.id, signal, () => backend.terminateConnection(backendVolume(volume), connector, signal));
        });
        if (sharing > 0) return { kept: `still used by ${sharing} other attachment(s) on this host` };
      },
    },
    {
      name: 'delete_attachment',
      storeOnly: true,
      async run(ctx) {
        if (ctx.forcedErrors.length > 0) {
          throw new BerthError('DRIVER_ERROR', `forced detach finished with errors: ${ctx.forcedErrors.join('; ')}`, {
            hint: `fix the cause and run \`berth detach ${ctx.volume.name} --force\` again (or \`berth reconcile\`)`,
            // Already lists what the forced detach went past (the launcher adds it to other errors).
            details: { forcedErrors: true },
          });
        }
      },
      async commit(ctx, tx) {
        // One transaction: the attachment goes and the volume's status follows (and the step's
        // end in the journal), or none of them.
        const attachment = required(ctx.attachment, 'attachment');
        // begin_detaching left it `detaching` (its commit's row): the CAS says if it still is,
        // without reading it first; anything else goes the general way.
        const volume =
          attachment.status === 'detaching'
            ? await deleteDetachingAttachment(tx, attachment.id, ctx.volume.id)
            : await deleteAttachmentRecord(tx, attachment.id, ctx.volume.id);
        return { apply: (c) => (c.volume = volume) };
      },
    },
  ];
}

/**
 * After a failure past the point of no return, the attachment must not stay `detaching`: mark it
 * `error_detaching` with the reason, so the volume shows `error` and a retry (`berth detach
 * --force`, `berth reconcile`) can finish the job.
 */
export async function markDetachFailed(deps: PipelineDeps, ctx: PipelineContext, error: BerthError): Promise<void> {
  if (!ctx.attachment) return;
  const current = await deps.store.attachments.get(ctx.attachment.id);
  if (current?.status !== 'detaching') return;
  const changed = await transitionAttachment(deps.store, current.id, ['detaching'], 'error_detaching', { error: error.message });
  ctx.attachment = changed.attachment;
  ctx.volume = changed.volume;
}
