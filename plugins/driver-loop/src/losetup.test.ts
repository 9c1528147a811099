import { describe, expect, it } from 'vitest';
import {
  majorMinor,
  classifyLosetupError,
  findShowArgs,
  loopIdentity,
  loopName,
  parseBackFile,
  parseFuserPids,
  parseFindShow,
  parseGetSize64,
  parseAttachAnswer,
  parseLosetupList,
} from './losetup.js';
import { readFixture } from '@berth/testkit/fixtures';

describe('parseLosetupList (recorded losetup --json --list)', () => {
  it('reads two devices in the order losetup prints them, flags as booleans', () => {
    const recorded = readFixture('losetup-json-list-2.txt');
    expect(recorded.cmd).toBe('losetup --json --list');
    expect(parseLosetupList(recorded.stdout)).toEqual([
      {
        name: '/dev/loop1',
        backingFile: '/srv/fixt/disk-b.img',
        deleted: false,
        readOnly: true,
        directIo: false,
        autoclear: false,
        offset: 0,
        sizeLimit: 0,
        logicalSectorSize: 512,
      },
      {
        name: '/dev/loop0',
        backingFile: '/srv/fixt/disk-a.img',
        deleted: false,
        readOnly: false,
        directIo: true,
        autoclear: false,
        offset: 0,
        sizeLimit: 0,
        logicalSectorSize: 512,
      },
    ]);
  });

  it('reads the empty array with a blank line inside as no devices', () => {
    const recorded = readFixture('losetup-json-list-empty.txt');
    expect(recorded.rc).toBe(0);
    expect(parseLosetupList(recorded.stdout)).toEqual([]);
  });

  it('reads empty output as no devices', () => {
    expect(parseLosetupList('')).toEqual([]);
    expect(parseLosetupList('\n')).toEqual([]);
  });

  it('reads a FUSE-backed device and the one-device listing', () => {
    const [fuse] = parseLosetupList(readFixture('losetup-fuse-json-list.txt').stdout);
    expect(fuse).toMatchObject({ name: '/dev/loop0', backingFile: '/srv/fixt/vol1.fuse', directIo: true });
    const [one, ...rest] = parseLosetupList(readFixture('losetup-list-one-device.txt').stdout);
    expect(rest).toEqual([]);
    expect(one).toMatchObject({ name: '/dev/loop0', backingFile: '/srv/fixt/disk-a.img' });
  });

  it('splits the " (deleted)" suffix off an unlinked back-file', () => {
    const json = JSON.stringify({
      loopdevices: [{ name: '/dev/loop9', 'back-file': '/var/lib/berth/volumes/a b.img (deleted)', ro: false, dio: true }],
    });
    expect(parseLosetupList(json)[0]).toMatchObject({
      name: '/dev/loop9',
      backingFile: '/var/lib/berth/volumes/a b.img',
      deleted: true,
    });
  });

  it('accepts the string flags of older util-linux and a missing back-file', () => {
    const json = JSON.stringify({ loopdevices: [{ name: '/dev/loop2', 'back-file': null, ro: '1', dio: '0', sizelimit: '0' }] });
    expect(parseLosetupList(json)[0]).toMatchObject({ backingFile: null, readOnly: true, directIo: false, sizeLimit: 0 });
  });

  it('reads a device the kernel is tearing down (its sysfs columns print as null) without failing the listing', () => {
    const json = JSON.stringify({
      loopdevices: [
        { name: '/dev/loop4', 'back-file': '/var/lib/berth/a.img', offset: 0, sizelimit: 0, ro: false, dio: false, autoclear: false },
        { name: '/dev/loop5', 'back-file': null, 'back-ino': null, offset: null, sizelimit: null, ro: null, dio: null, autoclear: null, 'log-sec': null },
      ],
    });
    const [kept, leaving] = parseLosetupList(json);
    expect(kept).toMatchObject({ name: '/dev/loop4', backingFile: '/var/lib/berth/a.img' });
    expect(leaving).toMatchObject({ name: '/dev/loop5', backingFile: null, offset: 0, sizeLimit: 0, readOnly: false, directIo: false });
  });

  it('keeps a backing inode above 2^53 exact (losetup prints it as a JSON number)', () => {
    const stdout = '{"loopdevices": [{"name": "/dev/loop3", "back-file": "/x.img", "back-ino":18446744073709551557, "back-maj:min": "  0:53  "}]}';
    const [device] = parseLosetupList(stdout);
    expect(device?.backingInodeText).toBe('18446744073709551557');
    expect(device?.backingDev).toBe('0:53');
  });

  it('refuses output that is not losetup JSON', () => {
    expect(() => parseLosetupList('NAME SIZELIMIT\n')).toThrow(/not JSON/);
    expect(() => parseLosetupList('{"loopdevices":[{"name":"/dev/sda"}]}')).toThrow(/unexpected shape/);
  });
});

describe('parseFindShow / parseGetSize64 (recorded)', () => {
  it('reads the attached device of --find --show', () => {
    for (const name of ['losetup-find-show.txt', 'losetup-find-show-direct-io.txt', 'losetup-fuse-find-show.txt']) {
      expect(parseFindShow(readFixture(name).stdout)).toBe('/dev/loop0');
    }
    expect(parseFindShow(readFixture('losetup-find-show-readonly.txt').stdout)).toBe('/dev/loop1');
  });

  it('refuses anything but one loop device node', () => {
    expect(() => parseFindShow('')).toThrow();
    expect(() => parseFindShow('/dev/sda\n')).toThrow();
    expect(() => parseFindShow('/dev/loop0\n/dev/loop1\n')).toThrow();
  });

  it('reads sizes before and after set-capacity, and 0 for an unattached device', () => {
    expect(parseGetSize64(readFixture('blockdev-getsize64-before.txt').stdout)).toBe(67_108_864);
    expect(parseGetSize64(readFixture('blockdev-getsize64-after-grow-before-set-capacity.txt').stdout)).toBe(67_108_864);
    expect(parseGetSize64(readFixture('blockdev-getsize64-after-set-capacity.txt').stdout)).toBe(100_663_296);
    expect(parseGetSize64(readFixture('blockdev-getsize64-unattached.txt').stdout)).toBe(0);
    expect(() => parseGetSize64('blockdev: cannot open\n')).toThrow();
  });
});

describe('classifyLosetupError (recorded stderr)', () => {
  it('tells a missing backing file', () => {
    const recorded = readFixture('losetup-find-show-missing-file.txt');
    expect(recorded.rc).toBe(1);
    expect(classifyLosetupError(recorded.stderr)).toBe('missing-file');
  });

  it('tells a device that is attached to nothing from a node that does not exist', () => {
    expect(classifyLosetupError(readFixture('losetup-detach-unattached.txt').stderr)).toBe('not-attached');
    expect(classifyLosetupError(readFixture('losetup-set-capacity-unattached.txt').stderr)).toBe('not-attached');
    expect(classifyLosetupError(readFixture('losetup-detach-nonexistent-node.txt').stderr)).toBe('no-device');
  });

  it('tells permission problems and exhausted loop devices', () => {
    // Recorded on this machine as uid 65534 (not in the shared fixtures).
    expect(classifyLosetupError('losetup: /tmp/a.img: failed to set up loop device: Permission denied\n')).toBe('permission');
    expect(classifyLosetupError('losetup: cannot find an unused loop device\n')).toBe('no-free-device');
    expect(classifyLosetupError('losetup: could not find any free loop device\n')).toBe('no-free-device');
    expect(classifyLosetupError('losetup: something else\n')).toBe('other');
  });
});

describe('helpers', () => {
  it('builds --find --show arguments with the file after --', () => {
    expect(findShowArgs('/v/a.img', { directIo: true, readOnly: false })).toEqual(['--find', '--show', '--direct-io=on', '--', '/v/a.img']);
    expect(findShowArgs('-x.img', { directIo: false, readOnly: true })).toEqual(['--find', '--show', '--read-only', '--', '-x.img']);
  });

  it('maps a device node to its sysfs name', () => {
    expect(loopName('/dev/loop12')).toBe('loop12');
    expect(() => loopName('/dev/sda')).toThrow();
    expect(() => loopName('/dev/loop1/../sda')).toThrow();
  });

  it('splits back-files', () => {
    expect(parseBackFile(undefined)).toEqual({ backingFile: null, deleted: false });
    expect(parseBackFile('/a (deleted)')).toEqual({ backingFile: '/a', deleted: true });
  });
});

describe('loop device identity (losetup --json --list --output NAME,MAJ:MIN,BACK-FILE,BACK-INO,BACK-MAJ:MIN,...)', () => {
  // util-linux 2.38.1 on this machine, one whole-file device and one at an offset over the same file.
  const listed = `{
   "loopdevices": [
      {"name": "/dev/loop1", "maj:min": "  7:1  ", "back-file": "/tmp/p/f.img", "back-ino": 2146594, "back-maj:min": "     254:0  ",
       "offset": 4096, "sizelimit": 0, "autoclear": false, "ro": false, "dio": false, "log-sec": 512},
      {"name": "/dev/loop0", "maj:min": "  7:0  ", "back-file": "/tmp/p/f.img", "back-ino": 2146594, "back-maj:min": "     254:0  ",
       "offset": 0, "sizelimit": 0, "autoclear": true, "ro": false, "dio": false, "log-sec": 512}
   ]
}`;

  it('reads the device number and the backing file\'s device and inode, without the padding', () => {
    const [partial, whole] = parseLosetupList(listed);
    expect(whole).toMatchObject({ name: '/dev/loop0', rdev: '7:0', backingDev: '254:0', backingInode: 2146594, autoclear: true });
    expect(loopIdentity(whole!)).toEqual({ kind: 'loop', rdev: '7:0', backingDev: '254:0', backingInode: 2146594, offset: 0, sizeLimit: 0 });
    // Same file, same inode, another window of it: another identity.
    expect(loopIdentity(partial!)).toMatchObject({ rdev: '7:1', offset: 4096 });
  });

  it('has no identity for a listing without those columns', () => {
    const recorded = '{"loopdevices": [{"name": "/dev/loop0", "back-file": "/srv/a.img", "offset": 0, "sizelimit": 0}]}';
    expect(loopIdentity(parseLosetupList(recorded)[0]!)).toBeUndefined();
  });
});

describe('parseFuserPids', () => {
  it('reads the process ids fuser prints (with access letters on some versions)', () => {
    expect(parseFuserPids(' 15570')).toEqual([15570]);
    expect(parseFuserPids(' 1234m 5678c\n')).toEqual([1234, 5678]);
    expect(parseFuserPids('')).toEqual([]);
  });
});

describe('majorMinor', () => {
  it('decodes device numbers as glibc does, minors of 256 and more included', () => {
    expect(majorMinor(65024n)).toBe('254:0');
    // tmpfs at 0:300: (300 & 0xff) | ((300 & ~0xff) << 12)
    expect(majorMinor(44n | (256n << 12n))).toBe('0:300');
    // a major above 4095: its high bits above bit 32
    expect(majorMinor((5000n & 0xfffn) << 8n | ((5000n & ~0xfffn) << 32n) | 7n)).toBe('5000:7');
  });
});

describe('parseAttachAnswer (berth-loop-attach\'s line)', () => {
  it('reads an attached device: number, backing device, exact inode, window, flags', () => {
    const answer = parseAttachAnswer('free\nattached /dev/loop300 7:300 254:0 9007199254740993 0 0 17\n', '/srv/v.img');
    expect(answer).toEqual({
      kind: 'attached',
      device: {
        name: '/dev/loop300',
        backingFile: '/srv/v.img',
        deleted: false,
        readOnly: true,
        directIo: true,
        autoclear: false,
        offset: 0,
        sizeLimit: 0,
        logicalSectorSize: null,
        rdev: '7:300',
        backingDev: '254:0',
        backingInode: 9007199254740992,
        backingInodeText: '9007199254740993',
      },
    });
  });

  it('reads an existing device marked autoclear', () => {
    const answer = parseAttachAnswer('existing /dev/loop0 7:0 254:0 12 0 0 4\n', '/srv/v.img');
    expect(answer?.kind === 'existing' && answer.device).toMatchObject({ name: '/dev/loop0', autoclear: true, readOnly: false, directIo: false, backingInode: 12 });
  });

  it('reads the answers that name no device, and nothing it knows as undefined', () => {
    expect(parseAttachAnswer('free\n', '/f')).toEqual({ kind: 'free' });
    expect(parseAttachAnswer('no-permission\n', '/f')).toEqual({ kind: 'no-permission' });
    expect(parseAttachAnswer('failed LOOP_CONFIGURE 16\n', '/f')).toEqual({ kind: 'failed', reason: 'LOOP_CONFIGURE 16' });
    expect(parseAttachAnswer('free\nundone LOOP_GET_STATUS64 6\n', '/f')).toEqual({ kind: 'undone', reason: 'LOOP_GET_STATUS64 6' });
    expect(parseAttachAnswer('free\nundo-failed /dev/loop3 LOOP_GET_STATUS64 6 16\n', '/f')).toEqual({ kind: 'undo-failed', reason: '/dev/loop3 LOOP_GET_STATUS64 6 16' });
    expect(parseAttachAnswer('', '/f')).toBeUndefined();
    expect(parseAttachAnswer('attached /dev/sda 8:0 254:0 12 0 0 0\n', '/f')).toBeUndefined();
  });
});
