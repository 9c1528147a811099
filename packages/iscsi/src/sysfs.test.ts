import { mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHostFs, type HostFs } from '@berth/host';
import { dmName, dmUuid, findHoldingDm, holdersOf, multipathIdOf, slavesOf } from './dm-sysfs.js';
import { findIscsiSession, listIscsiSessions, readSessionTarget, sessionHostNumber } from './iscsi-sysfs.js';
import {
  deleteScsiDevice,
  findBlockDeviceByHctl,
  formatHctl,
  parseHctl,
  scanLun,
  scsiDeviceOf,
  scsiDeviceReader,
  sessionBlockDevices,
  sessionLuns,
} from './scsi-sysfs.js';
import { addLun, buildDm, buildSessions, removeLun, type TreeSession } from './test-kernel-tree.js';
import { readScsiWwn, readWwid, scsiWwnFromWwid } from './wwid.js';

const VOL1 = 'iqn.2026-01.test.berth:vol1';
const VOL2 = 'iqn.2026-01.test.berth:vol2';
// tgtd's names for tid 1 LUN 1 and LUN 2 (KERNEL-MODEL §6).
const WWID_1 = 'naa.60000000000000000e00000000010001';
const WWID_2 = 'naa.60000000000000000e00000000010002';

let root: string;
let fs: HostFs;

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-sysfs-'));
  fs = createHostFs(root);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const hostOf = (file: string): Promise<string> => readFile(path.join(root, file), 'utf8');

describe('iSCSI sessions in sysfs', () => {
  const sessions: TreeSession[] = [
    { host: 3, sid: 2, iqn: VOL1, address: '127.0.0.1', port: 3260, luns: [{ lun: 0 }, { lun: 1, device: 'sdb', wwid: WWID_1 }] },
    { host: 4, sid: 10, iqn: VOL2, address: 'fe80::1', port: 3260, state: 'FAILED' },
  ];

  it('lists sessions in sid order with target, tag, state, persistent portal and SCSI host', async () => {
    await buildSessions(root, sessions);
    expect(await listIscsiSessions(fs)).toEqual([
      { sid: 2, iqn: VOL1, tpgt: 1, state: 'LOGGED_IN', portal: { host: '127.0.0.1', port: 3260 }, hostNumber: 3 },
      { sid: 10, iqn: VOL2, tpgt: 1, state: 'FAILED', portal: { host: 'fe80::1', port: 3260 }, hostNumber: 4 },
    ]);
  });

  it('lists nothing on a host with no session (no iscsi_session class at all)', async () => {
    expect(await listIscsiSessions(fs)).toEqual([]);
    expect(await findIscsiSession(fs, { iqn: VOL1, portal: '127.0.0.1:3260' })).toBeUndefined();
  });

  it('finds the session of (iqn, portal) whatever the portal\'s spelling, and not another target\'s', async () => {
    await buildSessions(root, sessions);
    expect((await findIscsiSession(fs, { iqn: VOL1, portal: '127.0.0.1' }))?.sid).toBe(2);
    expect((await findIscsiSession(fs, { iqn: VOL2, portal: '[FE80:0::1]:3260' }))?.sid).toBe(10);
    expect((await findIscsiSession(fs, { iqn: VOL2, portal: { host: 'fe80::1', port: 3260 } }))?.state).toBe('FAILED');
    expect(await findIscsiSession(fs, { iqn: VOL1, portal: '127.0.0.1:3261' })).toBeUndefined();
    expect(await findIscsiSession(fs, { iqn: VOL2, portal: '127.0.0.1:3260' })).toBeUndefined();
  });

  it('reads a session\'s target and portal alone, from connection 0 or else the lowest connection', async () => {
    await buildSessions(root, sessions);
    expect(await readSessionTarget(fs, 2)).toEqual({ iqn: VOL1, portal: { host: '127.0.0.1', port: 3260 } });
    // Callers asking at once share one reading; each later call reads again.
    const [a, b] = await Promise.all([readSessionTarget(fs, 10), readSessionTarget(fs, 10)]);
    expect(a).toEqual({ iqn: VOL2, portal: { host: 'fe80::1', port: 3260 } });
    expect(b).toBe(a);
    await rm(path.join(root, 'sys/class/iscsi_session/session10'));
    expect(await readSessionTarget(fs, 10)).toBeUndefined();
    // A session whose only connection is not :0.
    await rename(path.join(root, 'sys/class/iscsi_connection/connection2:0'), path.join(root, 'sys/class/iscsi_connection/connection2:3'));
    expect(await readSessionTarget(fs, 2)).toEqual({ iqn: VOL1, portal: { host: '127.0.0.1', port: 3260 } });
    expect((await findIscsiSession(fs, { iqn: VOL1, portal: '127.0.0.1:3260' }))?.sid).toBe(2);
  });

  it('finds the SCSI host of a session both from its device path and os-brick\'s way', async () => {
    await buildSessions(root, sessions);
    expect(await sessionHostNumber(fs, 10)).toBe(4);
    // Without the iscsi_session class link only /sys/class/iscsi_host/host*/device/session<S> is left.
    await rm(path.join(root, 'sys/class/iscsi_session/session10'));
    expect(await sessionHostNumber(fs, 10)).toBe(4);
    expect(await sessionHostNumber(fs, 99)).toBeUndefined();
  });
});

describe('SCSI devices of a session', () => {
  const s: TreeSession = { host: 3, sid: 1, iqn: VOL1, address: '127.0.0.1', port: 3260 };

  it('scans `- - L` before the target directory exists and `0 0 L` after, on the session\'s host', async () => {
    await buildSessions(root, [s]);
    expect(await scanLun(fs, 1, 1)).toEqual({ host: 3, channel: '-', target: '-', lun: 1 });
    expect(await hostOf('sys/devices/platform/host3/scsi_host/host3/scan')).toBe('- - 1');
    await addLun(root, s, { lun: 0 });
    expect(await scanLun(fs, 1, 2)).toEqual({ host: 3, channel: 0, target: 0, lun: 2 });
    expect(await hostOf('sys/devices/platform/host3/scsi_host/host3/scan')).toBe('0 0 2');
  });

  it('refuses to scan a session that is gone', async () => {
    await expect(scanLun(fs, 7, 1)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('finds the block device of H:C:T:L once the kernel made it, with or without wildcards', async () => {
    await buildSessions(root, [{ ...s, luns: [{ lun: 0 }] }]);
    expect(await findBlockDeviceByHctl(fs, 1, { host: 3, channel: 0, target: 0, lun: 1 })).toBeUndefined();
    await addLun(root, s, { lun: 1, device: 'sdc', wwid: WWID_1 });
    expect(await findBlockDeviceByHctl(fs, 1, { host: 3, channel: 0, target: 0, lun: 1 })).toBe('sdc');
    expect(await findBlockDeviceByHctl(fs, 1, { host: 3, channel: '-', target: '-', lun: 1 })).toBe('sdc');
    // LUN 0 (tgtd's controller) has no block device; another session's host finds nothing.
    expect(await findBlockDeviceByHctl(fs, 1, { host: 3, channel: 0, target: 0, lun: 0 })).toBeUndefined();
    expect(await findBlockDeviceByHctl(fs, 1, { host: 4, channel: 0, target: 0, lun: 1 })).toBeUndefined();
  });

  it('lists the LUNs of a session and the ones in use (with a block device)', async () => {
    await buildSessions(root, [
      { ...s, luns: [{ lun: 0 }, { lun: 2, device: 'sdc', wwid: WWID_2 }, { lun: 1, device: 'sdb', wwid: WWID_1 }] },
      { host: 5, sid: 4, iqn: VOL2, address: '127.0.0.1', port: 3260, luns: [{ lun: 1, device: 'sdd' }] },
    ]);
    expect(await sessionLuns(fs, 1)).toEqual([
      { hctl: { host: 3, channel: 0, target: 0, lun: 0 }, device: undefined },
      { hctl: { host: 3, channel: 0, target: 0, lun: 1 }, device: 'sdb' },
      { hctl: { host: 3, channel: 0, target: 0, lun: 2 }, device: 'sdc' },
    ]);
    expect((await sessionBlockDevices(fs, 1)).map((l) => l.device)).toEqual(['sdb', 'sdc']);
    await removeLun(root, s, { lun: 1, device: 'sdb' });
    expect((await sessionBlockDevices(fs, 1)).map((l) => l.device)).toEqual(['sdc']);
    expect(await sessionLuns(fs, 99)).toEqual([]);
  });

  it('gives the HCTL and session of /dev/sdX', async () => {
    await buildSessions(root, [{ ...s, luns: [{ lun: 16640, device: 'sdb' }] }]);
    expect(await scsiDeviceOf(fs, '/dev/sdb')).toEqual({
      name: 'sdb',
      hctl: { host: 3, channel: 0, target: 0, lun: 16640 },
      sid: 1,
      dir: '/sys/devices/platform/host3/session1/target3:0:0/3:0:0:16640',
    });
    expect(await scsiDeviceOf(fs, 'sdz')).toBeUndefined();
    await expect(scsiDeviceOf(fs, '../../etc')).rejects.toMatchObject({ code: 'VALIDATION' });
  });

  it('deletes a SCSI device by writing 1 to its delete file; a gone device is absent', async () => {
    await buildSessions(root, [{ ...s, luns: [{ lun: 1, device: 'sdb' }] }]);
    expect(await deleteScsiDevice(fs, '/dev/sdb')).toBe('deleted');
    expect(await hostOf('sys/devices/platform/host3/session1/target3:0:0/3:0:0:1/delete')).toBe('1');
    await removeLun(root, s, { lun: 1, device: 'sdb' });
    expect(await deleteScsiDevice(fs, 'sdb')).toBe('absent');
  });

  it('deletes at the SCSI device directory read before, even when the name went to another disk', async () => {
    await buildSessions(root, [{ ...s, luns: [{ lun: 1, device: 'sdb' }, { lun: 2, device: 'sdc' }] }]);
    const read = scsiDeviceReader(fs);
    const sdb = await read('sdb');
    expect(await read('sdb')).toBe(sdb);
    // sdb goes and its name is given to LUN 2's disk: the delete still reaches LUN 1's device only.
    await removeLun(root, s, { lun: 2, device: 'sdc' });
    await removeLun(root, s, { lun: 1, device: 'sdb' });
    await addLun(root, s, { lun: 1 });
    await addLun(root, s, { lun: 2, device: 'sdb' });
    expect(await deleteScsiDevice(fs, 'sdb', sdb?.dir)).toBe('deleted');
    expect(await hostOf('sys/devices/platform/host3/session1/target3:0:0/3:0:0:1/delete')).toBe('1');
    expect(await hostOf('sys/devices/platform/host3/session1/target3:0:0/3:0:0:2/delete')).not.toBe('1');
    // A fresh reader sees the name's new disk.
    expect((await scsiDeviceReader(fs)('sdb'))?.hctl.lun).toBe(2);
  });

  it('reads and writes HCTL text', () => {
    expect(parseHctl('3:0:0:16640')).toEqual({ host: 3, channel: 0, target: 0, lun: 16640 });
    expect(parseHctl('target3:0:0')).toBeUndefined();
    expect(formatHctl({ host: 3, channel: 0, target: 0, lun: 1 })).toBe('3:0:0:1');
  });
});

describe('WWID and scsi_wwn', () => {
  it('maps the kernel prefix to udev\'s type digit as os-brick does', () => {
    expect(scsiWwnFromWwid(WWID_1)).toBe('360000000000000000e00000000010001');
    expect(scsiWwnFromWwid('eui.0123456789abcdef')).toBe('20123456789abcdef');
    expect(scsiWwnFromWwid('t10.IET     VIRTUAL-DISK')).toBe('1IET     VIRTUAL-DISK');
    expect(scsiWwnFromWwid('xyz.1234')).toBe('81234');
  });

  it('reads /sys/block/sdX/device/wwid, and the wwn of the first device that has one', async () => {
    await buildSessions(root, [{ host: 3, sid: 1, iqn: VOL1, address: '127.0.0.1', port: 3260, luns: [{ lun: 1, device: 'sdb', wwid: WWID_1 }, { lun: 2, device: 'sdc' }] }]);
    expect(await readWwid(fs, 'sdb')).toBe(WWID_1);
    expect(await readWwid(fs, 'sdc')).toBeUndefined();
    expect(await readScsiWwn(fs, ['sdc', 'sdb'])).toBe('360000000000000000e00000000010001');
    expect(await readScsiWwn(fs, ['sdc'])).toBeUndefined();
  });
});

describe('device-mapper holders (for the multipath driver)', () => {
  it('finds the dm holding a path, its name, uuid, multipath id and slaves', async () => {
    await buildSessions(root, [
      { host: 3, sid: 1, iqn: VOL1, address: '127.0.0.1', port: 3260, luns: [{ lun: 1, device: 'sdb', wwid: WWID_1 }] },
      { host: 4, sid: 2, iqn: VOL1, address: '127.0.0.2', port: 3260, luns: [{ lun: 1, device: 'sdc', wwid: WWID_1 }] },
    ]);
    expect(await findHoldingDm(fs, ['sdb', 'sdc'])).toBeUndefined();
    const wwn = scsiWwnFromWwid(WWID_1);
    await buildDm(root, { dm: 'dm-0', name: wwn, uuid: `mpath-${wwn}`, slaves: ['sdb', 'sdc'] });
    expect(await holdersOf(fs, 'sdb')).toEqual(['dm-0']);
    expect(await findHoldingDm(fs, ['sdx', 'sdc'])).toBe('dm-0');
    expect(await dmName(fs, 'dm-0')).toBe(wwn);
    expect(await dmUuid(fs, '/dev/dm-0')).toBe(`mpath-${wwn}`);
    expect(await multipathIdOf(fs, 'dm-0')).toBe(wwn);
    expect(await slavesOf(fs, 'dm-0')).toEqual(['sdb', 'sdc']);
    expect(await multipathIdOf(fs, 'dm-7')).toBeUndefined();
  });
});
