import { describe, expect, it } from 'vitest';
import { condlogPrefix, formatMapTable, formatPathTable, formatSize, formatStatus, formatTopology, printfFixed, type MapView, type PathView } from './multipath-format.js';
import { shortGetopt } from './short-getopt.js';

const W = '360000000000000000e00000000010001';

function path(dev: string, hcil: string, devT: string, extra: Partial<PathView> = {}): PathView {
  return {
    wwid: W,
    hcil,
    dev,
    devT,
    dmState: 'active',
    checkerState: 'ready',
    devState: 'running',
    vendor: 'IET',
    product: 'VIRTUAL-DISK',
    rev: '0001',
    priority: 1,
    sizeSectors: 4194304,
    serial: 'beaf11',
    map: W,
    failures: 0,
    ...extra,
  };
}

describe('multipath sizes (snprint_size)', () => {
  it('prints units of 1024 from KiB, one decimal below 10, rounded like printf', () => {
    expect(formatSize(131072)).toBe('64M');
    expect(formatSize(4194304)).toBe('2.0G');
    expect(formatSize(2097152)).toBe('1.0G');
    expect(formatSize(3145728)).toBe('1.5G');
    expect(formatSize(20971520)).toBe('10G');
    expect(formatSize(1024)).toBe('512K');
    expect(formatSize(8)).toBe('4.0K');
    expect(formatSize(2 ** 41)).toBe('1.0P');
    // glibc rounds an exact tie to even; toFixed would round it up.
    expect(printfFixed(2.25, 1)).toBe('2.2');
    expect(printfFixed(2.35, 1)).toBe((2.35).toFixed(1));
    expect(printfFixed(64.5, 0)).toBe('64');
    expect(printfFixed(65.5, 0)).toBe('66');
  });
});

describe('multipath -ll topology', () => {
  const map: MapView = {
    name: W,
    wwid: W,
    sysfs: 'dm-3',
    sizeSectors: 4194304,
    groups: [
      { status: 'active', priority: 1, paths: [path('sdj', '10:0:0:1', '8:144')] },
      { status: 'enabled', priority: 0, paths: [path('sdb', '2:0:0:1', '8:16', { dmState: 'failed', checkerState: 'faulty' })] },
    ],
  };

  it('draws the groups as a tree with path fields padded to a common width', () => {
    expect(formatTopology(map)).toBe(
      `${W} dm-3 IET,VIRTUAL-DISK\n` +
        "size=2.0G features='0' hwhandler='0' wp=rw\n" +
        "|-+- policy='service-time 0' prio=1 status=active\n" +
        '| `- 10:0:0:1 sdj 8:144 active ready  running\n' +
        "`-+- policy='service-time 0' prio=0 status=enabled\n" +
        '  `- 2:0:0:1  sdb 8:16  failed faulty running\n',
    );
  });

  it('adds the wwid after a name that is not it, and the action before', () => {
    const first = formatTopology({ ...map, name: 'mpatha', sysfs: undefined, action: 'create' }).split('\n').slice(0, 2);
    expect(first).toEqual([`create: mpatha (${W}) undef IET,VIRTUAL-DISK`, "size=2.0G features='0' hwhandler='0' wp=undef"]);
  });

  it('shows a map without paths with ##,## and no groups', () => {
    expect(formatTopology({ ...map, groups: [] })).toBe(`${W} dm-3 ##,##\nsize=2.0G features='0' hwhandler='0' wp=rw\n`);
  });
});

describe('multipathd tables', () => {
  it('pads columns (the last one too) under a header, or prints raw rows', () => {
    const paths = [path('sda', '0:0:0:1', '8:0'), path('sdb', '1:0:0:1', '8:16', { map: undefined, dmState: 'undef', checkerState: 'undef', devState: 'unknown' })];
    expect(formatPathTable(paths, '%d %t %o', true)).toBe('dev dm_st  dev_st \nsda active running\nsdb undef  unknown\n');
    expect(formatPathTable(paths, '%d', false)).toBe('sda\nsdb\n');
    expect(formatPathTable(paths, '%d %m %z %P %L', false)).toBe(`sda ${W} beaf11 scsi:iscsi 0x0001000000000000\nsdb [orphan] beaf11 scsi:iscsi 0x0001000000000000\n`);
    // Nothing to show: no header (the client then prints `ok`).
    expect(formatPathTable([], '%d', true)).toBe('');
    expect(formatMapTable([], '%n', true)).toBe('');
    // An unknown wildcard prints nothing.
    expect(formatPathTable(paths.slice(0, 1), '%d|%Y|', false)).toBe('sda||\n');
  });

  it('counts checker states in their enum order', () => {
    expect(formatStatus(['up', 'down', 'up'])).toBe('path checker states:\ndown                1\nup                  2\n\npaths: 3\nbusy: False\n');
    expect(formatStatus([])).toBe('path checker states:\n\npaths: 0\nbusy: False\n');
  });

  it("prefixes condlog lines with CLOCK_MONOTONIC's seconds and microseconds", () => {
    expect(condlogPrefix()).toMatch(/^\d+\.\d{6} \| $/);
  });
});

describe('short options as glibc getopt parses them', () => {
  const spec = ':adDcChl::eFfM:v:p:b:BrR:itTquUwW';
  it('takes -ll as -l with the optional argument l, and permutes operands', () => {
    expect(shortGetopt(['-ll'], spec)).toEqual({ options: [{ ch: 'l', arg: 'l' }], operands: [] });
    expect(shortGetopt(['-l'], spec)).toEqual({ options: [{ ch: 'l' }], operands: [] });
    expect(shortGetopt(['NAME', '-f'], spec)).toEqual({ options: [{ ch: 'f' }], operands: ['NAME'] });
    expect(shortGetopt(['-v', '2', '-a', 'W'], spec)).toEqual({ options: [{ ch: 'v', arg: '2' }, { ch: 'a' }], operands: ['W'] });
    expect(shortGetopt(['-v3', '--', '-f'], spec)).toEqual({ options: [{ ch: 'v', arg: '3' }], operands: ['-f'] });
  });

  it('reports unknown switches and missing arguments', () => {
    expect(shortGetopt(['-Z'], spec).options).toEqual([{ ch: '?', opt: 'Z' }]);
    expect(shortGetopt(['-v'], spec).options).toEqual([{ ch: ':', opt: 'v' }]);
  });
});
