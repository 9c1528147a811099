import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  AGENT_PROTOCOL,
  HOST_STEP_SCHEMAS,
  WORK_DONE_CHANNEL,
  WORK_DONE_ITEM_MAX_BYTES,
  hostChannel,
  parseWorkDoneNotice,
  workDoneNotice,
  zAgentRegistration,
  zHostStepName,
} from './agent-protocol.js';
import { zWorkItemStep, type WorkItem } from './work-item.js';

describe('agent protocol', () => {
  it('names channels the store accepts (lower-case, at most 63 characters)', () => {
    const channel = hostChannel(randomUUID());
    expect(channel).toHaveLength(37);
    for (const name of [channel, WORK_DONE_CHANNEL]) expect(name).toMatch(/^[a-z_][a-z0-9_]{0,62}$/);
  });

  it('announces a finished work item whole, or by its id when it is too large for a notification', () => {
    const now = new Date().toISOString();
    const item: WorkItem = {
      id: randomUUID(),
      operationId: randomUUID(),
      hostId: randomUUID(),
      step: 'connect',
      state: 'done',
      payload: {},
      result: { device: { path: '/dev/sdb', type: 'block' } },
      error: null,
      attempts: 1,
      leaseOwner: null,
      leaseExpiresAt: null,
      createdAt: now,
      updatedAt: now,
    };
    expect(parseWorkDoneNotice(workDoneNotice(item))).toEqual({ id: item.id, item });
    const large = { ...item, payload: { note: 'x'.repeat(WORK_DONE_ITEM_MAX_BYTES) } };
    expect(workDoneNotice(large)).toBe(item.id);
    // An id alone (a large item, or an older replica's notice) asks the waiter to read the item.
    expect(parseWorkDoneNotice(item.id)).toEqual({ id: item.id });
  });

  it('has a payload and a result schema for every host step, and every step name fits a work item', () => {
    expect(Object.keys(HOST_STEP_SCHEMAS).sort()).toEqual([...zHostStepName.options].sort());
    for (const step of zHostStepName.options) expect(zWorkItemStep.safeParse(step).success).toBe(true);
  });

  it('works across versions: a field the other side added is dropped, a field it lacks reads as before', () => {
    // A newer agent answers connect with a field this replica does not know: dropped, the rest kept.
    const device = { path: '/dev/sdb', type: 'block', scsi_wwn: '360000000000000000e00000000010001' };
    const newer = HOST_STEP_SCHEMAS.connect.result.parse({ device, hostRoot: '/', multiqueue: 4 });
    expect(newer).toEqual({ device, hostRoot: '/' });
    // An older agent answers without hostRoot (recorded as unknown).
    expect(HOST_STEP_SCHEMAS.connect.result.parse({ device })).toEqual({ device });
    // An older replica's unpublish_orphan has no transport: the path is taken as it is.
    const orphan = HOST_STEP_SCHEMAS.unpublish_orphan.payload.parse({ consumer: 'host', volumeId: 'v-1', device });
    expect(orphan.transport).toBeUndefined();
  });

  it("carries a listed device's storageGone from the agent; an older agent's listing without it reads as nothing known, a newer agent's unknown kind as gone", () => {
    const entry = { device: { path: '/dev/loop3', type: 'block' }, source: { device_path: '/v/a.img', deleted: true } };
    const listing = { transport: 'loop', protocol: 'file', sourceKeys: ['device_path'], repairsPaths: false };
    const gone = HOST_STEP_SCHEMAS.host_facts.result.parse({ listings: [{ ...listing, devices: [{ ...entry, storageGone: 'replaced' }] }], unchecked: [] });
    expect(gone.listings[0]?.devices[0]?.storageGone).toBe('replaced');
    const older = HOST_STEP_SCHEMAS.host_facts.result.parse({ listings: [{ ...listing, devices: [entry] }], unchecked: [] });
    expect(older.listings[0]?.devices[0]).toEqual(entry);
    // A kind a newer agent knows and this berth does not: still gone (never a failed listing).
    const newer = HOST_STEP_SCHEMAS.host_facts.result.parse({ listings: [{ ...listing, devices: [{ ...entry, storageGone: 'hidden-by-mount' }] }], unchecked: [] });
    expect(newer.listings[0]?.devices[0]?.storageGone).toBe('replaced');
    const deleted = HOST_STEP_SCHEMAS.host_facts.result.parse({ listings: [{ ...listing, devices: [{ ...entry, storageGone: 'deleted' }] }], unchecked: [] });
    expect(deleted.listings[0]?.devices[0]?.storageGone).toBe('deleted');
  });

  it('registers agents of the first protocol (none sent) and of a later one', () => {
    const base = { instance: 'i-1', version: '0.1.0', connector: { host: 'h1', platform: 'x86_64', os_type: 'linux', multipath: false }, transports: ['loop'], consumers: ['host'] };
    expect(zAgentRegistration.parse(base).protocol).toBeUndefined();
    expect(zAgentRegistration.parse({ ...base, protocol: AGENT_PROTOCOL + 1, futureField: true })).not.toHaveProperty('futureField');
    expect(zAgentRegistration.safeParse({ ...base, protocol: 0 }).success).toBe(false);
  });
});
