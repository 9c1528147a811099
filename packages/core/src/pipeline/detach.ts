import { BerthError, toBerthError } from '../errors.js';
import type { AttachmentStatus } from '../model.js';
import { backendVolume, recomputeVolume, type PipelineContext, type PipelineDeps } from './context.js';
import { required } from './attach.js';
import type { Step } from './step.js';

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
    ctx.forcedErrors.push(`${step}: ${toBerthError(error).message}`);
  });
}

/**
 * The detach pipeline, the attach mirrored: begin_detaching → dispatch → unpublish → disconnect →
 * terminate → delete_attachment. Before `disconnect` a failure rolls back (roll_detaching: the
 * volume stays in use, the attachment stays attached); after it, the device is gone, so a failure
 * leaves the attachment `error_detaching` for a retry instead of pretending it is attached.
 */
export function detachSteps(deps: PipelineDeps): Array<Step<PipelineContext>> {
  const { store, catalog } = deps;
  let original: AttachmentStatus = 'attached';
  return [
    {
      name: 'begin_detaching',
      async run(ctx) {
        const attachment = required(ctx.attachment, 'attachment');
        original = attachment.status;
        ctx.attachment = await store.attachments.transition(attachment.id, detachableFrom(ctx.force ?? false), 'detaching');
        ctx.volume = await recomputeVolume(store, ctx.volume.id);
        return { attachmentId: attachment.id, from: original };
      },
      async undo(ctx) {
        if (ctx.attachment?.status !== 'detaching') return;
        const back: AttachmentStatus = original === 'attached' ? 'attached' : 'error_detaching';
        ctx.attachment = await store.attachments.transition(ctx.attachment.id, ['detaching'], back);
        ctx.volume = await recomputeVolume(store, ctx.volume.id);
      },
    },
    {
      name: 'dispatch',
      async run(ctx) {
        const host = await deps.localHost();
        if (ctx.server.hostId !== host.id) {
          throw new BerthError('UNPROCESSABLE', `server ${ctx.server.name} is not on this host (${host.name})`, {
            hint: 'run the detach on the host the server is on',
          });
        }
        ctx.host = host;
        return { hostId: host.id, agent: 'in-process' };
      },
    },
    {
      name: 'unpublish',
      async run(ctx) {
        await tolerant(ctx, 'unpublish', () => ctx.consumer.unpublish(ctx.server, required(ctx.attachment, 'attachment')));
      },
      async undo(ctx) {
        const attachment = ctx.attachment;
        if (attachment?.device && attachment.publishedPath) {
          await ctx.consumer.publish(ctx.server, attachment.device, attachment);
        }
      },
    },
    {
      name: 'disconnect',
      pointOfNoReturn: true,
      async run(ctx, signal) {
        const attachment = required(ctx.attachment, 'attachment');
        if (!attachment.transport || !attachment.connectionInfo) return { skipped: 'never connected' };
        const transport = catalog.transport(attachment.transport);
        await tolerant(ctx, 'disconnect', () =>
          transport.disconnect(attachment.connectionInfo!, attachment.device ?? undefined, {
            force: ctx.force ?? false,
            signal,
            operationId: ctx.operationId,
            volumeId: ctx.volume.id,
          }),
        );
        return { device: attachment.device?.path ?? null };
      },
    },
    {
      name: 'terminate',
      async run(ctx, signal) {
        const attachment = required(ctx.attachment, 'attachment');
        const connector = attachment.connector ?? deps.baseConnector();
        await tolerant(ctx, 'terminate', () => ctx.backend.terminateConnection(backendVolume(ctx.volume), connector, signal));
      },
    },
    {
      name: 'delete_attachment',
      async run(ctx) {
        const attachment = required(ctx.attachment, 'attachment');
        if (ctx.forcedErrors.length > 0) {
          throw new BerthError('DRIVER_ERROR', `forced detach finished with errors: ${ctx.forcedErrors.join('; ')}`, {
            hint: 'fix the cause and run `berth detach --force` again; `berth reconcile` lists what is left',
          });
        }
        await store.transaction(async (tx) => {
          await tx.attachments.transition(attachment.id, ['detaching'], 'detached');
          await tx.attachments.delete(attachment.id);
        });
        ctx.volume = await recomputeVolume(store, ctx.volume.id);
      },
    },
  ];
}

/**
 * After a failure past the point of no return, the attachment must not stay `detaching`: mark it
 * `error_detaching` with the reason, so the volume shows `error` and a retry (`berth detach
 * --force`) can finish the job.
 */
export async function markDetachFailed(deps: PipelineDeps, ctx: PipelineContext, error: BerthError): Promise<void> {
  if (!ctx.attachment) return;
  const current = await deps.store.attachments.get(ctx.attachment.id);
  if (current?.status !== 'detaching') return;
  ctx.attachment = await deps.store.attachments.transition(current.id, ['detaching'], 'error_detaching', { error: error.message });
  ctx.volume = await recomputeVolume(deps.store, ctx.volume.id);
}
