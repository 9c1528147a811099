import { describe, expect, it } from 'vitest';
import type { ConnectedDevice } from '../contracts/transport-driver.js';
import type { Attachment, AttachmentStatus, HostDevice, Operation, Server, Volume, VolumeStatus } from '../model.js';
import {
  describeFinding,
  findDifferences,
  madeByPipeline,
  sourceMatches,
  volumeOfSource,
  volumeRepairPath,
  type GuestListing,
  type ReconcileFacts,
  type TransportListing,
} from './findings.js';
import { canTransitionVolume, recomputeVolumeStatus } from '../transitions.js';

const HOST = '00000000-0000-4000-8000-00000000000a';
const OTHER_HOST = '00000000-0000-4000-8000-00000000000b';
const SERVER = '00000000-0000-4000-8000-0000000000c1';
const NOW = '2026-01-01T00:00:00.000Z';
let counter = 0;
const uuid = (): string => `00000000-0000-4000-8000-${(++counter).toString(16).padStart(12, '0')}`;

function volume(name: string, status: VolumeStatus, providerLocation: string, backend = 'file'): Volume {
  return { id: uuid(), name, projectId: 'default', sizeBytes: 1 << 20, status, backend, multiattach: false, providerLocation, createdAt: NOW, updatedAt: NOW };
}

function fileAttachment(v: Volume, status: AttachmentStatus, device: string | null, hostId = HOST): Attachment {
  return {
    id: uuid(),
    volumeId: v.id,
    serverId: SERVER,
    hostId,
    status,
    mode: 'rw',
    transport: 'loop',
    connector: { host: 'h1' },
    connectionInfo: { driver_volume_type: 'file', data: { device_path: v.providerLocation!, volume_id: v.id, access_mode: 'rw' } },
    device: device === null ? null : { path: device, type: 'block' },
    publishedPath: null,
    timings: {},
    error: null,
    createdAt: NOW,
    updatedAt: NOW,
  };
}

function loopDevice(path: string, file: string): ConnectedDevice {
  return { device: { path, type: 'block', meta: { backingFile: file } }, source: { device_path: file } };
}

function facts(partial: Partial<ReconcileFacts>): ReconcileFacts {
  return { localHostId: HOST, volumes: [], attachments: [], busyVolumeIds: new Set(), exports: [], listings: [], ...partial };
}

const LOOP_KEYS = ['device_path'];
const ISCSI_KEYS = ['target_iqn', 'target_lun'];
const loop = (devices: ConnectedDevice[]): TransportListing[] => [{ transport: 'loop', protocol: 'file', sourceKeys: LOOP_KEYS, devices }];

/** berth's record of a loop device it connected for `v` on this host. */
function record(v: Volume, path: string): HostDevice {
  return {
    hostId: HOST,
    volumeId: v.id,
    transport: 'loop',
    connectionInfo: { driver_volume_type: 'file', data: { device_path: v.providerLocation! } },
    device: { path, type: 'block' },
    operationId: null,
    createdAt: NOW,
    updatedAt: NOW,
  };
}

function attachOperation(v: Volume, attachmentId: string | null, state: Operation['state'] = 'rolled_back'): Operation {
  return {
    id: uuid(),
    kind: 'attach',
    state,
    volumeId: v.id,
    serverId: SERVER,
    attachmentId,
    hostId: HOST,
    idempotencyKey: null,
    owner: null,
    deadlineAt: NOW,
    startedAt: NOW,
    endedAt: NOW,
    error: null,
    result: null,
    steps: [{ seq: 1, name: 'reserve', phase: 'do', state: 'done', startedAt: NOW, endedAt: NOW, durationMs: 1, error: null, data: null }],
  };
}

describe('sourceMatches', () => {
  it("matches on every one of the transport's keys both sides have, and needs at least one", () => {
    expect(sourceMatches({ device_path: '/v/a.img' }, { device_path: '/v/a.img', volume_id: 'x' }, LOOP_KEYS)).toBe(true);
    expect(sourceMatches({ device_path: '/v/a.img' }, { device_path: '/v/b.img' }, LOOP_KEYS)).toBe(false);
    expect(sourceMatches({ target_iqn: 'iqn.x:1', target_lun: 1, target_portal: '10.0.0.1:3260' }, { target_iqn: 'iqn.x:1', target_lun: 1, target_portal: '10.0.0.2:3260' }, ISCSI_KEYS)).toBe(true);
    expect(sourceMatches({ target_iqn: 'iqn.x:1', target_lun: 2 }, { target_iqn: 'iqn.x:1', target_lun: 1 }, ISCSI_KEYS)).toBe(false);
    expect(sourceMatches({ deleted: true }, { device_path: '/v/a.img' }, LOOP_KEYS)).toBe(false);
  });

  it("compares only the transport's keys, and with none matches nothing", () => {
    // An NVMe-like source: the keys berth's own transports use mean nothing to it.
    expect(sourceMatches({ nqn: 'nqn.x:1', device_path: '/v/a.img' }, { nqn: 'nqn.x:2', device_path: '/v/a.img' }, ['nqn'])).toBe(false);
    expect(sourceMatches({ nqn: 'nqn.x:1' }, { nqn: 'nqn.x:1' }, ['nqn'])).toBe(true);
    expect(sourceMatches({ device_path: '/v/a.img' }, { device_path: '/v/a.img' }, [])).toBe(false);
  });
});

describe('volumeRepairPath', () => {
  const derived: VolumeStatus[] = ['available', 'reserved', 'attaching', 'in-use', 'detaching', 'error'];
  const pairs = derived.flatMap((from) => derived.map((to) => [from, to] as const));

  it.each(pairs)('leads from %s to %s through allowed transitions only', (from, to) => {
    const path = volumeRepairPath(from, to);
    expect(path).toBeDefined();
    let at = from;
    for (const next of path!) {
      expect(canTransitionVolume(at, next)).toBe(true);
      expect(['creating', 'extending', 'deleting']).not.toContain(next);
      at = next;
    }
    expect(at).toBe(to);
  });

  it('takes the direct transition when there is one, and a detour through error when not', () => {
    expect(volumeRepairPath('error', 'in-use')).toEqual(['in-use']);
    expect(volumeRepairPath('available', 'in-use')).toEqual(['reserved', 'in-use']);
    expect(volumeRepairPath('in-use', 'available')).toEqual(['detaching', 'available']);
  });
});

describe('findDifferences', () => {
  it('finds nothing when the store, the exports and the devices agree', () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const a = fileAttachment(v, 'attached', '/dev/loop3');
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([loopDevice('/dev/loop3', '/data/volumes/a.img')]) }))).toEqual([]);
  });

  it('finds an export no attachment accounts for, and leaves exports of unknown volumes alone', () => {
    const v = volume('t', 'available', 'iqn.2010-10.org.berth:volume-1', 'tgt');
    const unknown = uuid();
    const found = findDifferences(
      facts({
        volumes: [v],
        exports: [
          { backend: 'tgt', export: { volumeId: v.id, initiator: 'iqn.1993-08.org.debian:01:h1' } },
          { backend: 'tgt', export: { volumeId: unknown, initiator: 'iqn.1993-08.org.debian:01:h1' } },
        ],
      }),
    );
    expect(found.map((f) => [f.kind, f.skip === undefined])).toEqual([
      ['export_without_attachment', true],
      ['export_without_attachment', false],
    ]);
    expect(describeFinding(found[0]!)).toMatchObject({ fix: 'terminate_connection', state: 'planned' });
    expect(describeFinding(found[1]!)).toMatchObject({ fix: 'none', state: 'skipped' });
  });

  it('accepts an export for the initiator of a live attachment', () => {
    const v = volume('t', 'in-use', 'iqn.2010-10.org.berth:volume-2', 'tgt');
    const a = { ...fileAttachment(v, 'attached', '/dev/sda'), connector: { host: 'h1', initiator: 'iqn.1993-08.org.debian:01:h1' } };
    const exports = [{ backend: 'tgt', export: { volumeId: v.id, initiator: 'iqn.1993-08.org.debian:01:h1' } }];
    expect(findDifferences(facts({ volumes: [v], attachments: [a], exports })).filter((f) => f.kind === 'export_without_attachment')).toEqual([]);
    const other = [{ backend: 'tgt', export: { volumeId: v.id, initiator: 'iqn.1993-08.org.debian:01:h2' } }];
    expect(findDifferences(facts({ volumes: [v], attachments: [a], exports: other })).map((f) => f.kind)).toContain('export_without_attachment');
  });

  it('finds a device berth connected that no attachment uses, and ignores devices of other files', () => {
    const v = volume('a', 'available', '/data/volumes/a.img');
    const found = findDifferences(
      facts({ volumes: [v], devices: [record(v, '/dev/loop4')], listings: loop([loopDevice('/dev/loop4', '/data/volumes/a.img'), loopDevice('/dev/loop5', '/tmp/mine.img')]) }),
    );
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({ kind: 'device_without_attachment', record: { transport: 'loop' }, volume: { id: v.id } });
    expect(describeFinding(found[0]!)).toMatchObject({ resource: '/dev/loop4 (backing /data/volumes/a.img)', fix: 'disconnect', state: 'planned' });
    // Its device already gone: only the record is left, and it goes.
    const gone = findDifferences(facts({ volumes: [v], devices: [record(v, '/dev/loop4')], listings: loop([]) }));
    expect(describeFinding(gone[0]!)).toMatchObject({ kind: 'device_without_attachment', resource: '/dev/loop4 (gone)', fixDetail: 'forget the record' });
  });

  it('finds a whole device of a berth volume no record or attachment names (a cut-short connect, or by hand), and ignores devices of other files', () => {
    const v = volume('a', 'available', '/data/volumes/a.img');
    const found = findDifferences(facts({ volumes: [v], listings: loop([loopDevice('/dev/loop4', '/data/volumes/a.img'), loopDevice('/dev/loop5', '/tmp/mine.img')]) }));
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({ kind: 'device_without_attachment', transport: 'loop', protocol: 'file', volume: { id: v.id } });
    expect(found[0]!.kind === 'device_without_attachment' && found[0]!.record).toBeUndefined();
    expect(describeFinding(found[0]!)).toMatchObject({ resource: '/dev/loop4 (backing /data/volumes/a.img)', fix: 'disconnect', state: 'planned' });
  });

  it("reports, and leaves alone, a second device of the same transport over an attached volume's storage (someone's losetup of its file); its own device and a multipath map's paths are not reported", () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const a = fileAttachment(v, 'attached', '/dev/loop2');
    const listings = loop([loopDevice('/dev/loop2', '/data/volumes/a.img'), loopDevice('/dev/loop3', '/data/volumes/a.img')]);
    const found = findDifferences(facts({ volumes: [v], attachments: [a], devices: [record(v, '/dev/loop2')], listings }));
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({ kind: 'device_without_attachment', transport: 'loop', volume: { id: v.id }, connected: { device: { path: '/dev/loop3' } } });
    expect(found[0]!.skip).toMatch(/^a second device over the storage of volume a, which is attached through \/dev\/loop2: .*left alone.*fuser -v \/dev\/loop3/);
    expect(describeFinding(found[0]!)).toMatchObject({ fix: 'disconnect', state: 'skipped' });
    // Its own device alone: nothing.
    expect(findDifferences(facts({ volumes: [v], attachments: [a], devices: [record(v, '/dev/loop2')], listings: loop([loopDevice('/dev/loop2', '/data/volumes/a.img')]) }))).toEqual([]);
    // A path its device lists as its own (a multipath map's) is not a second device.
    const mapped = { ...a, device: { path: '/dev/dm-0', type: 'block' as const, paths: [{ device: 'sdb', state: 'active' }] } };
    const paths = loop([loopDevice('/dev/dm-0', '/data/volumes/a.img'), loopDevice('/dev/sdb', '/data/volumes/a.img')]);
    expect(findDifferences(facts({ volumes: [v], attachments: [mapped], devices: [record(v, '/dev/dm-0')], listings: paths }))).toEqual([]);
    // Listed by another transport than the one it is attached through: accounted for, as before.
    const other = { ...a, transport: 'iscsi-multipath' };
    expect(findDifferences(facts({ volumes: [v], attachments: [other], devices: [record(v, '/dev/loop2')], listings }))).toEqual([]);
  });

  it("leaves alone a device no record of this host names whose volume is live on another host through the same source (that host's agent may run on this machine)", () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const elsewhere = fileAttachment(v, 'attached', '/dev/loop3', OTHER_HOST);
    const found = findDifferences(facts({ volumes: [v], attachments: [elsewhere], listings: loop([loopDevice('/dev/loop3', '/data/volumes/a.img')]) }));
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({ kind: 'device_without_attachment', volume: { id: v.id } });
    expect(found[0]!.skip).toMatch(/^volume a is attached on another host \(0{8}-0{4}-4000-8000-0{11}b\) through this source.*left alone/);
    expect(describeFinding(found[0]!)).toMatchObject({ fix: 'disconnect', state: 'skipped' });
  });

  it('does not count an attachment on another host for a device on this one', () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const elsewhere = fileAttachment(v, 'attached', '/dev/loop3', OTHER_HOST);
    const found = findDifferences(
      facts({ volumes: [v], attachments: [elsewhere], devices: [record(v, '/dev/loop3')], listings: loop([loopDevice('/dev/loop3', '/data/volumes/a.img')]) }),
    );
    expect(found.map((f) => f.kind)).toEqual(['device_without_attachment']);
  });

  it('never claims nor reconnects through a transport that declares no source keys, and says why', () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const a = { ...fileAttachment(v, 'attached', '/dev/nvme0n1'), transport: 'nvme' };
    const keyless = (devices: ConnectedDevice[]): TransportListing[] => [{ transport: 'nvme', protocol: 'nvmeof', sourceKeys: [], devices }];
    // A device of another volume is listed; its recorded device is not: berth cannot tell whose it is.
    const found = findDifferences(facts({ volumes: [v], attachments: [a], listings: keyless([loopDevice('/dev/nvme1n1', '/data/volumes/a.img')]) }));
    expect(found.map((f) => f.kind)).toEqual(['attachment_device_gone']);
    expect(describeFinding(found[0]!)).toMatchObject({ state: 'skipped', fix: 'reconnect', result: expect.stringContaining('cannot tell which volume') });
    // Its recorded device is still listed (by path and identity): nothing to say.
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: keyless([loopDevice('/dev/nvme0n1', '/x')]) }))).toEqual([]);
  });

  it('calls a device gone when the path now names another device (same path, another identity)', () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const a = { ...fileAttachment(v, 'attached', '/dev/loop3'), device: { path: '/dev/loop3', type: 'block' as const, identity: { kind: 'loop', rdev: '7:3', backingInode: 11 } } };
    const reused = { device: { path: '/dev/loop3', type: 'block' as const, identity: { kind: 'loop', rdev: '7:3', backingInode: 99 } }, source: { device_path: '/data/volumes/a.img' } };
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([reused]) })).map((f) => f.kind)).toEqual(['attachment_device_gone']);
    const same = { ...reused, device: { ...reused.device, identity: { kind: 'loop', rdev: '7:3', backingInode: 11 } } };
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([same]) }))).toEqual([]);
  });

  it('reports an attached device whose backing file was deleted or replaced, with what to do and no fix', () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const identity = { kind: 'loop', rdev: '7:3', backingDev: '254:1', backingInode: 11 };
    const a = { ...fileAttachment(v, 'attached', '/dev/loop3'), device: { path: '/dev/loop3', type: 'block' as const, identity } };
    const listed = (storageGone: ConnectedDevice['storageGone'], backingInode = 11): ConnectedDevice => ({
      device: { path: '/dev/loop3', type: 'block', identity: { ...identity, backingInode } },
      source: { device_path: '/data/volumes/a.img', deleted: true },
      ...(storageGone ? { storageGone } : {}),
    });
    for (const how of ['deleted', 'replaced'] as const) {
      const found = findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([listed(how)]) }));
      expect(found.map((f) => f.kind)).toEqual(['attachment_storage_gone']);
      const described = describeFinding(found[0]!);
      expect(described).toMatchObject({ kind: 'attachment_storage_gone', volumeId: v.id, attachmentId: a.id, fix: 'none', state: 'skipped' });
      expect(described.detail).toContain(`its backing file /data/volumes/a.img was ${how}`);
      expect(described.detail).toContain('only copy');
      // The hint: copy the data off the device first, then a forced detach of the volume by name.
      expect(described.result).toContain('dd if=/dev/loop3 of=<somewhere> bs=1M');
      expect(described.result).toContain('`berth detach a --force`');
    }
    // Reported while an operation runs on the volume too: there is nothing to apply either way.
    const busy = findDifferences(facts({ volumes: [v], attachments: [a], busyVolumeIds: new Set([v.id]), listings: loop([listed('deleted')]) }));
    expect(busy.map((f) => f.kind)).toEqual(['attachment_storage_gone']);
    // Only the very device recorded: another device at that name (another identity) is the device-gone rule's.
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([listed('deleted', 99)]) })).map((f) => f.kind)).toEqual(['attachment_device_gone']);
    // Only what the listing after the store says: a transport that does not report it says nothing.
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([listed('deleted')]), listingsAfter: loop([listed(undefined)]) }))).toEqual([]);
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([listed(undefined)]) }))).toEqual([]);
  });

  it('reports a volume whose backend says its storage is short, attached or not, with no fix; not a busy one as such, not a size the volume does not exceed', () => {
    const cut = volume('cut1', 'available', '/v/cut1.img');
    const used = volume('used1', 'in-use', '/v/used1.img');
    const busy = volume('busy1', 'available', '/v/busy1.img');
    const whole = volume('whole1', 'available', '/v/whole1.img');
    const short = new Map([[cut.id, 4096], [used.id, 0], [busy.id, 512], [whole.id, whole.sizeBytes]]);
    const found = findDifferences(facts({ volumes: [cut, used, busy, whole], busyVolumeIds: new Set([busy.id]), shortStorage: short }));
    expect(found.filter((f) => f.kind === 'volume_storage_short').map((f) => [f.kind === 'volume_storage_short' ? f.volume.name : '', f.skip?.slice(0, 30)])).toEqual([
      ['cut1', 'not fixed automatically: what '],
      ['used1', 'not fixed automatically: what '],
      ['busy1', 'an operation on this volume is'],
    ]);
    const described = describeFinding(found.find((f) => f.kind === 'volume_storage_short')!);
    expect(described).toMatchObject({ kind: 'volume_storage_short', volumeId: cut.id, attachmentId: null, fix: 'none', state: 'skipped' });
    expect(described.detail).toBe(`volume cut1 is available and ${1 << 20} bytes, but backend file has only 4096 bytes of its storage (/v/cut1.img): an attach would be refused`);
    // A file replaced under the volume's device (a short new one) is the device's finding (storage gone), not a cut.
    const replaced: ConnectedDevice = { ...loopDevice('/dev/loop3', '/v/used1.img'), storageGone: 'replaced' };
    const a = fileAttachment(used, 'attached', '/dev/loop3');
    const kinds = findDifferences(facts({ volumes: [used], attachments: [a], listings: loop([replaced]), shortStorage: new Map([[used.id, 4096]]) })).map((f) => f.kind);
    expect(kinds).toEqual(['attachment_storage_gone']);
  });

  it('reports an available volume whose backend says its storage is gone, with no fix and what to do; not an attached one, not a busy one as such, not when the backend was not asked', () => {
    const gone = volume('gone1', 'available', '/v/gone1.img');
    const fine = volume('fine1', 'available', '/v/fine1.img');
    const used = volume('used1', 'in-use', '/v/used1.img');
    const busy = volume('busy1', 'available', '/v/busy1.img');
    const a = fileAttachment(used, 'attached', '/dev/loop3');
    const missing = new Set([gone.id, used.id, busy.id]);
    const found = findDifferences(
      facts({ volumes: [gone, fine, used, busy], attachments: [a], busyVolumeIds: new Set([busy.id]), listings: loop([loopDevice('/dev/loop3', '/v/used1.img')]), missingStorage: missing }),
    );
    expect(found.map((f) => [f.kind, 'volume' in f ? f.volume?.name : '', f.skip?.slice(0, 30)])).toEqual([
      ['volume_storage_missing', 'gone1', 'not fixed automatically: berth'],
      ['volume_storage_missing', 'busy1', 'an operation on this volume is'],
    ]);
    const described = describeFinding(found[0]!);
    expect(described).toMatchObject({ kind: 'volume_storage_missing', volumeId: gone.id, attachmentId: null, fix: 'none', state: 'skipped' });
    expect(described.detail).toBe('volume gone1 is available, but backend file no longer has its storage (/v/gone1.img): an attach or extend would fail');
    expect(described.result).toMatch(/restore the volume's storage from a backup \(\/v\/gone1\.img\), or drop the volume with `berth volume delete gone1`/);
    expect(findDifferences(facts({ volumes: [gone] }))).toEqual([]);
  });

  it('never plans to disconnect a device of no attachment whose storage is gone (the only copy of the data), and says what to do', () => {
    const v = volume('a', 'available', '/data/volumes/a.img');
    const gone: ConnectedDevice = { ...loopDevice('/dev/loop4', '/data/volumes/a.img'), storageGone: 'deleted' };
    for (const devices of [[record(v, '/dev/loop4')], []]) {
      const found = findDifferences(facts({ volumes: [v], devices, listings: loop([gone]) }));
      expect(found.map((f) => f.kind)).toEqual(['device_without_attachment']);
      expect(describeFinding(found[0]!)).toMatchObject({ fix: 'disconnect', state: 'skipped', result: expect.stringContaining('dd if=/dev/loop4') });
      // No attachment to detach: the device is let go of by hand, then reconcile drops the record.
      expect(describeFinding(found[0]!).result).toContain('losetup --detach /dev/loop4');
      expect(describeFinding(found[0]!).result).not.toContain('berth detach');
    }
  });

  it('never force-detaches a stuck or failed attachment whose device holds the only copy of the data', () => {
    const v = volume('a', 'error', '/data/volumes/a.img');
    const identity = { kind: 'loop', rdev: '7:3', backingDev: '254:1', backingInode: 11 };
    const gone: ConnectedDevice = {
      device: { path: '/dev/loop3', type: 'block', identity },
      source: { device_path: '/data/volumes/a.img', deleted: true },
      storageGone: 'deleted',
    };
    for (const status of ['detaching', 'error_detaching'] as const) {
      const a = { ...fileAttachment(v, status, '/dev/loop3'), device: { path: '/dev/loop3', type: 'block' as const, identity } };
      const found = findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([gone]) })).filter((f) => f.kind === 'attachment_stuck' || f.kind === 'attachment_error');
      expect(found).toHaveLength(1);
      expect(describeFinding(found[0]!)).toMatchObject({ state: 'skipped', result: expect.stringContaining('dd if=/dev/loop3') });
    }
  });

  it('finds an attached device whose path in use failed: repaired by a transport that can, reported (skipped) by one that cannot', () => {
    const v = volume('a', 'in-use', 'iqn.2026-01.org.berth:a');
    const a: Attachment = {
      ...fileAttachment(v, 'attached', '/dev/loop5'),
      transport: 'iscsi-user',
      connectionInfo: { driver_volume_type: 'iscsi', data: { target_iqn: 'iqn.2026-01.org.berth:a', target_lun: 1, access_mode: 'rw' } },
    };
    const listedWith = (states: string[]): ConnectedDevice => ({
      device: { path: '/dev/loop5', type: 'block', paths: states.map((state, i) => ({ portal: `127.0.0.${i + 1}:3260`, state })) },
      source: { target_iqn: 'iqn.2026-01.org.berth:a', target_lun: 1, target_portal: '127.0.0.1:3260' },
    });
    const user = (entry: ConnectedDevice, repairsPaths = true): TransportListing[] => [
      { transport: 'iscsi-user', protocol: 'iscsi', sourceKeys: ISCSI_KEYS, repairsPaths, devices: [entry] },
    ];
    const failed = findDifferences(facts({ volumes: [v], attachments: [a], listings: user(listedWith(['failed', 'standby'])) }));
    expect(failed.map((f) => f.kind)).toEqual(['attachment_path_failed']);
    expect(describeFinding(failed[0]!)).toMatchObject({ fix: 'repair_paths', state: 'planned', attachmentId: a.id, detail: expect.stringContaining('127.0.0.1:3260') });
    // Healthy paths: nothing.
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: user(listedWith(['active', 'standby'])) }))).toEqual([]);
    // A transport that cannot repair them (one path; the kernel's initiator reconnects by itself):
    // reported, skipped with what to check, and the path's own words in the detail.
    const kernel = findDifferences(facts({ volumes: [v], attachments: [a], listings: user({ ...listedWith([]), device: { path: '/dev/loop5', type: 'block', paths: [{ portal: '127.0.0.1:3260', state: 'failed', detail: 'session FREE, disk transport-offline: its I/O fails' }] } }, false) }));
    expect(kernel.map((f) => f.kind)).toEqual(['attachment_path_failed']);
    expect(describeFinding(kernel[0]!)).toMatchObject({
      fix: 'repair_paths',
      state: 'skipped',
      detail: expect.stringContaining('127.0.0.1:3260: session FREE, disk transport-offline: its I/O fails'),
      result: expect.stringMatching(/logs in again by itself .*berth detach a --force/),
    });
    // A volume with a running operation: skipped, not repaired under it.
    const busy = findDifferences(facts({ volumes: [v], attachments: [a], busyVolumeIds: new Set([v.id]), listings: user(listedWith(['failed'])) }));
    expect(describeFinding(busy[0]!)).toMatchObject({ kind: 'attachment_path_failed', state: 'skipped' });
  });

  it('finds attachments an interrupted operation left (stuck or in error), and leaves a three-phase reservation alone', () => {
    const v = volume('a', 'reserved', '/data/volumes/a.img');
    const stuck = { ...fileAttachment(v, 'reserved', null), transport: null, connectionInfo: null };
    const threePhase = { ...fileAttachment(v, 'attaching', null), transport: null };
    const failed = fileAttachment(v, 'error_detaching', '/dev/loop3');
    const operations = [attachOperation(v, stuck.id)];
    const found = findDifferences(facts({ volumes: [v], attachments: [stuck, threePhase, failed], operations, listings: loop([loopDevice('/dev/loop3', '/data/volumes/a.img')]) }));
    expect(found.filter((f) => f.kind !== 'volume_status_mismatch').map((f) => [f.kind, 'attachment' in f ? f.attachment.id : null])).toEqual([
      ['attachment_stuck', stuck.id],
      ['attachment_error', failed.id],
    ]);
    expect(describeFinding(found[0]!)).toMatchObject({ fix: 'disconnect', attachmentId: stuck.id, state: 'planned' });
  });

  it('knows an attachment an older berth reserved without linking it to its operation (finding 4)', () => {
    const v = volume('a', 'reserved', '/data/volumes/a.img');
    const orphan = { ...fileAttachment(v, 'reserved', null), transport: null, connectionInfo: null, createdAt: '2026-01-01T00:00:01.000Z' };
    expect(madeByPipeline(orphan, [attachOperation(v, null)])).toBe(true);
    expect(madeByPipeline(orphan, [])).toBe(false);
    const later = { ...attachOperation(v, null), startedAt: '2026-01-01T00:00:05.000Z' };
    expect(madeByPipeline(orphan, [later])).toBe(false);
  });

  it('finds an attached attachment whose device is gone, or has moved', () => {
    const gone = volume('g', 'in-use', '/data/volumes/g.img');
    const moved = volume('m', 'in-use', '/data/volumes/m.img');
    const a = fileAttachment(gone, 'attached', '/dev/loop3');
    const b = fileAttachment(moved, 'attached', '/dev/loop6');
    const found = findDifferences(facts({ volumes: [gone, moved], attachments: [a, b], listings: loop([loopDevice('/dev/loop7', '/data/volumes/m.img')]) }));
    expect(found.map((f) => [f.kind, f.kind === 'attachment_device_gone' ? f.found?.device.path : undefined])).toEqual([
      ['attachment_device_gone', undefined],
      ['attachment_device_gone', '/dev/loop7'],
    ]);
    expect(describeFinding(found[0]!)).toMatchObject({ fix: 'reconnect', attachmentId: a.id });
  });

  it('does not call a device gone that a second listing shows, or that no listing could see', () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const a = fileAttachment(v, 'attached', '/dev/loop3');
    const listingsAfter = loop([loopDevice('/dev/loop3', '/data/volumes/a.img')]);
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([]), listingsAfter }))).toEqual([]);
    // The transport could not list: unknown, not gone.
    expect(findDifferences(facts({ volumes: [v], attachments: [a], listings: [] }))).toEqual([]);
  });

  it('finds a volume whose status its attachments contradict, except an error left by a failed delete', () => {
    const wrong = volume('w', 'available', '/data/volumes/w.img');
    const a = fileAttachment(wrong, 'attached', '/dev/loop3');
    const failedDelete = volume('d', 'error', '/data/volumes/d.img');
    const extending = volume('e', 'extending', '/data/volumes/e.img');
    const found = findDifferences(
      facts({ volumes: [wrong, failedDelete, extending], attachments: [a], listings: loop([loopDevice('/dev/loop3', '/data/volumes/w.img')]) }),
    );
    expect(found).toEqual([{ kind: 'volume_status_mismatch', volume: wrong, expected: recomputeVolumeStatus([a]) }]);
  });

  it('marks every finding on a volume with a running operation as skipped', () => {
    const v = volume('a', 'available', '/data/volumes/a.img');
    const found = findDifferences(
      facts({ volumes: [v], busyVolumeIds: new Set([v.id]), devices: [record(v, '/dev/loop4')], listings: loop([loopDevice('/dev/loop4', '/data/volumes/a.img')]) }),
    );
    expect(found).toHaveLength(1);
    expect(describeFinding(found[0]!)).toMatchObject({ state: 'skipped', fix: 'disconnect' });
  });
});

describe('findDifferences: guests', () => {
  const server: Server = { id: SERVER, name: 'vm-1', projectId: 'default', hostId: HOST, hypervisor: { type: 'qemu', qmp: '/run/vm-1/qmp.sock', bus: 'pci.0' }, createdAt: NOW, updatedAt: NOW };
  const guest = (serials: string[]): GuestListing => ({ server, consumer: 'qemu', disks: serials.map((serial, i) => ({ serial, id: `/machine/peripheral/d${i}` })) });
  const guestKinds = ['guest_disk_without_attachment', 'attachment_missing_from_guest'];
  const guestFindings = (f: ReconcileFacts) => findDifferences(f).filter((x) => guestKinds.includes(x.kind));

  it('a disk with a berth volume serial and no attachment of it to that server is found with the unplug fix; other serials are never looked at', () => {
    const v = volume('a', 'available', '/data/volumes/a.img');
    const g = guest([v.id, 'QM00001', '00000000-0000-4000-8000-ffffffffffff']);
    const found = guestFindings(facts({ volumes: [v], guests: [g] }));
    expect(found).toEqual([{ kind: 'guest_disk_without_attachment', guest: g, disk: g.disks[0], volume: v }]);
    expect(describeFinding(found[0]!)).toMatchObject({ fix: 'unplug', state: 'planned', volumeId: v.id, attachmentId: null, resource: expect.stringContaining('vm-1') });
  });

  it('an attached attachment whose running guest lacks its serial is found with the replug fix; one the guest has is not', () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const w = volume('b', 'in-use', '/data/volumes/b.img');
    const a = fileAttachment(v, 'attached', '/dev/loop3');
    const b = fileAttachment(w, 'attached', '/dev/loop4');
    const listings = loop([loopDevice('/dev/loop3', '/data/volumes/a.img'), loopDevice('/dev/loop4', '/data/volumes/b.img')]);
    const g = guest([w.id]);
    const found = guestFindings(facts({ volumes: [v, w], attachments: [a, b], listings, guests: [g] }));
    expect(found).toEqual([{ kind: 'attachment_missing_from_guest', guest: g, attachment: a, volume: v }]);
    expect(describeFinding(found[0]!)).toMatchObject({ fix: 'replug', attachmentId: a.id });
  });

  it("a disk someone else plugged with an attached volume's serial (plugged: false) stands for no attachment: it is to be unplugged, and berth's own disk missing is found", () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const a = fileAttachment(v, 'attached', '/dev/loop3');
    const listings = loop([loopDevice('/dev/loop3', '/data/volumes/a.img')]);
    const impostor = { serial: v.id, id: '/machine/peripheral/impostor', plugged: false };
    const own = { serial: v.id, id: `/machine/peripheral/berth-${v.id}`, plugged: true };
    const g = (disks: Array<typeof own>) => ({ ...guest([]), disks });
    const alone = g([impostor]);
    expect(guestFindings(facts({ volumes: [v], attachments: [a], listings, guests: [alone] })).map((f) => f.kind).sort()).toEqual(['attachment_missing_from_guest', 'guest_disk_without_attachment']);
    // Beside berth's own: only the impostor is found.
    const beside = g([own, impostor]);
    const found = guestFindings(facts({ volumes: [v], attachments: [a], listings, guests: [beside] }));
    expect(found).toEqual([{ kind: 'guest_disk_without_attachment', guest: beside, disk: impostor, volume: v }]);
    // A consumer that cannot tell (no `plugged`): the serial alone, as before.
    expect(guestFindings(facts({ volumes: [v], attachments: [a], listings, guests: [g([{ serial: v.id, id: '/machine/peripheral/x' } as typeof own])] }))).toEqual([]);
  });

  it('two server records of one guest (the same QMP socket, made before berth refused it) are one guest: an attachment to either accounts for the disk', () => {
    const twin: Server = { ...server, id: '00000000-0000-4000-8000-00000000000b', name: 'vm-1b' };
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const a = { ...fileAttachment(v, 'attached', '/dev/loop3'), serverId: twin.id };
    const listings = loop([loopDevice('/dev/loop3', '/data/volumes/a.img')]);
    const disks = [{ serial: v.id, id: '/machine/peripheral/d0' }];
    const guests: GuestListing[] = [{ server, consumer: 'qemu', disks }, { server: twin, consumer: 'qemu', disks }];
    expect(guestFindings(facts({ volumes: [v], attachments: [a], listings, guests }))).toEqual([]);
    // With no attachment at all, the disk is found once, not once per record.
    expect(guestFindings(facts({ volumes: [v], guests })).map((f) => f.kind)).toEqual(['guest_disk_without_attachment']);
  });

  it('an attachment whose host device is gone is left to the reconnect fix; a busy volume is skipped; a guest not listed says nothing', () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const a = fileAttachment(v, 'attached', '/dev/loop3');
    const gone = findDifferences(facts({ volumes: [v], attachments: [a], listings: loop([]), guests: [guest([])] }));
    expect(gone.map((f) => f.kind)).toEqual(['attachment_device_gone', 'attachment_missing_from_guest']);
    expect(gone[1]!.skip).toContain('reconnect');
    const stray = volume('s', 'available', '/data/volumes/s.img');
    expect(guestFindings(facts({ volumes: [stray], busyVolumeIds: new Set([stray.id]), guests: [guest([stray.id])] }))[0]!.skip).toContain('running');
    expect(guestFindings(facts({ volumes: [v], attachments: [a], listings: loop([loopDevice('/dev/loop3', '/data/volumes/a.img')]) }))).toEqual([]);
  });

  it('never replugs a recorded device its transport does not list as that very device, or could not list', () => {
    const v = volume('a', 'in-use', '/data/volumes/a.img');
    const a = { ...fileAttachment(v, 'attached', '/dev/loop3'), device: { path: '/dev/loop3', type: 'block' as const, identity: { kind: 'loop', rdev: '7:3', backingInode: 11 } } };
    const g = guest([]);
    // The transport failed to list: nothing checked the recorded device.
    const unlisted = guestFindings(facts({ volumes: [v], attachments: [a], listings: [], guests: [g] }));
    expect(unlisted).toEqual([expect.objectContaining({ kind: 'attachment_missing_from_guest', skip: expect.stringContaining('cannot be checked') })]);
    // Listed after the findings' first reading no more.
    const vanished = guestFindings(
      facts({ volumes: [v], attachments: [a], listings: loop([{ device: a.device, source: { device_path: '/data/volumes/a.img' } }]), listingsAfter: loop([]), guests: [g] }),
    );
    expect(vanished.find((f) => f.kind === 'attachment_missing_from_guest')?.skip).toMatch(/reconnect|not listed/);
    expect(describeFinding(unlisted[0]!)).toMatchObject({ state: 'skipped', fix: 'replug' });
  });

  it('a disk an attachment of the volume to that server accounts for (any live status) is no finding', () => {
    const v = volume('a', 'attaching', '/data/volumes/a.img');
    const a = fileAttachment(v, 'attaching', null);
    expect(guestFindings(facts({ volumes: [v], attachments: [a], guests: [guest([v.id])] }))).toEqual([]);
  });
});

describe('volumeOfSource', () => {
  it('knows a volume by its provider location (file or target IQN)', () => {
    const file = volume('f', 'available', '/data/volumes/f.img');
    const tgt = volume('t', 'available', 'iqn.2010-10.org.berth:volume-9', 'tgt');
    expect(volumeOfSource({ device_path: '/data/volumes/f.img' }, [file, tgt], [], LOOP_KEYS)?.id).toBe(file.id);
    expect(volumeOfSource({ target_iqn: 'iqn.2010-10.org.berth:volume-9', target_lun: 1 }, [file, tgt], [], ISCSI_KEYS)?.id).toBe(tgt.id);
    expect(volumeOfSource({ device_path: '/etc/passwd' }, [file, tgt], [], LOOP_KEYS)).toBeUndefined();
  });

  it('knows no volume through a transport without source keys', () => {
    const file = volume('f', 'available', '/data/volumes/f.img');
    expect(volumeOfSource({ device_path: '/data/volumes/f.img' }, [file], [], [])).toBeUndefined();
  });
});
