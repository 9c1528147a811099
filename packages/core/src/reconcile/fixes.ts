import { redactConnectionInfo, withAccessMode, type ConnectionInfo, type Connector, type Device } from '../connection.js';
import type { HostStepCall, HostSteps } from '../host-steps/host-steps.js';
import type { Consumer, GuestDisk, Publication } from '../contracts/consumer.js';
import type { ConnectedDevice } from '../contracts/transport-driver.js';
import { sameDevice } from '../device-identity.js';
import { BerthError, toBerthError } from '../errors.js';
import { consumerNameFor, guestKey, localGuestKey } from '../hypervisor.js';
import type { Attachment, Host, Server, Volume } from '../model.js';
import { backendVolume, transitionAttachment, type PipelineContext, type PipelineDeps } from '../pipeline/context.js';
import { detachSteps, markDetachFailed } from '../pipeline/detach.js';
import { connectShared, publishShared, publishSharedPublication, releaseShared, withDeviceLease, withExportLease } from '../pipeline/device-sharing.js';
import { summarize, unsettledBy, type OperationRunner } from '../pipeline/operation-runner.js';
import { recomputeVolumeStatus } from '../transitions.js';
import { freshVolume } from './facts.js';
import { accountsForExport, live, volumeRepairPath, type Finding } from './findings.js';

// What reconcile does about each finding, under the volume's lock, after checking again that
// the fix is still needed (a `Skip` says it is not).

/** What reconcile needs from the rest of berth. */
export interface ReconcileDeps extends PipelineDeps {
  /**
   * The consumer that publishes `server`'s volumes (`serverConsumer`: its hypervisor's, else the
   * default): a finished detach unplugs from the server's guest, a reconnect plugs into it.
   */
  consumer(server: Server, host?: Host): Consumer;
  /** Runs the detach pipeline for `finish_detach`. */
  runner: OperationRunner;
  /** Run `fn` holding the volume's lock (the one attach and detach take). */
  withVolumeLock<T>(volumeId: string, fn: () => Promise<T>): Promise<T>;
}

/** Why a fix was not applied after all (the state changed since it was found). */
export class Skip extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

export const BUSY = 'an operation on this volume started; run reconcile again when it has finished';

/** Apply one fix, after checking (under the volume lock) that it is still needed; resolves with what it did. */
/** Where a fix runs: the reconciled host, its host-step executor, and the `reconcile` operation. */
export interface FixTarget {
  host: Host;
  steps: HostSteps;
  operationId: string;
}

export async function fixOf(deps: ReconcileDeps, finding: Finding, target: FixTarget): Promise<string> {
  const { store, catalog, config } = deps;
  const signal = AbortSignal.timeout(config.operationTimeoutMs);
  const volumeId = finding.kind === 'export_without_attachment' ? finding.export.volumeId : finding.volume.id;
  const fresh = await freshVolume(store, volumeId);
  if (!fresh) throw new Skip('the volume was deleted meanwhile');
  if (fresh.busy) throw new Skip(BUSY);
  const { host, steps, operationId } = target;

  switch (finding.kind) {
    case 'export_without_attachment': {
      if (fresh.attachments.some((a) => accountsForExport(a, finding.export.initiator))) throw new Skip('an attachment accounts for it now');
      const connector = await connectorFor(deps, finding.export.initiator);
      // Decided again under the export's lease: an attach that exported it meanwhile holds the
      // lease until its record says so.
      await withExportLease(deps, fresh.volume, signal, async () => {
        const now = live(await store.attachments.list({ volumeId }));
        if (now.some((a) => accountsForExport(a, finding.export.initiator))) throw new Skip('an attachment accounts for it now');
        await catalog.backend(finding.backend).terminateConnection(backendVolume(fresh.volume), connector, signal);
      });
      return `export to ${finding.export.initiator ?? 'any host'} removed`;
    }
    case 'device_without_attachment': {
      const { record, connected } = finding;
      if (fresh.attachments.some((a) => a.hostId === host.id && a.device !== null)) throw new Skip('an attachment uses the volume on this host now');
      if (record && !(await store.devices.get(host.id, record.volumeId))) throw new Skip('the record is gone');
      // The source is in connection_info terms: it is the connection the device was made from, minus secrets.
      const data: Record<string, unknown> = { ...(connected?.source ?? {}) };
      delete data.deleted;
      const connection = record?.connectionInfo ?? ({ driver_volume_type: finding.protocol, data } as ConnectionInfo);
      const device = record?.device ?? connected?.device;
      // What was published for it goes first, while the device still holds its name: once it is
      // disconnected the kernel hands the name to the next disk, which another volume's attach may
      // publish meanwhile (under its own lock, not this one's). Names live records hold stay.
      if (connected) await unpublishOrphan(deps, steps, fresh.volume, { device: connected.device, transport: finding.transport }, { operationId, signal });
      // Under the volume's device lease, identity-checked, and not forced: a device something holds
      // open (someone's mount of a volume file) is left alone, the fix fails naming the holder.
      const outcome = await releaseShared(deps, {
        steps,
        operationId,
        hostId: host.id,
        volume: fresh.volume,
        transport: finding.transport,
        connection,
        ...(device ? { device } : {}),
        force: false,
        signal,
      });
      return outcome.identityMismatch || !connected ? `${device?.path ?? 'the device'} was already gone${record ? '; record removed' : ''}` : `${connected.device.path} disconnected`;
    }
    case 'attachment_device_gone':
      return reconnect(deps, finding.attachment.id, fresh.volume, { ...target, signal });
    case 'attachment_path_failed':
      return repairPaths(deps, finding.attachment.id, fresh.volume, finding.transport, finding.listed, { ...target, signal });
    case 'attachment_storage_gone':
    case 'volume_storage_missing':
    case 'volume_storage_short':
      // Report-only: the finding is always skipped, and this is never reached.
      throw new Skip(finding.skip);
    case 'attachment_stuck':
    case 'attachment_error':
      return finishDetach(deps, finding.attachment, fresh.volume);
    case 'guest_disk_without_attachment':
      return unplugGuestDisk(deps, finding, fresh.attachments, { ...target, signal });
    case 'attachment_missing_from_guest':
      return replug(deps, finding, fresh.volume, { ...target, signal });
    case 'attachment_not_published':
      return republish(deps, finding, fresh.volume, { ...target, signal });
    case 'volume_status_mismatch':
      return store.transaction(async (tx) => {
        const volume = await tx.volumes.require(volumeId);
        const expected = recomputeVolumeStatus(live(await tx.attachments.list({ volumeId })));
        if (expected === volume.status) throw new Skip(`it is ${expected} now`);
        const path = volumeRepairPath(volume.status, expected);
        if (!path) {
          throw new BerthError('INVALID_STATE', `no transition leads a volume from ${volume.status} to ${expected}`, { details: { volumeId, from: volume.status, to: expected } });
        }
        let from = volume.status;
        for (const to of path) {
          await tx.volumes.transition(volumeId, [from], to);
          from = to;
        }
        return `${volume.status} → ${expected}`;
      });
  }
}

/**
 * Ask the consumer, on the device's host, to take down what it published for an orphaned device
 * (`Consumer.unpublishOrphan`: no attachment names the server any more, so it gets the volume's
 * id and the device only; the host consumer removes `/dev/berth/<volume-id>` when, and only when,
 * it still leads to that device: a loop number is reused for the next file attached), before the
 * device is disconnected, and never a name a live record on the host holds (`keep`). Best effort:
 * the device goes either way.
 */
async function unpublishOrphan(deps: ReconcileDeps, steps: HostSteps, volume: Volume, listed: { device: Device; transport: string }, call: HostStepCall): Promise<void> {
  const consumer = deps.config.consumer;
  const { device } = listed;
  try {
    // Every attachment on the host, whatever its state (one being attached has its row from its
    // reserve on, before it publishes anything), and its volume: their names stay.
    const live = await deps.store.attachments.list({ hostId: steps.host.id });
    const keep = [...new Set(live.flatMap((a) => [a.id, a.volumeId]))];
    const { supported } = await steps.run('unpublish_orphan', { consumer, volumeId: volume.id, ...listed, keep }, call);
    if (!supported) deps.logger.warn({ volumeId: volume.id, device: device.path, consumer }, 'reconcile: the consumer cannot drop what it published without a record; left as it is');
  } catch (error) {
    deps.logger.warn({ volumeId: volume.id, device: device.path, err: toBerthError(error).message }, 'reconcile: could not unpublish an orphaned device');
  }
}

/** The connector an export was made for: the stored one of the host with that initiator, else a minimal one. */
async function connectorFor(deps: ReconcileDeps, initiator: string | undefined): Promise<Connector> {
  if (initiator === undefined) return deps.baseConnector();
  for (const host of await deps.store.hosts.list()) {
    if (host.connector && (host.connector.initiator === initiator || host.connector.host === initiator)) return host.connector;
  }
  const base = deps.baseConnector();
  return /^(iqn|eui|naa)\./.test(initiator) ? { ...base, initiator } : { ...base, host: initiator };
}

/**
 * Connect an attached volume whose device is gone again, as a reboot does in Nova: export it
 * again (the stored connection_info has no secrets), connect with the attachment's transport
 * (shared and recorded like any attach: every attachment of the volume on this host that recorded
 * the lost device gets the new one), publish, record the device. When any of it fails the
 * attachment becomes `error_detaching` with the reason (the volume `error`), and its stale links
 * are removed, so nobody uses a device that may now be another volume's; `berth detach --force`
 * or the next `berth reconcile` finishes it.
 */
async function reconnect(deps: ReconcileDeps, attachmentId: string, volume: Volume, target: FixTarget & { signal: AbortSignal }): Promise<string> {
  const { steps, operationId, signal } = target;
  const { store, catalog } = deps;
  const attachment = await store.attachments.get(attachmentId);
  if (attachment?.status !== 'attached') throw new Skip(`the attachment is ${attachment?.status ?? 'deleted'} now`);
  const transportName = attachment.transport;
  if (!transportName) throw new Skip('the attachment has no transport');
  // Refused before anything is touched when the transport is not installed here.
  const transport = catalog.transport(transportName).name;
  const server = await store.servers.require(attachment.serverId);
  if (attachment.hostId !== target.host.id) throw new Skip('the attachment is on another host now');
  const consumer = deps.consumer(server, target.host);
  const lost = attachment.device;
  try {
    const connector = attachment.connector ?? deps.baseConnector();
    const exported = await catalog.backend(volume.backend).initializeConnection(backendVolume(volume), connector, signal);
    const connection = withAccessMode(exported, attachment.mode);
    await store.attachments.update(attachment.id, { device: null, connectionInfo: redactConnectionInfo(connection) });
    // The others that recorded the lost device let go of it too, so the device is connected anew.
    const stale = (await store.attachments.list({ volumeId: volume.id, hostId: attachment.hostId })).filter(
      (a) => a.id !== attachment.id && a.status === 'attached' && a.device !== null && lost !== null && sameDevice(a.device, lost),
    );
    for (const other of stale) await store.attachments.update(other.id, { device: null });
    await store.devices.delete(attachment.hostId, volume.id);
    const connected = await connectShared(deps, { steps, operationId, attachment: { ...attachment, device: null }, volume, transport, connection, connector, signal });
    for (const other of [connected.attachment, ...stale]) {
      const current = other.id === attachment.id ? connected.attachment : await store.attachments.update(other.id, { device: connected.device });
      const otherServer = other.id === attachment.id ? server : await store.servers.require(other.serverId);
      const path = await publishShared(deps, { steps, operationId, consumer, server: otherServer, attachment: current, volume, device: connected.device, signal });
      await store.attachments.update(other.id, { publishedPath: path, error: null });
    }
    return `reconnected at ${connected.device.path}${stale.length > 0 ? ` (with ${stale.length} other attachment(s) sharing it)` : ''}`;
  } catch (error) {
    const failure = toBerthError(error);
    // On the attachment's host (its executor), as the pipeline unpublishes: its stale links go.
    await steps
      .run('unpublish', { consumer: consumerNameFor(server, deps.config.consumer), server, attachment, stillShared: false }, { operationId, signal: AbortSignal.timeout(deps.config.undoTimeoutMs), undo: true })
      .catch(() => undefined);
    await transitionAttachment(store, attachment.id, ['attached'], 'error_detaching', { error: `its device was gone and reconnecting failed: ${failure.message}` }).catch(() => undefined);
    throw new BerthError(failure.code, `reconnecting failed, the attachment is now error_detaching: ${failure.message}`, {
      hint: `finish it with \`berth detach ${volume.name} --force\` (or \`berth reconcile\` again)`,
      cause: failure,
    });
  }
}

/** The disks the guest of `server` has now (undefined: it does not run, or cannot be listed). */
async function guestDisksNow(target: FixTarget & { signal: AbortSignal }, consumer: string, server: Server): Promise<GuestDisk[] | undefined> {
  const { disks } = await target.steps.run('guest_disks', { consumer, server }, { operationId: target.operationId, signal: target.signal });
  return disks ?? undefined;
}

/**
 * Unplug a disk with a berth volume's serial that no attachment of the server accounts for, once
 * it is checked again (under the volume lock) that none does and that the guest still has it.
 * Only the guest side: the host device, if berth connected one, is another finding's.
 */
async function unplugGuestDisk(
  deps: ReconcileDeps,
  finding: Extract<Finding, { kind: 'guest_disk_without_attachment' }>,
  attachments: readonly Attachment[],
  target: FixTarget & { signal: AbortSignal },
): Promise<string> {
  const { guest, disk } = finding;
  // A disk someone else plugged with the volume's serial (`plugged: false`) is accounted for by no attachment.
  const accountable = disk.plugged !== false;
  if (accountable && attachments.some((a) => a.serverId === guest.server.id)) throw new Skip('an attachment of the volume to that server accounts for it now');
  // Or to another server record of the same guest (made before berth refused a second one).
  const key = guest.key ?? guestKey(guest.server.hypervisor);
  for (const attachment of accountable ? attachments : []) {
    const server = await deps.store.servers.get(attachment.serverId);
    const other = server === undefined ? undefined : guest.key === undefined ? guestKey(server.hypervisor) : await localGuestKey(server.hypervisor);
    if (key !== undefined && server && other === key) throw new Skip(`an attachment of the volume to server ${server.name} (the same guest) accounts for it now`);
  }
  const now = await guestDisksNow(target, guest.consumer, guest.server);
  if (!now?.some((d) => d.id === disk.id && d.serial === disk.serial)) throw new Skip('the guest does not have it any more');
  await target.steps.run('unplug_guest_disk', { consumer: guest.consumer, server: guest.server, disk }, { operationId: target.operationId, signal: target.signal });
  deps.logger.info({ server: guest.server.name, disk: disk.id, volumeId: finding.volume.id }, 'reconcile: unplugged a guest disk no attachment accounts for');
  return `unplugged ${disk.id} from server ${guest.server.name}`;
}

/**
 * The consumer's publish of the attachment's recorded device, on its host (replug, republish),
 * once `stillNeeded` (run under the device lease, with the consumer's name on the host) and a
 * fresh read there say so: a detach in another process holds that lease while it takes the
 * device's names down, and must not find them made again for a device it then lets go of.
 */
function publishRecorded(
  deps: ReconcileDeps,
  target: FixTarget & { signal: AbortSignal },
  consumer: Consumer,
  server: Server,
  attachment: Attachment & { device: Device },
  volume: Volume,
  stillNeeded: (consumerName: string) => Promise<void> = async () => undefined,
): Promise<Publication> {
  const { steps, operationId, signal } = target;
  const device = attachment.device;
  return publishSharedPublication(deps, {
    steps,
    operationId,
    consumer,
    server,
    attachment,
    volume,
    device,
    signal,
    beforePublish: async (consumerName) => {
      const now = await deps.store.attachments.get(attachment.id);
      if (now?.status !== 'attached' || !now.device || !sameDevice(now.device, device)) throw new Skip(`the attachment is ${now?.status ?? 'deleted'} now, or records another device`);
      await stillNeeded(consumerName);
    },
  });
}

/**
 * Plug an attached volume back into a running guest that lost it (someone unplugged it behind
 * berth's back): the consumer's publish of the recorded host device, as the attach did, and the
 * guest's new name recorded. A failure leaves the attachment as it is (the host side is intact;
 * marking it error would have the next reconcile force-detach a volume its user wants): the fix
 * fails saying why.
 */
async function replug(
  deps: ReconcileDeps,
  finding: Extract<Finding, { kind: 'attachment_missing_from_guest' }>,
  volume: Volume,
  target: FixTarget & { signal: AbortSignal },
): Promise<string> {
  const { store } = deps;
  const { guest } = finding;
  const attachment = await store.attachments.get(finding.attachment.id);
  if (attachment?.status !== 'attached') throw new Skip(`the attachment is ${attachment?.status ?? 'deleted'} now`);
  if (!attachment.device) throw new Skip('its host device is gone: the reconnect fix publishes it into the guest again');
  const server = await store.servers.require(attachment.serverId);
  const now = await guestDisksNow(target, guest.consumer, server);
  if (now === undefined) throw new Skip('the guest does not run any more');
  if (now.some((d) => d.serial === attachment.volumeId)) throw new Skip('the guest has it now');
  const consumer = deps.consumer(server, target.host);
  const publication = await publishRecorded(deps, target, consumer, server, { ...attachment, device: attachment.device }, volume);
  await store.attachments.update(attachment.id, {
    publishedPath: publication.path,
    ...(publication.guestDevice === undefined ? {} : { guestDevice: publication.guestDevice }),
    error: null,
  });
  return `plugged into server ${server.name} again${publication.guestDevice ? ` (${publication.guestDevice})` : ''}`;
}

/**
 * Publish an attached volume again whose published names were removed or re-pointed behind
 * berth's back (the host consumer's `/dev/berth` links), once it is checked again, under the
 * volume lock, that the attachment still records the same device and that something is still
 * wrong: the consumer's publish of the recorded device (idempotent: a link is replaced in one
 * rename), as the attach did. The device and the attachment's state are not touched.
 */
async function republish(
  deps: ReconcileDeps,
  finding: Extract<Finding, { kind: 'attachment_not_published' }>,
  volume: Volume,
  target: FixTarget & { signal: AbortSignal },
): Promise<string> {
  const { store } = deps;
  const attachment = await store.attachments.get(finding.attachment.id);
  if (attachment?.status !== 'attached') throw new Skip(`the attachment is ${attachment?.status ?? 'deleted'} now`);
  if (!attachment.device || !finding.attachment.device || !sameDevice(attachment.device, finding.attachment.device)) {
    throw new Skip('the attachment records another device now');
  }
  const server = await store.servers.require(attachment.serverId);
  const consumer = deps.consumer(server, target.host);
  const call = { operationId: target.operationId, signal: target.signal };
  let problem = '';
  // Checked again under the device lease, by the name the host knows the consumer by.
  const publication = await publishRecorded(deps, target, consumer, server, { ...attachment, device: attachment.device }, volume, async (name) => {
    const [now] = (await target.steps.run('check_publications', { checks: [{ consumer: name, server, attachment }] }, call)).results;
    if (now?.error !== undefined) throw new BerthError('DRIVER_ERROR', `checking what the ${name} consumer published failed: ${now.error}`);
    if (!now?.supported) throw new Skip(`its ${name} consumer cannot check what it published`);
    if (now.problem === null) throw new Skip('it is published as it should be now');
    problem = now.problem;
  });
  if (publication.path !== attachment.publishedPath) await store.attachments.update(attachment.id, { publishedPath: publication.path });
  deps.logger.info({ attachmentId: attachment.id, volumeId: volume.id, problem }, 'reconcile: published an attachment again');
  return `published again at ${publication.path} (${problem})`;
}

/**
 * Put an attachment's device back on a live path, on its host (`repair_paths`: the transport
 * fails over, e.g. iscsi-user to another portal). The device is the very one listed (the
 * transport checks its identity); the store is not touched: the device and its path stay the same.
 */
async function repairPaths(
  deps: ReconcileDeps,
  attachmentId: string,
  volume: Volume,
  transport: string,
  listed: ConnectedDevice,
  target: FixTarget & { signal: AbortSignal },
): Promise<string> {
  const { steps, operationId, signal } = target;
  const found = await deps.store.attachments.get(attachmentId);
  if (found?.status !== 'attached') throw new Skip(`the attachment is ${found?.status ?? 'deleted'} now`);
  // Under the volume's device lease on its host, as an attach's connect and a detach's disconnect
  // are: a detach in another process that ran beside the repair removed the device and its state,
  // and the repair then wrote the state back and kept a session for nobody.
  return withDeviceLease(deps, found.hostId, volume, signal, async () => {
    const attachment = await deps.store.attachments.get(attachmentId);
    if (attachment?.status !== 'attached') throw new Skip(`the attachment is ${attachment?.status ?? 'deleted'} now`);
    const result = await steps.run('repair_paths', { transport, listed }, { operationId, signal });
    if (!result.supported) throw new Skip(`transport ${transport} on this host cannot repair paths`);
    // Nothing moved (every path dead, or none better): not "applied" — the device still has no live path.
    if (!result.changed) throw new Skip(`nothing to move: ${result.detail}`);
    return result.detail;
  });
}

/**
 * Finish an attachment an interrupted operation left (stuck in a transitional state) or a failed
 * one left in an error state, as `berth detach --force` does: a journalled detach operation that
 * goes on through host errors and ends by deleting the attachment, or leaves it
 * `error_detaching` with every error it met.
 */
async function finishDetach(deps: ReconcileDeps, found: Attachment, volume: Volume): Promise<string> {
  const { store } = deps;
  let attachment = await store.attachments.get(found.id);
  if (!attachment) throw new Skip('the attachment is gone now');
  // Only the state the finding saw: an operation that ended since (an attach now `attached`, a
  // detach rolled back) left it as it should be, and a forced detach would tear down a live device.
  if (attachment.status !== found.status) throw new Skip(`it is ${attachment.status} now`);
  const into = attachment.status === 'detaching' ? 'error_detaching' : attachment.status === 'reserved' || attachment.status === 'attaching' ? 'error_attaching' : undefined;
  if (into) {
    attachment = (await transitionAttachment(store, attachment.id, [attachment.status], into, { error: `left ${attachment.status} by an interrupted operation; reconcile finished it` })).attachment;
  }
  const server = await store.servers.require(attachment.serverId);
  const operation = await store.operations.create({
    kind: 'detach',
    volumeId: volume.id,
    serverId: server.id,
    attachmentId: attachment.id,
    hostId: attachment.hostId,
    owner: deps.owner,
    deadlineAt: new Date(Date.now() + deps.config.operationTimeoutMs).toISOString(),
  });
  const ctx: PipelineContext = {
    operationId: operation.id,
    volume,
    server,
    consumer: deps.consumer(server, await store.hosts.get(attachment.hostId)),
    backend: deps.catalog.backend(volume.backend),
    attachment,
    force: true,
    forcedErrors: [],
  };
  const outcome = await deps.runner.run(detachSteps(deps), ctx, {
    operationId: operation.id,
    signal: AbortSignal.timeout(deps.config.operationTimeoutMs),
    undoTimeoutMs: deps.config.undoTimeoutMs,
    logger: deps.logger.child({ operationId: operation.id, reconcile: true }),
    pipeline: 'detach',
  });
  if (outcome.ok) {
    await store.operations.finish(operation.id, { state: 'succeeded', result: { timings: outcome.timings, reconcile: true } });
    return `detached (operation ${operation.id})`;
  }
  // The database failed under it (`unsettledBy`): left `running` for recovery (this process's
  // next one, or its replica heartbeat's adoption), not settled half rolled back.
  const unsettled = unsettledBy(outcome) !== undefined;
  if (!unsettled) {
    if (outcome.forward) await markDetachFailed(deps, ctx, outcome.error).catch(() => undefined);
    await store.operations
      .finish(operation.id, { state: outcome.rolledBack ? 'rolled_back' : 'failed', error: summarize(outcome.error) })
      .catch(() => undefined);
  }
  throw new BerthError(outcome.error.code, `finishing the detach failed (operation ${operation.id}): ${outcome.error.message}`, {
    hint: unsettled
      ? 'the database failed under it: the operation stays running and recovery finishes it once the database is back (the next berth command; a running `berth serve` once its deadline and undo budget have passed)'
      : `${outcome.error.hint ? `${outcome.error.hint}; then ` : ''}run \`berth reconcile\` again`,
    cause: outcome.error,
  });
}
