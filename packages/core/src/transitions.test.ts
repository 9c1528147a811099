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
  'reserved>reserved', 'reserved>attaching', 'reserved>available', 'reserved>in-use', 'reserved>detaching', 'reserved>error',
  'attaching>attaching', 'attaching>in-use', 'attaching>reserved', 'attaching>detaching', 'attaching>available', 'attaching>error',
  'in-use>in-use', 'in-use>attaching', 'in-use>reserved', 'in-use>detaching', 'in-use>error',
  'detaching>detaching', 'detaching>reserved', 'detaching>attaching', 'detaching>available', 'detaching>in-use', 'detaching>error',
  'extending>available', 'extending>error',
  'deleting>available', 'deleting>error',
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

  it('lists every change recomputeVolumeStatus makes as a multiattach volume\'s attachments come and go (up to 3 at once)', () => {
    // Every set of attachments a multiattach volume can reach from none, one move at a time, as the
    // pipelines make them: a new reservation (while the volume is reservable), an attachment's
    // allowed transition (`detached` is its deletion; `error_attaching` → `attaching` is in the
    // table but no pipeline makes it), or a reservation's deletion (a reserve undone).
    const unused = new Set(['error_attaching>attaching']);
    const key = (set: readonly AttachmentStatus[]): string => [...set].sort().join(',');
    const seen = new Map<string, AttachmentStatus[]>([['', []]]);
    const queue: AttachmentStatus[][] = [[]];
    const missing = new Set<string>();
    while (queue.length > 0) {
      const set = queue.shift()!;
      const from = recomputeVolumeStatus(set.map((status) => ({ status })));
      const next: AttachmentStatus[][] = [];
      if (set.length < 3 && reservableStatuses(true).includes(from)) next.push([...set, 'reserved']);
      set.forEach((status, i) => {
        const others = set.filter((_, j) => j !== i);
        if (status === 'reserved') next.push(others);
        for (const to of ATTACHMENT_TRANSITIONS[status]) {
          if (!unused.has(`${status}>${to}`)) next.push(to === 'detached' ? others : [...others, to]);
        }
      });
      for (const after of next) {
        const to = recomputeVolumeStatus(after.map((status) => ({ status })));
        if (to !== from && !canTransitionVolume(from, to)) missing.add(`${from}>${to} (${key(set)} → ${key(after)})`);
        if (!seen.has(key(after))) {
          seen.set(key(after), after);
          queue.push(after);
        }
      }
    }
    expect([...missing]).toEqual([]);
  });

  it('refuses a CAS whose from-list contains one forbidden status', () => {
    expect(() => assertVolumeTransition(['available', 'deleting'], 'reserved')).toThrow(/deleting to reserved/);
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
