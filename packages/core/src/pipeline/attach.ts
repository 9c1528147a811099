import { isDeepStrictEqual } from 'node:util';
import { BerthError, toBerthError } from '../errors.js';
import { isStoreOutage } from '../store-errors.js';
import { redactConnectionInfo, withAccessMode, zConnector, type Device } from '../connection.js';
import { recomputeVolumeStatus, reservableStatuses } from '../transitions.js';
import type { Attachment, Server, Volume } from '../model.js';
import type { Publication } from '../contracts/consumer.js';
import type { Store } from '../store.js';
import { backendVolume, deleteAttachmentRecord, isGuestServer, transitionAttachment, type PipelineContext, type PipelineDeps } from './context.js';
import { connectShared, publishSharedPublication, releaseShared, terminateUnshared, unpublishShared, withExportLease } from './device-sharing.js';
import { initializeHostRoot } from './host-root.js';
import type { Step } from './step.js';
import { refuseOfflineAgent } from '../host-steps/offline-agent.js';
import { ownedHostSteps } from './operation-fence.js';

/** Options of an attach beyond its volume and server. */
export interface AttachOptions {
  mode: 'rw' | 'ro';
  multipath?: boolean;
  /** The transport to connect with, over the config's `transports` and the automatic choice. */
  transport?: string;
}

/**
 * The attach pipeline, step for step the seed's flow (see ARCHITECTURE.md): reserve → dispatch →
 * connector → initialize → connect → publish → complete, each with its undo.
 */
export function attachSteps(deps: PipelineDeps, options: AttachOptions): Array<Step<PipelineContext>> {
  const { store, catalog, config } = deps;
  // What the consumer said at `publish`, for its commit.
  let published: Publication | undefined;
  return [
    {
      name: 'reserve',
      storeOnly: true,
      async run() {},
      async commit(ctx, tx) {
        // The attachment, the operation's link to it and the step's end are written in one
        // transaction: a crash can never leave an attachment that no operation names.
        const reserved = await reserveAttachment(tx, ctx.volume.id, ctx.server, options.mode, ctx.operationId);
        // The volume as this transaction stored it: the later steps' view, not the one read
        // before the volume lock was taken.
        return { data: { attachmentId: reserved.attachment.id }, apply: (c) => applyTransition(c, reserved) };
      },
      async undo(ctx, _signal, progress) {
        if (!ctx.attachment) return;
        if (progress.failures.length > 0) {
          // Something is still on the backend or the host: keep the record of it, in a state that
          // blocks a new attach until `berth detach --force` or `berth reconcile` cleans up.
          const current = await store.attachments.get(ctx.attachment.id);
          if (current?.status === 'reserved' || current?.status === 'attaching') {
            await transitionAttachment(store, current.id, [current.status], 'error_attaching', { error: progress.failures.join('; ') });
          }
          return;
        }
        ctx.volume = await deleteAttachmentRecord(store, ctx.attachment.id, ctx.volume.id);
      },
    },
    {
      name: 'dispatch',
      storeOnly: true,
      async run(ctx) {
        // The host-side steps run where the server is: in this process for its own host, by the
        // host's agent otherwise; a host nobody can run them on is refused before anything is touched.
        const steps = ownedHostSteps(await deps.hostSteps(ctx.server.hostId), ctx.owner);
        refuseOfflineAgent(steps, deps.config.agent, 'attach');
        const agent = steps.kind === 'remote' ? steps.host.agent : null;
        if (agent && !agent.consumers.includes(ctx.consumer.name)) {
          throw new BerthError('UNPROCESSABLE', `host ${steps.host.name}'s agent has no consumer ${ctx.consumer.name}, which server ${ctx.server.name} needs (it has ${agent.consumers.join(', ') || 'none'})`, {
            hint: `install the plugin with consumer ${ctx.consumer.name} on that host and restart its \`berth agent\``,
            details: { hostId: ctx.server.hostId, consumer: ctx.consumer.name },
          });
        }
        ctx.steps = steps;
        ctx.host = steps.host;
        return { hostId: steps.host.id, agent: steps.agent };
      },
    },
    {
      name: 'connector',
      // It reads the host (here or through its agent) and records the connector: nothing to undo.
      storeOnly: true,
      async run(ctx, signal) {
        const steps = required(ctx.steps, 'host steps');
        const wish = { multipath: options.multipath ?? config.connector.multipath, enforce_multipath: config.connector.enforce_multipath };
        if (steps.kind === 'remote' && steps.host.connector) {
          // The agent registered its host's connector: the wish applied to it, no round trip.
          ctx.connector = zConnector.parse({ ...steps.host.connector, ...wish });
          return { connector: ctx.connector, source: 'registration' };
        }
        const { connector } = await steps.run('connector', wish, { operationId: ctx.operationId, signal });
        ctx.connector = connector;
        // Recorded only when it changed (the same host mostly reports the same connector): a read
        // instead of a commit per attach. The row, not `steps.host`: this process's may be older.
        const recorded = (await store.hosts.get(steps.host.id))?.connector;
        if (!isDeepStrictEqual(recorded, connector)) await store.hosts.setConnector(steps.host.id, connector);
        return { connector };
      },
    },
    {
      name: 'initialize',
      // The export and its record (the commit) under the export's lease: a detach of another
      // attachment of the volume on this host decides whether to remove the export under it too,
      // so it sees this attachment as the export's user, or removes the export before it is made.
      // The commit confirms the lease last (`confirm`): a process paused past it records nothing.
      hold: (ctx, signal, body) =>
        withExportLease(deps, ctx.volume, signal, async (lease) => {
          ctx.exportLease = lease;
          try {
            return await body();
          } finally {
            delete ctx.exportLease;
          }
        }),
      async run(ctx, signal) {
        const connector = required(ctx.connector, 'connector');
        const exported = await ctx.backend.initializeConnection(backendVolume(ctx.volume), connector, signal);
        const connection = withAccessMode(exported, options.mode);
        ctx.connection = connection;
        const forced = options.transport ?? config.transports[connection.driver_volume_type];
        // A remote host's transport is one its agent has (it connects there), not one of this process's.
        const agent = ctx.steps?.kind === 'remote' ? ctx.steps.host.agent : null;
        ctx.transport = agent
          ? catalog.selectAgentTransport(connection, connector, { hostName: required(ctx.steps, 'host steps').host.name, transports: agent.transports, ...(agent.transportInfo ? { transportInfo: agent.transportInfo } : {}) }, forced)
          : catalog.selectTransport(connection, connector, forced).name;
        const hostRoot = initializeHostRoot(catalog, ctx.steps, ctx.transport);
        return { driverVolumeType: connection.driver_volume_type, transport: ctx.transport, ...(hostRoot === undefined ? {} : { hostRoot }) };
      },
      async commit(ctx, tx) {
        const changed = await transitionAttachment(tx, required(ctx.attachment, 'attachment').id, ['reserved'], 'attaching', {
          connector: required(ctx.connector, 'connector'),
          connectionInfo: redactConnectionInfo(required(ctx.connection, 'connection')),
          transport: required(ctx.transport, 'transport'),
        });
        await ctx.exportLease?.confirm(tx);
        return { apply: (c) => applyTransition(c, changed) };
      },
      async undo(ctx, signal, progress) {
        // A later undo failed (the device was left connected — for a guest that may still hold the
        // disk, on purpose — or its unplug or disconnect failed): the device may still be in use
        // through this export, and removing it would cut that user off at its next login (tgtd
        // checks the ACL there). Kept, with the attachment `error_attaching`, for `berth detach
        // --force` or reconcile, which remove it once the device is gone.
        if (ctx.connector && progress.failures.length > 0) {
          throw new BerthError('CONFLICT', `the export of volume ${ctx.volume.name} to this host was kept: a device may still use it (${progress.failures.length} later undo(s) failed)`, {
            hint: `once the device is let go, \`berth detach ${ctx.volume.name} --force\` (or \`berth reconcile\`) removes it`,
            details: { volumeId: ctx.volume.id, reason: 'export-kept' },
          });
        }
        // The export is the host's: other attachments of the volume on this host use it too.
        if (ctx.connector) {
          const { connector, backend, volume } = ctx;
          await terminateUnshared(deps, volume, connector, ctx.attachment?.id, signal, () => backend.terminateConnection(backendVolume(volume), connector, signal));
        }
        if (ctx.attachment?.status === 'attaching') {
          const changed = await transitionAttachment(store, ctx.attachment.id, ['attaching'], 'reserved');
          ctx.attachment = changed.attachment;
          ctx.volume = changed.volume;
        }
      },
    },
    {
      name: 'connect',
      async run(ctx, signal) {
        const connected = await connectShared(deps, {
          steps: required(ctx.steps, 'host steps'),
          attachment: required(ctx.attachment, 'attachment'),
          volume: ctx.volume,
          transport: required(ctx.transport, 'transport'),
          connection: required(ctx.connection, 'connection'),
          ...(ctx.connector ? { connector: ctx.connector } : {}),
          operationId: ctx.operationId,
          signal,
          onDevice: (device) => {
            ctx.device = device;
          },
          // The boundary to `publish` (not store-only) is durable and comes next.
          deferRecord: true,
        });
        ctx.attachment = connected.attachment;
        return {
          device: connected.device.path,
          ...(connected.device.scsi_wwn ? { wwn: connected.device.scsi_wwn } : {}),
          ...(connected.device.identity ? { identity: connected.device.identity } : {}),
          sharedWith: connected.sharers,
        };
      },
      async undo(ctx, signal) {
        if (!ctx.transport || !ctx.connection) return;
        const steps = required(ctx.steps, 'host steps');
        // A connect the host's agent never picked up left nothing on the host.
        if (!(await steps.ran(ctx.operationId, 'connect'))) return;
        // The guest may still have the disk (its unplug failed): disconnecting the host side would
        // pull a live disk out of the VM. Left connected — the attachment ends `error_attaching`,
        // for `berth detach --force` once the guest let go, or reconcile.
        if (ctx.guestMayHoldDevice === true) {
          throw new BerthError('CONFLICT', `the guest of server ${ctx.server.name} may still have the disk of volume ${ctx.volume.name}: its host device was left connected`, {
            hint: `let the guest release the disk (or shut it down), then run \`berth detach ${ctx.volume.name} --force\`; berth never disconnects a disk a guest may still hold`,
            details: { guestHoldsDevice: true, volumeId: ctx.volume.id, serverId: ctx.server.id },
          });
        }
        const attachment = ctx.attachment ? await store.attachments.get(ctx.attachment.id) : undefined;
        // Another attachment of this volume on this host uses the device: only this claim goes.
        await releaseShared(deps, {
          steps,
          step: 'release',
          hostId: ctx.server.hostId,
          volume: ctx.volume,
          ...(attachment ? { attachment } : {}),
          transport: ctx.transport,
          connection: ctx.connection,
          ...((ctx.device ?? attachment?.device) ? { device: (ctx.device ?? attachment?.device) as Device } : {}),
          force: true,
          signal,
          operationId: ctx.operationId,
          ...(ctx.volumeNameKept === true ? { volumeNameKept: true } : {}),
        });
        ctx.device = undefined;
        if (ctx.attachment) ctx.attachment = (await store.attachments.get(ctx.attachment.id)) ?? ctx.attachment;
      },
    },
    {
      name: 'publish',
      async run(ctx, signal) {
        const attachment = required(ctx.attachment, 'attachment');
        const publication = await publishSharedPublication(deps, {
          steps: required(ctx.steps, 'host steps'),
          consumer: ctx.consumer,
          server: ctx.server,
          attachment,
          volume: ctx.volume,
          device: required(ctx.device, 'device'),
          signal,
          operationId: ctx.operationId,
        }).catch((error: unknown) => {
          if (BerthError.is(error) && error.details.untouched === true) ctx.publishUntouched = true;
          throw error;
        });
        ctx.publishedPath = publication.path;
        published = publication;
        return {
          path: publication.path,
          consumer: ctx.consumer.name,
          ...(publication.guestDevice === undefined ? {} : { guestDevice: publication.guestDevice }),
          ...(publication.serial === undefined ? {} : { serial: publication.serial }),
        };
      },
      async commit(ctx, tx) {
        const publication = required(published, 'publication');
        // A guest consumer says where the guest sees the disk (Nova's mountpoint) and its serial.
        const attachment = await tx.attachments.update(required(ctx.attachment, 'attachment').id, {
          publishedPath: publication.path,
          guestDevice: publication.guestDevice ?? null,
          serial: publication.serial ?? null,
        });
        return { apply: (c) => (c.attachment = attachment) };
      },
      async undo(ctx, signal) {
        if (!ctx.attachment || ctx.publishUntouched === true) return;
        // A publish the host's agent never picked up published nothing there.
        if (!(await required(ctx.steps, 'host steps').ran(ctx.operationId, 'publish'))) return;
        try {
          ctx.volumeNameKept = (await unpublishShared(deps, {
            steps: required(ctx.steps, 'host steps'),
            consumer: ctx.consumer,
            server: ctx.server,
            attachment: ctx.attachment,
            volume: ctx.volume,
            signal,
            operationId: ctx.operationId,
            undo: true,
          })).stillShared;
        } catch (error) {
          // As a forced detach's rule (detach.ts `tolerant`): a guest consumer's unplug that failed
          // means berth cannot tell the guest let go of the disk.
          const e = toBerthError(error);
          if (!isStoreOutage(e) && (e.details.guestHoldsDevice === true || isGuestServer(ctx))) ctx.guestMayHoldDevice = true;
          throw error;
        }
      },
    },
    {
      name: 'complete',
      // Once the attachment is recorded `attached`, the attach has happened: nothing is undone.
      pointOfNoReturn: true,
      storeOnly: true,
      async run() {},
      async commit(ctx, tx) {
        const attachment = required(ctx.attachment, 'attachment');
        const changed = await transitionAttachment(tx, attachment.id, ['attaching'], 'attached', { error: null });
        return { data: { attachmentId: attachment.id }, apply: (c) => applyTransition(c, changed) };
      },
    },
  ];
}

/** The context after a committed attachment transition: the attachment and its volume as stored. */
export function applyTransition(ctx: PipelineContext, changed: { attachment: Attachment; volume: Volume }): void {
  ctx.attachment = changed.attachment;
  ctx.volume = changed.volume;
}

/** A value a step needs from an earlier one; missing means a pipeline bug, not user error. */
export function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new BerthError('INTERNAL', `pipeline bug: ${what} is missing at this step`);
  return value;
}

/** What an attachment that is still being made or taken down means for its status word. */
const IN_PROGRESS: Readonly<Partial<Record<Attachment['status'], string>>> = { reserved: 'being attached', attaching: 'being attached', detaching: 'being detached' };

/**
 * The CONFLICT for an attach to a server the volume already has an attachment to. "Already
 * attached" only when it is: one still `reserved` / `attaching` / `detaching` has an operation on
 * it (or a killed one's recovery), which may yet roll it back — a script must not take that for
 * success (`details.reason`: `attached`, `in-progress` or `failed`).
 */
export function attachedToServer(volume: Volume, server: Server, attachment: Attachment): BerthError {
  const doing = IN_PROGRESS[attachment.status];
  if (doing !== undefined) {
    return new BerthError('CONFLICT', `volume ${volume.name} is ${doing} to server ${server.name} (attachment ${attachment.status}): an operation is on it`, {
      hint: 'wait for it to end (`berth operation list --state running`), then look again (`berth attachment list`)',
      details: { volumeId: volume.id, serverId: server.id, actual: volume.status, attachment: attachment.status, reason: 'in-progress' },
    });
  }
  const failed = attachment.status.startsWith('error');
  return new BerthError('CONFLICT', `volume ${volume.name} is already attached to server ${server.name}${failed ? ` (attachment ${attachment.status})` : ''}`, {
    hint: failed ? `finish it first: berth detach ${volume.name} --force (or berth reconcile)` : `detach it first: berth detach ${volume.name}`,
    details: { volumeId: volume.id, serverId: server.id, actual: volume.status, attachment: attachment.status, reason: failed ? 'failed' : 'attached' },
  });
}

/**
 * The reservation, in one transaction: CAS the volume from the status just read to the status
 * recomputed with a new `reserved` attachment, and create that attachment. Refuses (CONFLICT) a
 * volume that is not reservable, or already attached to this server.
 */
export async function reserveAttachmentRecord(
  store: Store,
  volumeId: string,
  server: Server,
  mode: 'rw' | 'ro',
  operationId?: string,
): Promise<Attachment> {
  return (await reserveAttachment(store, volumeId, server, mode, operationId)).attachment;
}

/** `reserveAttachmentRecord`, with the volume as the reservation stored it. */
async function reserveAttachment(
  store: Store,
  volumeId: string,
  server: Server,
  mode: 'rw' | 'ro',
  operationId?: string,
): Promise<{ attachment: Attachment; volume: Volume }> {
  return store.transaction(async (tx) => {
    const volume = await tx.volumes.require(volumeId);
    const existing = (await tx.attachments.list({ volumeId: volume.id })).filter((a) => a.status !== 'detached');
    const other = existing.find((a) => a.serverId === server.id);
    if (other !== undefined) throw attachedToServer(volume, server, other);
    if (!volume.multiattach && existing.length > 0) {
      throw new BerthError('CONFLICT', `volume ${volume.name} is already attached (status ${volume.status})`, {
        hint: 'detach it first, or create it with --multiattach',
        details: { volumeId: volume.id, actual: volume.status },
      });
    }
    if (!reservableStatuses(volume.multiattach).includes(volume.status)) {
      throw new BerthError('CONFLICT', `volume ${volume.name} is ${volume.status}; it must be available to attach`, {
        details: { volumeId: volume.id, actual: volume.status, expected: 'available' },
      });
    }
    // CAS from the status read in this transaction: a concurrent writer makes it fail.
    const next = recomputeVolumeStatus([...existing, { status: 'reserved' }]);
    const reserved = await tx.volumes.transition(volume.id, [volume.status], next);
    const attachment = await tx.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: server.hostId, mode });
    if (operationId !== undefined) await tx.operations.setAttachment(operationId, attachment.id);
    return { attachment, volume: reserved };
  });
}
