import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, type Device } from '@berth/core';
import { createHostFs, type HostFs } from '@berth/host';
import { checkIdentity, identityAt, inUseBy, sameIdentity, scsiIdentity } from './device-identity.js';
import { addLun, buildDm, buildSessions, removeLun } from './test-kernel-tree.js';

const IQN = 'iqn.2026-01.test.berth:vol1';
const WWID_1 = 'naa.60000000000000000e00000000010001';
const WWID_2 = 'naa.60000000000000000e00000000010002';
const WWN_1 = '360000000000000000e00000000010001';

let root: string;
let fs: HostFs;

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-identity-'));
  fs = createHostFs(root);
  await buildSessions(root, [{ host: 2, sid: 1, iqn: IQN, address: '127.0.0.1', port: 3260, luns: [{ lun: 1, device: 'sda', wwid: WWID_1 }] }]);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const deviceOf = (identity: Device['identity'], devicePath = '/dev/sda'): Device => ({ path: devicePath, type: 'block', ...(identity === undefined ? {} : { identity }) });

describe('device identity', () => {
  it('reads a disk\'s session, H:C:T:L and WWN, and a map\'s uuid', async () => {
    expect(await identityAt(fs, 'sda')).toEqual({ kind: 'scsi', sessionId: 1, hctl: '2:0:0:1', wwn: WWN_1 });
    await buildDm(root, { name: WWN_1, dm: 'dm-0', uuid: `mpath-${WWN_1}`, slaves: ['sda'] });
    expect(await identityAt(fs, '/dev/dm-0')).toEqual({ kind: 'dm', uuid: `mpath-${WWN_1}`, wwn: WWN_1 });
    expect(await identityAt(fs, 'sdz')).toBeUndefined();
  });

  it('the same disk is `same`; a gone one is `gone`; a device without identity is `unknown`', async () => {
    const recorded = scsiIdentity(1, '2:0:0:1', WWN_1);
    expect(await checkIdentity(fs, deviceOf(recorded), 'detaching')).toMatchObject({ status: 'same' });
    expect(await checkIdentity(fs, deviceOf(undefined), 'detaching')).toEqual({ status: 'unknown' });
    await removeLun(root, { host: 2, sid: 1 }, { lun: 1, device: 'sda' });
    expect(await checkIdentity(fs, deviceOf(recorded), 'detaching')).toEqual({ status: 'gone' });
  });

  it('a reused name is a CONFLICT with reason identity-mismatch and a hint, naming both devices', async () => {
    const recorded = scsiIdentity(1, '2:0:0:1', WWN_1);
    await removeLun(root, { host: 2, sid: 1 }, { lun: 1, device: 'sda' });
    // The kernel gives sda to the next disk it scans: LUN 2.
    await addLun(root, { host: 2, sid: 1 }, { lun: 2, device: 'sda', wwid: WWID_2 });
    const error = await checkIdentity(fs, deviceOf(recorded), 'detaching LUN 1').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(BerthError.is(error) && error.code).toBe('CONFLICT');
    expect((error as BerthError).details).toMatchObject({ reason: 'identity-mismatch', device: '/dev/sda', expected: recorded, found: { hctl: '2:0:0:2' } });
    expect((error as BerthError).hint).toMatch(/reconcile/);
  });

  it('compares only what was recorded, and tells another attachment\'s device by path or identity', async () => {
    expect(sameIdentity({ kind: 'scsi', sessionId: 1, hctl: '2:0:0:1' }, { kind: 'scsi', sessionId: 1, hctl: '2:0:0:1', wwn: WWN_1 })).toBe(true);
    expect(sameIdentity({ kind: 'scsi', sessionId: 2, hctl: '2:0:0:1' }, { kind: 'scsi', sessionId: 1, hctl: '2:0:0:1' })).toBe(false);
    expect(sameIdentity({ kind: 'dm', uuid: 'mpath-x' }, { kind: 'scsi', sessionId: 1, hctl: '2:0:0:1' })).toBe(false);
    const other = deviceOf(scsiIdentity(1, '2:0:0:1', WWN_1), '/dev/sdq');
    expect(inUseBy([other], 'sda', { kind: 'scsi', sessionId: 1, hctl: '2:0:0:1', wwn: WWN_1 })).toBe(true);
    expect(inUseBy([deviceOf(undefined)], 'sda')).toBe(true);
    expect(inUseBy([other], 'sdb', { kind: 'scsi', sessionId: 3, hctl: '4:0:0:1' })).toBe(false);
    expect(inUseBy(undefined, 'sda')).toBe(false);
    // Another volume's record names sda with its own identity: its disk is gone and the kernel gave
    // the name to this one, which it does not use.
    const lost = deviceOf(scsiIdentity(1, '2:0:0:7', '360000000000000000e00000000010007'), '/dev/sda');
    expect(inUseBy([lost], 'sda', { kind: 'scsi', sessionId: 1, hctl: '2:0:0:1', wwn: WWN_1 })).toBe(false);
    // Without this device's identity (it could not be read) the name decides, as without the record's.
    expect(inUseBy([lost], 'sda')).toBe(true);
    // The same LUN (WWN) at another address: maybe its data still, kept.
    expect(inUseBy([deviceOf(scsiIdentity(1, '2:0:0:1', WWN_1), '/dev/sda')], 'sda', { kind: 'scsi', sessionId: 4, hctl: '5:0:0:1', wwn: WWN_1 })).toBe(true);
  });
});
