import { describe, expect, it } from 'vitest';
import { BerthError } from './errors.js';
import { ATTACHMENT_STATUSES, VOLUME_STATUSES, type AttachmentStatus, type VolumeStatus } from './model.js';
import {
  assertAttachmentTransition,
  assertVolumeTransition,
  ATTACHMENT_TRANSITIONS,
  canTransitionAttachment,
  canTransitionVolume,
  recomputeVolumeStatus,
  reservableStatuses,
  VOLUME_TRANSITIONS,
} from './transitions.js';

/** The volume transitions berth makes, written out independently of the table. */
const ALLOWED_VOLUME = new Set<string>([
  'creating>available', 'creating>error',
  'available>reserved', 'available>extending', 'available>deleting', 'available>error',
  'reserved>reserved', 'reserved>attaching', 'reserved>available', 'reserved>in-use', 'reserved>error',
  'attaching>attaching', 'attaching>in-use', 'attaching>reserved', 'attaching>available', 'attaching>error',
  'in-use>in-use', 'in-use>detaching', 'in-use>error',
  'detaching>detaching', 'detaching>available', 'detaching>in-use', 'detaching>error',
  'extending>available', 'extending>error',
  'deleting>error',
  'error>available', 'error>in-use', 'error>deleting', 'error>detaching', 'error>error',
]);

const ALLOWED_ATTACHMENT = new Set<string>([
  'reserved>attaching', 'reserved>error_attaching',
  'attaching>attached', 'attaching>reserved', 'attaching>error_attaching',
  'attached>detaching', 'attached>error_detaching',
  'detaching>detached', 'detaching>attached', 'detaching>error_detaching',
  'error_attaching>attaching', 'error_attaching>detaching',
  'error_detaching>detaching', 'error_detaching>attached',
]);

describe('volume transitions', () => {
  const pairs = VOLUME_STATUSES.flatMap((from) => VOLUME_STATUSES.map((to) => [from, to] as [VolumeStatus, VolumeStatus]));

  it.each(pairs)('%s → %s is allowed exactly when listed', (from, to) => {
    const allowed = ALLOWED_VOLUME.has(`${from}>${to}`);
    expect(canTransitionVolume(from, to)).toBe(allowed);
    if (allowed) {
      expect(() => assertVolumeTransition([from], to)).not.toThrow();
    } else {
      let thrown: unknown;
      try {
        assertVolumeTransition([from], to);
      } catch (error) {
        thrown = error;
      }
      expect(BerthError.is(thrown) && thrown.code).toBe('INVALID_STATE');
    }
  });

  it('the table lists nothing the test does not', () => {
    const listed = Object.entries(VOLUME_TRANSITIONS).flatMap(([from, tos]) => tos.map((to) => `${from}>${to}`));
    expect(new Set(listed)).toEqual(ALLOWED_VOLUME);
  });

  it('refuses a CAS whose from-list contains one forbidden status', () => {
    expect(() => assertVolumeTransition(['available', 'in-use'], 'reserved')).toThrow(/in-use to reserved/);
  });
});

describe('attachment transitions', () => {
  const pairs = ATTACHMENT_STATUSES.flatMap((from) =>
    ATTACHMENT_STATUSES.map((to) => [from, to] as [AttachmentStatus, AttachmentStatus]),
  );

  it.each(pairs)('%s → %s is allowed exactly when listed', (from, to) => {
    const allowed = ALLOWED_ATTACHMENT.has(`${from}>${to}`);
    expect(canTransitionAttachment(from, to)).toBe(allowed);
    if (allowed) expect(() => assertAttachmentTransition([from], to)).not.toThrow();
    else expect(() => assertAttachmentTransition([from], to)).toThrow(BerthError);
  });

  it('the table lists nothing the test does not', () => {
    const listed = Object.entries(ATTACHMENT_TRANSITIONS).flatMap(([from, tos]) => tos.map((to) => `${from}>${to}`));
    expect(new Set(listed)).toEqual(ALLOWED_ATTACHMENT);
  });

  it('a detached attachment never changes again', () => {
    expect(ATTACHMENT_TRANSITIONS.detached).toEqual([]);
  });
});

describe('recomputeVolumeStatus', () => {
  const of = (...statuses: AttachmentStatus[]) => statuses.map((status) => ({ status }));

  it.each([
    [[], 'available'],
    [['detached'], 'available'],
    [['reserved'], 'reserved'],
    [['attaching'], 'attaching'],
    [['attached'], 'in-use'],
    [['detaching'], 'detaching'],
    [['error_attaching'], 'error'],
    [['error_detaching'], 'error'],
    [['attached', 'reserved'], 'in-use'],
    [['attached', 'detaching'], 'in-use'],
    [['attaching', 'detaching'], 'attaching'],
    [['detaching', 'reserved'], 'detaching'],
    [['reserved', 'error_attaching'], 'reserved'],
    [['attached', 'error_detaching'], 'in-use'],
    [['detached', 'detached', 'reserved'], 'reserved'],
  ] as Array<[AttachmentStatus[], VolumeStatus]>)('%j → %s', (statuses, expected) => {
    expect(recomputeVolumeStatus(of(...statuses))).toBe(expected);
  });

  it('does not depend on the order of attachments', () => {
    const statuses: AttachmentStatus[] = ['reserved', 'detaching', 'attaching', 'error_attaching'];
    const forward = recomputeVolumeStatus(of(...statuses));
    expect(recomputeVolumeStatus(of(...statuses.reverse()))).toBe(forward);
  });
});

describe('reservableStatuses', () => {
  it('reserves a single-attach volume only when available', () => {
    expect(reservableStatuses(false)).toEqual(['available']);
  });

  it('reserves a multiattach volume while others attach or use it, never while it changes otherwise', () => {
    expect([...reservableStatuses(true)].sort()).toEqual(['attaching', 'available', 'in-use', 'reserved']);
    for (const status of ['creating', 'detaching', 'extending', 'deleting', 'error'] as const) {
      expect(reservableStatuses(true)).not.toContain(status);
    }
  });

  it('names only statuses from which the volume table allows reserved or in-use', () => {
    for (const status of reservableStatuses(true)) {
      expect(canTransitionVolume(status, status === 'available' ? 'reserved' : status)).toBe(true);
    }
  });
});
