import { BerthError } from '../errors.js';
import { redactConnectionInfo, zConnector, type Connector } from '../connection.js';
import { recomputeVolumeStatus } from '../transitions.js';
import type { Attachment, Server, VolumeStatus } from '../model.js';
import type { Store } from '../store.js';
import { backendVolume, recomputeVolume, type PipelineContext, type PipelineDeps } from './context.js';
import type { Step } from './step.js';

/** Options of an attach beyond its volume and server. */
export interface AttachOptions {
  mode: 'rw' | 'ro';
  multipath?: boolean;
  /** The transport to connect with, over the config's `transports` and the automatic choice. */
  transport?: string;
}

/** Statuses a volume may be reserved from. */
function reservableFrom(multiattach: boolean): VolumeStatus[] {
  return multiattach ? ['available', 'reserved', 'attaching', 'in-use'] : ['available'];
}

/**
 * The attach pipeline, step for step the seed's flow (see ARCHITECTURE.md): reserve → dispatch →
 * connector → initialize → connect → publish → complete, each with its undo.
 */
export function attachSteps(deps: PipelineDeps, options: AttachOptions): Array<Step<PipelineContext>> {
  const { store, catalog, config } = deps;
  return [
    {
      name: 'reserve',
      async run(ctx) {
        const attachment = await reserveAttachmentRecord(store, ctx.volume.id, ctx.server, options.mode);
        ctx.attachment = attachment;
        await store.operations.setAttachment(ctx.operationId, attachment.id);
        return { attachmentId: attachment.id };
      },
      async undo(ctx, _signal, progress) {
        if (!ctx.attachment) return;
        if (progress.failures.length > 0) {
          // Something is still on the backend or the host: keep the record of it, in a state that
          // blocks a new attach until `berth detach --force` or `berth reconcile` cleans up.
          const current = await store.attachments.require(ctx.attachment.id);
          if (current.status === 'reserved' || current.status === 'attaching') {
            await store.attachments.transition(current.id, [current.status], 'error_attaching', {
              error: progress.failures.join('; '),
            });
          }
          await recomputeVolume(store, ctx.volume.id);
          return;
        }
        await store.attachments.delete(ctx.attachment.id);
        await recomputeVolume(store, ctx.volume.id);
      },
    },
    {
      name: 'dispatch',
      async run(ctx) {
        // The agent of the server's host runs the host-side steps. Embedded, that is this process:
        // a server placed on another host needs that host's agent (a later issue), so say so now
        // rather than connecting the volume on the wrong machine.
        const host = await deps.localHost();
        if (ctx.server.hostId !== host.id) {
          const target = await store.hosts.get(ctx.server.hostId);
          throw new BerthError('UNPROCESSABLE', `server ${ctx.server.name} is on host ${target?.name ?? ctx.server.hostId}, not on this host (${host.name})`, {
            hint: `run the attach on ${target?.name ?? 'that host'}, or attach to a server on this host`,
          });
        }
        ctx.host = host;
        return { hostId: host.id, agent: 'in-process' };
      },
    },
    {
      name: 'connector',
      async run(ctx) {
        const merged: Record<string, unknown> = { ...deps.baseConnector() };
        for (const transport of catalog.transports()) {
          Object.assign(merged, await transport.connectorProperties());
        }
        merged.multipath = options.multipath ?? config.connector.multipath;
        merged.enforce_multipath = config.connector.enforce_multipath;
        const connector: Connector = zConnector.parse(merged);
        ctx.connector = connector;
        if (ctx.host) await store.hosts.setConnector(ctx.host.id, connector);
        return { connector };
      },
    },
    {
      name: 'initialize',
      async run(ctx, signal) {
        const connector = required(ctx.connector, 'connector');
        const exported = await ctx.backend.initializeConnection(backendVolume(ctx.volume), connector, signal);
        // The attachment's mode wins over the backend's default (Cinder sets access_mode the same way).
        const connection = options.mode === 'ro' ? { ...exported, data: { ...exported.data, access_mode: 'ro' as const } } : exported;
        ctx.connection = connection;
        ctx.transport = catalog.selectTransport(connection, connector, options.transport ?? config.transports[connection.driver_volume_type]);
        ctx.attachment = await store.attachments.transition(required(ctx.attachment, 'attachment').id, ['reserved'], 'attaching', {
          connector,
          connectionInfo: redactConnectionInfo(connection),
          transport: ctx.transport.name,
        });
        await recomputeVolume(store, ctx.volume.id);
        return { driverVolumeType: connection.driver_volume_type, transport: ctx.transport.name };
      },
      async undo(ctx, signal) {
        if (ctx.connector) await ctx.backend.terminateConnection(backendVolume(ctx.volume), ctx.connector, signal);
        if (ctx.attachment?.status === 'attaching') {
          ctx.attachment = await store.attachments.transition(ctx.attachment.id, ['attaching'], 'reserved');
          await recomputeVolume(store, ctx.volume.id);
        }
      },
    },
    {
      name: 'connect',
      async run(ctx, signal) {
        const transport = required(ctx.transport, 'transport');
        const device = await transport.connect(required(ctx.connection, 'connection'), {
          signal,
          operationId: ctx.operationId,
          volumeId: ctx.volume.id,
          ...(ctx.connector ? { connector: ctx.connector } : {}),
        });
        ctx.device = device;
        ctx.attachment = await store.attachments.update(required(ctx.attachment, 'attachment').id, { device });
        return { device: device.path, ...(device.scsi_wwn ? { wwn: device.scsi_wwn } : {}) };
      },
      async undo(ctx, signal) {
        if (!ctx.transport || !ctx.connection) return;
        await ctx.transport.disconnect(ctx.connection, ctx.device, {
          force: true,
          signal,
          operationId: ctx.operationId,
          volumeId: ctx.volume.id,
        });
        if (ctx.attachment) ctx.attachment = await store.attachments.update(ctx.attachment.id, { device: null });
      },
    },
    {
      name: 'publish',
      async run(ctx) {
        const publication = await ctx.consumer.publish(ctx.server, required(ctx.device, 'device'), required(ctx.attachment, 'attachment'));
        ctx.publishedPath = publication.path;
        ctx.attachment = await store.attachments.update(required(ctx.attachment, 'attachment').id, { publishedPath: publication.path });
        return { path: publication.path };
      },
      async undo(ctx) {
        if (ctx.attachment) await ctx.consumer.unpublish(ctx.server, ctx.attachment);
      },
    },
    {
      name: 'complete',
      // Once the attachment is recorded `attached`, the attach has happened: nothing is undone.
      pointOfNoReturn: true,
      async run(ctx) {
        const attachment = required(ctx.attachment, 'attachment');
        ctx.attachment = await store.transaction(async (tx) => {
          const updated = await tx.attachments.transition(attachment.id, ['attaching'], 'attached', { error: null });
          const volume = await tx.volumes.require(ctx.volume.id);
          const status = recomputeVolumeStatus(await tx.attachments.list({ volumeId: volume.id }));
          if (status !== volume.status) ctx.volume = await tx.volumes.transition(volume.id, [volume.status], status);
          else ctx.volume = volume;
          return updated;
        });
        return { attachmentId: attachment.id };
      },
    },
  ];
}

/** A value a step needs from an earlier one; missing means a pipeline bug, not user error. */
export function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new BerthError('INTERNAL', `pipeline bug: ${what} is missing at this step`);
  return value;
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
): Promise<Attachment> {
  return store.transaction(async (tx) => {
    const volume = await tx.volumes.require(volumeId);
    const existing = (await tx.attachments.list({ volumeId: volume.id })).filter((a) => a.status !== 'detached');
    if (!volume.multiattach && existing.length > 0) {
      throw new BerthError('CONFLICT', `volume ${volume.name} is already attached (status ${volume.status})`, {
        hint: 'detach it first, or create it with --multiattach',
        details: { volumeId: volume.id, actual: volume.status },
      });
    }
    if (existing.some((a) => a.serverId === server.id)) {
      throw new BerthError('CONFLICT', `volume ${volume.name} is already attached to server ${server.name}`, {
        details: { volumeId: volume.id, serverId: server.id },
      });
    }
    if (!reservableFrom(volume.multiattach).includes(volume.status)) {
      throw new BerthError('CONFLICT', `volume ${volume.name} is ${volume.status}; it must be available to attach`, {
        details: { volumeId: volume.id, actual: volume.status, expected: 'available' },
      });
    }
    // CAS from the status read in this transaction: a concurrent writer makes it fail.
    const next = recomputeVolumeStatus([...existing, { status: 'reserved' }]);
    await tx.volumes.transition(volume.id, [volume.status], next);
    return tx.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: server.hostId, mode });
  });
}
