import { BerthError } from './errors.js';
import type { Attachment, AttachmentStatus, Volume, VolumeStatus } from './model.js';

/**
 * Every volume status change berth may make. A change not listed here is a bug or a race and is
 * refused (409-class), never written. Self-transitions are listed where a compare-and-swap must
 * guard a no-op (a second reservation of a multiattach volume). Every change `recomputeVolumeStatus`
 * can make while attachments of a multiattach volume come and go is listed (transitions.test.ts
 * walks every reachable set of up to 3): one attachment detaching, or failing, while another is
 * reserved or being attached (`detaching` → `reserved` / `attaching`, `in-use` → `attaching` /
 * `reserved`, `attaching` → `detaching`, `reserved` → `detaching`). Refused, the detach's last commit failed
 * past its point of no return and left the attachment `detaching` with no operation, and the
 * volume wedged (a review, with two real CLI processes).
 */
export const VOLUME_TRANSITIONS: Readonly<Record<VolumeStatus, readonly VolumeStatus[]>> = {
  creating: ['available', 'error'],
  available: ['reserved', 'extending', 'deleting', 'error'],
  reserved: ['reserved', 'attaching', 'available', 'in-use', 'detaching', 'error'],
  attaching: ['attaching', 'in-use', 'reserved', 'detaching', 'available', 'error'],
  'in-use': ['in-use', 'detaching', 'attaching', 'reserved', 'error'],
  detaching: ['detaching', 'reserved', 'attaching', 'available', 'in-use', 'error'],
  extending: ['available', 'error'],
  // back to `available` when the backend removed nothing (`details.untouched`: a read-only directory).
  deleting: ['available', 'error'],
  error: ['available', 'in-use', 'deleting', 'detaching', 'error'],
};

/** Every attachment status change berth may make (deletion is not a status). */
export const ATTACHMENT_TRANSITIONS: Readonly<Record<AttachmentStatus, readonly AttachmentStatus[]>> = {
  reserved: ['attaching', 'error_attaching'],
  attaching: ['attached', 'reserved', 'error_attaching'],
  attached: ['detaching', 'error_detaching'],
  detaching: ['detached', 'attached', 'error_detaching'],
  detached: [],
  error_attaching: ['attaching', 'detaching'],
  error_detaching: ['detaching', 'attached'],
};

/** Whether a volume may go from `from` to `to`. */
export function canTransitionVolume(from: VolumeStatus, to: VolumeStatus): boolean {
  return VOLUME_TRANSITIONS[from].includes(to);
}

/** Whether an attachment may go from `from` to `to`. */
export function canTransitionAttachment(from: AttachmentStatus, to: AttachmentStatus): boolean {
  return ATTACHMENT_TRANSITIONS[from].includes(to);
}

/** Throw INVALID_STATE unless every `from` may become `to` (checked before any CAS write). */
export function assertVolumeTransition(from: readonly VolumeStatus[], to: VolumeStatus): void {
  for (const status of from) {
    if (!canTransitionVolume(status, to)) {
      throw new BerthError('INVALID_STATE', `a volume cannot go from ${status} to ${to}`, {
        details: { from: status, to },
      });
    }
  }
}

/** Throw INVALID_STATE unless every `from` may become `to`. */
export function assertAttachmentTransition(from: readonly AttachmentStatus[], to: AttachmentStatus): void {
  for (const status of from) {
    if (!canTransitionAttachment(status, to)) {
      throw new BerthError('INVALID_STATE', `an attachment cannot go from ${status} to ${to}`, {
        details: { from: status, to },
      });
    }
  }
}

/**
 * A volume's status from its attachments (Cinder's priority: attached > attaching > detaching >
 * reserved > available). An attachment stuck in an error state makes the volume `error`, so it is
 * not attached again before `berth detach --force` or `berth reconcile` has cleaned the host.
 * Detached attachments do not count.
 */
export function recomputeVolumeStatus(attachments: ReadonlyArray<{ status: AttachmentStatus }>): VolumeStatus {
  const has = (s: AttachmentStatus): boolean => attachments.some((a) => a.status === s);
  if (has('attached')) return 'in-use';
  if (has('attaching')) return 'attaching';
  if (has('detaching')) return 'detaching';
  if (has('reserved')) return 'reserved';
  if (has('error_attaching') || has('error_detaching')) return 'error';
  return 'available';
}

/**
 * The volume statuses a new attachment may be reserved from: only `available`, or for a
 * multiattach volume also while other attachments are being made or are in use.
 */
export function reservableStatuses(multiattach: boolean): readonly VolumeStatus[] {
  return multiattach ? ['available', 'reserved', 'attaching', 'in-use'] : ['available'];
}

/**
 * What to do about a volume in `status` that an attach or extend refuses: an `error` volume
 * without attachments is one a failed delete or create left (delete it again); with one left in an
 * error state, that attachment is cleaned up by a forced detach; anything else is busy.
 */
export function busyVolumeHint(volume: Pick<Volume, 'name' | 'status'>, attachments: readonly Pick<Attachment, 'status'>[]): string {
  if (volume.status === 'in-use' || (volume.status === 'error' && attachments.some((a) => a.status.startsWith('error')))) {
    const force = attachments.some((a) => a.status.startsWith('error')) ? ' --force' : '';
    return `detach it first: berth detach ${volume.name}${force}`;
  }
  if (volume.status === 'error') {
    return `a delete or create of it failed partway (its storage may be gone in part): delete it again with \`berth volume delete ${volume.name}\``;
  }
  return 'wait for the running operation, see `berth operation list --state running`';
}

/**
 * Why `volume` cannot be deleted while it has `attachments` (live or left in an error state):
 * CONFLICT with the detach to run first; `undefined` when it has none. The service decides under
 * the volume lock; the CLI asks it before its confirmation question too.
 */
export function volumeInUseError(volume: Pick<Volume, 'id' | 'name' | 'status'>, attachments: readonly Pick<Attachment, 'status'>[]): BerthError | undefined {
  if (attachments.length === 0) return undefined;
  return new BerthError('CONFLICT', `volume ${volume.name} has ${attachments.length} attachment(s)`, {
    hint: `detach it first: berth detach ${volume.name}${attachments.some((a) => a.status.startsWith('error')) ? ' --force' : ''}`,
    details: { volumeId: volume.id, actual: volume.status },
  });
}
