import { BerthError } from '../errors.js';
import type { Attachment, Server, Volume } from '../model.js';
import { attachedToServer } from '../pipeline/attach.js';
import { detachableFrom } from '../pipeline/detach.js';
import type { Ref } from '../service.js';
import type { Store } from '../store.js';
import { busyVolumeHint, reservableStatuses } from '../transitions.js';
import { resolveServer } from './resolve.js';

/** Refuse early what the reserve CAS would refuse anyway, so callers get a 409 at once. */
export async function preflightAttach(store: Store, volume: Volume, server: Server): Promise<void> {
  const active = (await store.attachments.list({ volumeId: volume.id })).filter((a) => a.status !== 'detached');
  const mine = active.find((a) => a.serverId === server.id);
  if (mine !== undefined) throw attachedToServer(volume, server, mine);
  if (!reservableStatuses(volume.multiattach).includes(volume.status)) {
    throw new BerthError('CONFLICT', `volume ${volume.name} is ${volume.status}; it must be available to attach`, {
      hint: volume.status === 'in-use' ? `detach it first (berth detach ${volume.name}), or create volumes with --multiattach` : busyVolumeHint(volume, active),
      details: { volumeId: volume.id, actual: volume.status, expected: 'available' },
    });
  }
}

/** The one attachment of `volume` a detach names (by id or server), refused unless it can be detached. */
export async function findAttachmentToDetach(
  store: Store,
  volume: Volume,
  which: { attachmentId: string | undefined; server: Ref | undefined; project: string; force: boolean },
): Promise<Attachment> {
  let candidates = (await store.attachments.list({ volumeId: volume.id })).filter((a) => a.status !== 'detached');
  if (which.attachmentId) candidates = candidates.filter((a) => a.id === which.attachmentId);
  if (which.server !== undefined) {
    const server = await resolveServer(store, which.server, which.project);
    candidates = candidates.filter((a) => a.serverId === server.id);
  }
  if (candidates.length === 0 && which.attachmentId !== undefined) {
    // Not "not attached": the volume may well be; the attachment named is not one of its own.
    throw new BerthError('NOT_FOUND', `volume ${volume.name} has no attachment ${which.attachmentId}${which.server ? ` to ${which.server}` : ''}`, {
      hint: `see its attachments with \`berth attachment list --volume ${volume.name}\``,
      details: { volumeId: volume.id, attachmentId: which.attachmentId },
    });
  }
  if (candidates.length === 0) {
    throw new BerthError('CONFLICT', `volume ${volume.name} is not attached${which.server ? ` to ${which.server}` : ''}`, {
      hint: 'see where it is attached with `berth attachment list`',
      details: { volumeId: volume.id, actual: volume.status },
    });
  }
  if (candidates.length > 1) {
    throw new BerthError('VALIDATION', `volume ${volume.name} is attached to ${candidates.length} servers; name one with --server`, {
      details: { servers: candidates.map((a) => a.serverId) },
    });
  }
  const attachment = candidates[0]!;
  if (!detachableFrom(which.force).includes(attachment.status)) {
    throw new BerthError('CONFLICT', `attachment ${attachment.id} is ${attachment.status}${which.force ? '' : '; only an attached volume can be detached'}`, {
      hint: attachment.status.startsWith('error') ? `clean it up with: berth detach ${volume.name} --force` : 'wait for the running operation to finish',
      details: { attachmentId: attachment.id, actual: attachment.status },
    });
  }
  return attachment;
}
