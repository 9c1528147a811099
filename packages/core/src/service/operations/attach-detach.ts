import { parseWith } from '../../errors.js';
import { attachSteps } from '../../pipeline/attach.js';
import type { PipelineContext, PipelineDeps } from '../../pipeline/context.js';
import { detachSteps } from '../../pipeline/detach.js';
import { assertSameHostRoot } from '../../pipeline/host-root.js';
import { serverConsumer } from '../../pipeline/server-consumer.js';
import type { Step } from '../../pipeline/step.js';
import { retryingStore } from '../../pipeline/store-retry.js';
import { zAttachRequest, zDetachRequest } from '../../requests.js';
import type { AttachRequest, DetachRequest, StartedOperation } from '../../service.js';
import type { ServiceParts } from '../parts.js';
import { findAttachmentToDetach, preflightAttach } from '../preflight.js';
import { projectOf, resolveServer, resolveVolume } from '../resolve.js';
import type { OperationLauncher } from './launcher.js';

/** Start an attach: checked and journalled before this resolves, run under the volume lock. */
export async function startAttach(parts: ServiceParts, launcher: OperationLauncher, request: AttachRequest): Promise<StartedOperation> {
  const { store } = parts;
  const req = parseWith(zAttachRequest, request, 'attach request');
  const replay = await launcher.replay(req.idempotencyKey);
  if (replay) return replay;
  const project = projectOf(parts.config, req);
  const volume = await resolveVolume(store, req.volume, project);
  const server = req.server === undefined ? await parts.localHost.server(project) : await resolveServer(store, req.server, project);
  await preflightAttach(store, volume, server);
  // The server's consumer (its hypervisor's): one that is not installed is refused before anything.
  const consumer = serverConsumer(parts, server, await store.hosts.get(server.hostId));

  return launcher.launch({ kind: 'attach', volume, server, idempotencyKey: req.idempotencyKey }, async (operationId, signal) => {
    // The volume as resolved: no step before `reserve` reads it, and reserve's transaction reads
    // it again under the lock and puts what it stored in the context.
    const ctx = launcher.context(operationId, volume, server, consumer);
    const steps = attachSteps(stepDeps(parts, signal), {
      mode: req.mode ?? 'rw',
      ...(req.multipath === undefined ? {} : { multipath: req.multipath }),
      ...(req.transport === undefined ? {} : { transport: req.transport }),
    });
    // The server lock covers only the reservation (Nova's reserve_block_device_name):
    // attaches of different volumes to one server connect in parallel.
    const [reserve, ...rest] = steps as [Step<PipelineContext>, ...Array<Step<PipelineContext>>];
    const lockedReserve: Step<PipelineContext> = {
      ...reserve,
      run: (c, signal) => parts.serverLocks.withLock(server.id, () => reserve.run(c, signal), signal),
    };
    return { ctx, steps: [lockedReserve, ...rest] };
  });
}

/** Start a detach of the one attachment the request names. */
export async function startDetach(parts: ServiceParts, launcher: OperationLauncher, request: DetachRequest): Promise<StartedOperation> {
  const { store } = parts;
  const req = parseWith(zDetachRequest, request, 'detach request');
  const replay = await launcher.replay(req.idempotencyKey);
  if (replay) return replay;
  const project = projectOf(parts.config, req);
  const volume = await resolveVolume(store, req.volume, project);
  const attachment = await findAttachmentToDetach(store, volume, { attachmentId: req.attachmentId, server: req.server, project, force: req.force ?? false });
  // Made where this berth's transport does not run (the simulated host, or the machine): refused
  // here. Another host's attachment is its agent's to disconnect, on the agent's roots.
  if (attachment.hostId === (await parts.deps.localHost()).id) assertSameHostRoot(parts.catalog, attachment);
  const server = await store.servers.require(attachment.serverId);
  // Only the server's own consumer can take the disk back from its guest.
  const consumer = serverConsumer(parts, server, await store.hosts.get(server.hostId));

  return launcher.launch({ kind: 'detach', volume, server, attachment, idempotencyKey: req.idempotencyKey }, async (operationId, signal) => {
    // The volume and the attachment as found: begin_detaching's commit CASes the attachment
    // from the status seen here (reading it only when that fails) and puts both as stored in
    // the context; no step before it reads them.
    const ctx = launcher.context(operationId, volume, server, consumer);
    ctx.attachment = attachment;
    ctx.force = req.force ?? false;
    return { ctx, steps: detachSteps(stepDeps(parts, signal)) };
  });
}

/** The pipelines' dependencies for one operation: its steps' store writes wait out a held lock until the deadline. */
function stepDeps(parts: ServiceParts, signal: AbortSignal): PipelineDeps {
  return { ...parts.deps, store: retryingStore(parts.deps.store, { signal, logger: parts.deps.logger }) };
}
