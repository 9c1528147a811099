import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { CommandResult, HostServices } from '@berth/host';
import { afterEach, describe, expect, it } from 'vitest';
import { WWIDS_FILE_HEADER } from './dm-multipath.js';
import { SimulatedHost, type SimulatedHostOptions } from './simulated-host.js';
import { VOL1, VOL2, iscsiadm, loginManual, node } from './test-helpers.js';

// The device-mapper multipath model: one target on several portals (same LUN, same WWN),
// a session per portal, `multipath -a` + `multipathd add path`, and what multipath-tools 0.9.4
// shows and does afterwards.

const MiB = 1 << 20;
/** udev ID_SERIAL of tid 1 LUN 1 (the multipath wwid and map name). */
const W1 = '360000000000000000e00000000010001';
/** tid 2 LUN 1. */
const W2 = '360000000000000000e00000000020001';
const PORTALS = ['127.0.0.1:3260', '127.0.0.2:3260', '127.0.0.3:3260', '127.0.0.4:3260'];
/** condlog's prefix: CLOCK_MONOTONIC `secs.usecs | `. */
const TS = String.raw`\d+\.\d{6} \| `;

let sim: SimulatedHost | undefined;

afterEach(async () => {
  await sim?.stop();
  sim = undefined;
});

async function start(options: SimulatedHostOptions = {}): Promise<{ sim: SimulatedHost; services: HostServices }> {
  sim = await SimulatedHost.start(options);
  return { sim, services: sim.hostServices() };
}

function run(services: HostServices, tool: string, ...args: string[]): Promise<CommandResult> {
  return services.runner.run(tool, args, { reject: false, timeoutMs: 30_000 });
}

/** What a driver does per portal: node record, scan=manual, login, scan LUN `lun`; returns the sd names in portal order. */
async function connectPaths(sim: SimulatedHost, services: HostServices, iqn: string, portals: string[], lun = 1): Promise<string[]> {
  const names: string[] = [];
  for (const portal of portals) {
    const { host } = await loginManual(sim, services, iqn, portal);
    await services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, `- - ${lun}`);
    const byPath = `/dev/disk/by-path/ip-${portal}-iscsi-${iqn}-lun-${lun}`;
    await services.waiter.waitForPath(byPath, { timeoutMs: 5_000 });
    names.push((await services.fs.realpath(byPath)).slice('/dev/'.length));
  }
  return names;
}

/** A model SAN target on `portals` with LUN 1 (64 MiB). */
async function addTarget(sim: SimulatedHost, iqn: string, portals: string[]): Promise<string> {
  const t = await sim.san.addTarget({ iqn, portals, luns: { 1: { sizeBytes: 64 * MiB } } });
  return t.luns[0]!.file;
}

function topology(wwid: string, dm: string, paths: Array<[hcil: string, dev: string, devT: string, state: string]>, groups?: Array<[prio: number, status: string]>): string {
  const w = (i: 1 | 2): number => Math.max(...paths.map((p) => p[i].length));
  let out = `${wwid} ${dm} IET,VIRTUAL-DISK\nsize=64M features='0' hwhandler='0' wp=rw\n`;
  paths.forEach(([hcil, dev, devT, state], i) => {
    const last = i === paths.length - 1;
    const [prio, status] = groups?.[i] ?? [1, i === 0 ? 'active' : 'enabled'];
    out += `${last ? '`' : '|'}-+- policy='service-time 0' prio=${prio} status=${status}\n`;
    out += `${last ? ' ' : '|'} \`- ${hcil} ${dev.padEnd(w(1))} ${devT.padEnd(w(2))} ${state}\n`;
  });
  return out;
}

describe('device-mapper multipath on the simulated host', { timeout: 60_000 }, () => {
  it('makes one map of two sessions to one target only once the wwid is listed and a path added (find_multipaths strict)', async () => {
    const { sim, services } = await start();
    const lunFile = await addTarget(sim, VOL1, PORTALS.slice(0, 2));
    const fs = services.fs;
    expect(await connectPaths(sim, services, VOL1, PORTALS.slice(0, 2))).toEqual(['sda', 'sdb']);

    // Strict: both paths are multipathd's orphans, no map, nothing holds the disks.
    expect(await run(services, 'multipathd', 'show', 'maps')).toMatchObject({ exitCode: 0, stdout: 'ok\n', stderr: '' });
    expect(await run(services, 'multipath', '-ll')).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });
    expect(await run(services, 'multipathd', 'show', 'paths', 'raw', 'format', '%d')).toMatchObject({ exitCode: 0, stdout: 'sda\nsdb\n' });
    expect((await run(services, 'multipathd', 'show', 'paths')).stdout).toBe(
      'hcil    dev dev_t pri dm_st chk_st dev_st  next_check\n' +
        '0:0:0:1 sda 8:0   1   undef undef  unknown orphan    \n' +
        '1:0:0:1 sdb 8:16  1   undef undef  unknown orphan    \n',
    );
    // add path without the wwid listed: accepted, still an orphan.
    expect(await run(services, 'multipathd', 'add', 'path', '/dev/sda')).toMatchObject({ exitCode: 0, stdout: 'ok\n' });
    expect(await fs.readdir('/sys/block/sda/holders')).toEqual([]);
    expect(await fs.exists('/etc/multipath/wwids')).toBe(false);

    // multipath -a: os-brick compares this stdout exactly; listing the wwid alone makes no map.
    expect(await run(services, 'multipath', '-a', W1)).toMatchObject({ exitCode: 0, stdout: `wwid '${W1}' added\n`, stderr: '' });
    expect(await run(services, 'multipath', '-a', W1)).toMatchObject({ exitCode: 0, stdout: `wwid '${W1}' added\n` });
    expect(await fs.readFile('/etc/multipath/wwids')).toBe(`${WWIDS_FILE_HEADER}/${W1}/\n`);
    expect((await sim.state()).maps).toEqual([]);

    expect(await run(services, 'multipathd', 'add', 'path', '/dev/sda')).toMatchObject({ exitCode: 0, stdout: 'ok\n', stderr: '' });
    // The kernel has the map at once (sysfs); udev makes /dev/dm-0 and its links a little later.
    expect(await fs.readFile('/sys/block/dm-0/dm/name')).toBe(`${W1}\n`);
    expect(await fs.readFile('/sys/block/dm-0/dm/uuid')).toBe(`mpath-${W1}\n`);
    expect(await fs.readFile('/sys/block/dm-0/size')).toBe(`${(64 * MiB) / 512}\n`);
    expect(await fs.readFile('/sys/block/dm-0/dev')).toBe('254:0\n');
    expect(await fs.realpath('/sys/block/dm-0')).toBe('/sys/devices/virtual/block/dm-0');
    // Every present path of the wwid joined, not only the one added.
    expect((await fs.readdir('/sys/block/dm-0/slaves')).sort()).toEqual(['sda', 'sdb']);
    expect(await fs.realpath('/sys/block/dm-0/slaves/sdb')).toBe(await fs.realpath('/sys/block/sdb'));
    for (const sd of ['sda', 'sdb']) {
      expect(await fs.readdir(`/sys/block/${sd}/holders`)).toEqual(['dm-0']);
      expect(await fs.realpath(`/sys/block/${sd}/holders/dm-0`)).toBe('/sys/devices/virtual/block/dm-0');
    }
    await services.waiter.waitForPath('/dev/mapper/' + W1, { timeoutMs: 5_000 });
    expect(await fs.readlink(`/dev/mapper/${W1}`)).toBe('../dm-0');
    expect(await fs.readlink(`/dev/disk/by-id/dm-name-${W1}`)).toBe('../../dm-0');
    expect(await fs.readlink(`/dev/disk/by-id/dm-uuid-mpath-${W1}`)).toBe('../../dm-0');
    // The paths' links move to the map (link_priority); by-path stays on the disks.
    expect(await fs.readlink(`/dev/disk/by-id/scsi-${W1}`)).toBe('../../dm-0');
    expect(await fs.readlink('/dev/disk/by-id/wwn-0x60000000000000000e00000000010001')).toBe('../../dm-0');
    expect(await fs.readlink(`/dev/disk/by-path/ip-127.0.0.2:3260-iscsi-${VOL1}-lun-1`)).toBe('../../sdb');

    const ll = await run(services, 'multipath', '-ll');
    expect(ll).toMatchObject({ exitCode: 0, stderr: '' });
    expect(ll.stdout).toBe(
      topology(W1, 'dm-0', [
        ['0:0:0:1', 'sda', '8:0', 'active ready running'],
        ['1:0:0:1', 'sdb', '8:16', 'active ready running'],
      ]),
    );
    expect((await run(services, 'multipath', '-l')).stdout).toBe(
      topology(
        W1,
        'dm-0',
        [
          ['0:0:0:1', 'sda', '8:0', 'active undef running'],
          ['1:0:0:1', 'sdb', '8:16', 'active undef running'],
        ],
        [
          [0, 'active'],
          [0, 'enabled'],
        ],
      ),
    );
    // os-brick's find_multipath_device: `multipath -l <path>` lists the map holding the path.
    expect((await run(services, 'multipath', '-l', '/dev/sdb')).stdout.split('\n')[0]).toBe(`${W1} dm-0 IET,VIRTUAL-DISK`);
    expect((await run(services, 'multipathd', 'show', 'topology')).stdout).toBe(ll.stdout);
    expect((await run(services, 'multipathd', 'show', 'maps')).stdout).toBe(
      `name${' '.repeat(30)}sysfs uuid${' '.repeat(29)}\n${W1} dm-0  ${W1}\n`,
    );
    expect((await run(services, 'multipathd', 'show', 'paths')).stdout).toBe(
      'hcil    dev dev_t pri dm_st  chk_st dev_st  next_check    \n' +
        '0:0:0:1 sda 8:0   1   active ready  running XX........ 1/5\n' +
        '1:0:0:1 sdb 8:16  1   active ready  running XX........ 1/5\n',
    );
    expect((await run(services, 'multipathd', 'show', 'status')).stdout).toBe('path checker states:\nup                  2\n\npaths: 2\nbusy: False\n');
    expect((await run(services, 'multipathd', 'show', 'maps', 'raw', 'format', '%n %N %S %s')).stdout).toBe(`${W1} 2 64M IET,VIRTUAL-DISK\n`);
    expect(await run(services, 'multipath', '-C', 'dm-0')).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });

    // The map's node gives access to the LUN's bytes.
    await services.waiter.waitForPath('/dev/dm-0', { timeoutMs: 5_000 });
    await fsp.writeFile(fs.resolve('/dev/dm-0'), 'written through /dev/dm-0', { flag: 'r+' });
    expect((await run(services, 'blockdev', '--flushbufs', `/dev/mapper/${W1}`)).exitCode).toBe(0);
    expect((await run(services, 'blockdev', '--getsize64', `/dev/mapper/${W1}`)).stdout).toBe(`${64 * MiB}\n`);
    expect((await fsp.readFile(lunFile)).subarray(0, 25).toString()).toBe('written through /dev/dm-0');

    const state = await sim.state();
    expect(state.maps).toEqual([
      {
        name: W1,
        dm: 'dm-0',
        wwid: W1,
        sizeBytes: 64 * MiB,
        devicePresent: true,
        open: false,
        ioPath: 'sda',
        paths: [
          { device: 'sda', hctl: '0:0:0:1', dmState: 'active', checkerState: 'ready', deviceState: 'running', active: true },
          { device: 'sdb', hctl: '1:0:0:1', dmState: 'active', checkerState: 'ready', deviceState: 'running', active: false },
        ],
      },
    ]);
    expect(state.multipathd).toEqual({ running: true, paths: ['sda', 'sdb'] });
    expect(state.logins).toEqual([
      { iqn: VOL1, portal: PORTALS[0], attempts: 1, succeeded: 1 },
      { iqn: VOL1, portal: PORTALS[1], attempts: 1, succeeded: 1 },
    ]);

    // multipath -f: gone with every node and link; the disks get their by-id links back.
    expect(await run(services, 'multipath', '-f', W1)).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });
    for (const p of ['/dev/dm-0', `/dev/mapper/${W1}`, '/sys/block/dm-0', '/sys/devices/virtual/block/dm-0', `/dev/disk/by-id/dm-uuid-mpath-${W1}`]) {
      expect(await fs.exists(p), p).toBe(false);
    }
    expect(await fs.readdir('/sys/block/sda/holders')).toEqual([]);
    expect(await fs.readlink(`/dev/disk/by-id/scsi-${W1}`)).toBe('../../sdb');
    expect((await run(services, 'multipath', '-ll')).stdout).toBe('');
  });

  it('makes one map of four sessions through four portals, by itself when the wwid is listed first', async () => {
    const { sim, services } = await start();
    await addTarget(sim, VOL1, PORTALS);
    expect((await run(services, 'multipath', '-a', W1)).stdout).toBe(`wwid '${W1}' added\n`);
    const names = await connectPaths(sim, services, VOL1, PORTALS);
    expect(names).toEqual(['sda', 'sdb', 'sdc', 'sdd']);
    // Every new disk of a listed wwid joins without `add path` (multipathd saw its uevent).
    const { maps } = await sim.state();
    expect(maps.map((m) => [m.dm, m.paths.map((p) => p.device)])).toEqual([['dm-0', names]]);
    expect((await services.fs.readdir('/sys/block/dm-0/slaves')).sort()).toEqual(names);
    expect((await run(services, 'multipath', '-ll')).stdout).toBe(
      topology(W1, 'dm-0', [
        ['0:0:0:1', 'sda', '8:0', 'active ready running'],
        ['1:0:0:1', 'sdb', '8:16', 'active ready running'],
        ['2:0:0:1', 'sdc', '8:32', 'active ready running'],
        ['3:0:0:1', 'sdd', '8:48', 'active ready running'],
      ]),
    );
    expect((await run(services, 'multipathd', 'show', 'status')).stdout).toBe('path checker states:\nup                  4\n\npaths: 4\nbusy: False\n');
    expect((await sim.state()).logins.map((l) => [l.portal, l.succeeded])).toEqual(PORTALS.map((p) => [p, 1]));

    // The LUN grows: each path sees it after a rescan, the map after `multipathd resize map`.
    await sim.san.growLun(VOL1, 1, 128 * MiB);
    for (const s of (await sim.state()).sessions) expect((await iscsiadm(services, '-m', 'session', '-r', String(s.sid), '--rescan')).exitCode).toBe(0);
    for (const sd of names) await services.waiter.waitUntil(`/sys/block/${sd}`, async () => ((await services.fs.readFile(`/sys/block/${sd}/size`)) === `${(128 * MiB) / 512}\n` ? true : undefined), { timeoutMs: 5_000 });
    expect((await run(services, 'blockdev', '--getsize64', '/dev/dm-0')).stdout).toBe(`${64 * MiB}\n`);
    expect((await run(services, 'multipathd', 'resize', 'map', W1)).stdout).toBe('ok\n');
    expect((await run(services, 'blockdev', '--getsize64', '/dev/dm-0')).stdout).toBe(`${128 * MiB}\n`);
    expect(await services.fs.readFile('/sys/block/dm-0/size')).toBe(`${(128 * MiB) / 512}\n`);
    expect((await run(services, 'multipath', '-ll')).stdout.split('\n')[1]).toBe("size=128M features='0' hwhandler='0' wp=rw");
  });

  it('forms no map by itself while multipathd misses uevents, until `multipathd add path`', async () => {
    const { sim, services } = await start();
    await addTarget(sim, VOL1, PORTALS.slice(0, 2));
    await run(services, 'multipath', '-a', W1);
    await sim.faults.multipathdMissesNewPaths();
    await connectPaths(sim, services, VOL1, PORTALS.slice(0, 2));
    expect((await sim.state()).maps).toEqual([]);
    expect((await run(services, 'multipathd', 'show', 'paths', 'raw', 'format', '%d')).stdout).toBe('ok\n');
    expect((await run(services, 'multipathd', 'add', 'path', '/dev/sdb')).stdout).toBe('ok\n');
    // Only the paths multipathd knows join: sdb now; sda when it is added too.
    expect((await sim.state()).maps.map((m) => m.paths.map((p) => p.device))).toEqual([['sdb']]);
    expect((await run(services, 'multipathd', 'add', 'path', 'sda')).stdout).toBe('ok\n');
    expect((await sim.state()).maps.map((m) => m.paths.map((p) => p.device))).toEqual([['sdb', 'sda']]);
    expect(await run(services, 'multipathd', 'add', 'path', '/dev/sdz')).toMatchObject({ exitCode: 1, stdout: 'fail\n', stderr: '' });
  });

  it('a late add uevent of a path `multipathd add path` took first is spurious: it does not remake the map flushed since', async () => {
    // udev is slow: /dev/sda is there (devtmpfs) long before its uevent reaches multipathd.
    const { sim, services } = await start({ deviceDelayMs: 1_000 });
    await addTarget(sim, VOL1, PORTALS.slice(0, 1));
    const { host } = await loginManual(sim, services, VOL1, PORTALS[0]);
    await services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 1');
    await services.waiter.waitForPath('/dev/sda', { timeoutMs: 5_000 });
    const byPath = `/dev/disk/by-path/ip-${PORTALS[0]}-iscsi-${VOL1}-lun-1`;
    expect(await services.fs.exists(byPath)).toBe(false);

    await run(services, 'multipath', '-a', W1);
    expect((await run(services, 'multipathd', 'add', 'path', '/dev/sda')).stdout).toBe('ok\n');
    expect((await sim.state()).maps.map((m) => [m.dm, m.paths.map((p) => p.device)])).toEqual([['dm-0', ['sda']]]);
    expect(await run(services, 'multipath', '-f', W1)).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });

    // udev is done with sda now; multipathd has the path (an orphan since the flush): no map.
    await services.waiter.waitForPath(byPath, { timeoutMs: 5_000 });
    const state = await sim.state();
    expect(state.maps).toEqual([]);
    expect(state.multipathd.paths).toEqual(['sda']);
    expect(await services.fs.exists('/sys/block/dm-0')).toBe(false);
    expect(await services.fs.exists('/dev/dm-0')).toBe(false);
  });

  it('never puts a path to a LUN with another WWN in the map', async () => {
    const { sim, services } = await start();
    await addTarget(sim, VOL1, [PORTALS[0]!]);
    // Another target (tid 2) on the second portal: LUN 1 there has another wwid.
    await addTarget(sim, VOL2, [PORTALS[1]!]);
    const [a] = await connectPaths(sim, services, VOL1, [PORTALS[0]!]);
    const [b] = await connectPaths(sim, services, VOL2, [PORTALS[1]!]);
    expect(await services.fs.readFile(`/sys/block/${b!}/device/wwid`)).toBe('naa.60000000000000000e00000000020001\n');
    await run(services, 'multipath', '-a', W1);
    expect((await run(services, 'multipathd', 'add', 'path', `/dev/${a!}`)).stdout).toBe('ok\n');
    expect((await run(services, 'multipathd', 'add', 'path', `/dev/${b!}`)).stdout).toBe('ok\n');
    expect((await sim.state()).maps.map((m) => [m.name, m.paths.map((p) => p.device)])).toEqual([[W1, [a]]]);
    expect(await services.fs.readdir(`/sys/block/${b!}/holders`)).toEqual([]);
    // Listed, it gets a map of its own.
    await run(services, 'multipath', '-a', W2);
    await run(services, 'multipathd', 'add', 'path', `/dev/${b!}`);
    expect((await sim.state()).maps.map((m) => [m.dm, m.name, m.paths.map((p) => p.device)])).toEqual([
      ['dm-0', W1, [a]],
      ['dm-1', W2, [b]],
    ]);
    expect((await run(services, 'multipathd', 'show', 'maps')).stdout).toBe(`name${' '.repeat(30)}sysfs uuid${' '.repeat(29)}\n${W1} dm-0  ${W1}\n${W2} dm-1  ${W2}\n`);
  });

  it('shows a path that fails and returns; I/O moves to the path left', async () => {
    const { sim, services } = await start();
    await addTarget(sim, VOL1, PORTALS.slice(0, 2));
    await run(services, 'multipath', '-a', W1);
    await connectPaths(sim, services, VOL1, PORTALS.slice(0, 2));
    await services.waiter.waitForPath('/dev/dm-0', { timeoutMs: 5_000 });
    const [s1, s2] = (await sim.state()).sessions;

    await sim.faults.loseSession(s1!.sid);
    expect(await services.fs.readFile('/sys/block/sda/device/state')).toBe('blocked\n');
    expect((await run(services, 'multipath', '-ll')).stdout).toBe(
      topology(
        W1,
        'dm-0',
        [
          ['0:0:0:1', 'sda', '8:0', 'failed faulty running'],
          ['1:0:0:1', 'sdb', '8:16', 'active ready  running'],
        ],
        [
          [0, 'enabled'],
          [1, 'active'],
        ],
      ),
    );
    expect((await run(services, 'multipathd', 'show', 'status')).stdout).toBe('path checker states:\ndown                1\nup                  1\n\npaths: 2\nbusy: False\n');
    expect((await run(services, 'multipathd', 'show', 'paths', 'raw', 'format', '%d %t %T')).stdout).toBe('sda failed faulty\nsdb active ready\n');
    expect((await run(services, 'multipathd', 'show', 'maps', 'raw', 'format', '%N')).stdout).toBe('1\n');
    expect((await sim.state()).maps[0]?.ioPath).toBe('sdb');
    expect((await run(services, 'multipath', '-C', 'dm-0')).exitCode).toBe(0);

    await sim.faults.loseSession(s2!.sid);
    const none = await run(services, 'multipath', '-C', 'dm-0');
    expect(none.exitCode).toBe(1);
    expect(none.stderr).toMatch(new RegExp(`^${TS}dm-0: no usable paths found\n$`));
    expect((await run(services, 'multipath', '-C', '/dev/sda')).stderr).toMatch(new RegExp(`^${TS}/dev/sda is not a dm device\n$`));

    // Back: multipathd reinstates them; no failback, the group in use stays.
    await sim.faults.restoreSession(s1!.sid);
    await sim.faults.restoreSession(s2!.sid);
    expect((await run(services, 'multipath', '-ll')).stdout).toBe(
      topology(W1, 'dm-0', [
        ['0:0:0:1', 'sda', '8:0', 'active ready running'],
        ['1:0:0:1', 'sdb', '8:16', 'active ready running'],
      ]),
    );
    // An expired session (transport-offline) is faulty too; the device state stays `running`.
    await sim.faults.expireSession(s2!.sid);
    expect((await run(services, 'multipathd', 'show', 'paths', 'raw', 'format', '%d %t %T %o')).stdout).toBe('sda active ready running\nsdb failed faulty running\n');
    // multipathd's own fail/reinstate.
    expect((await run(services, 'multipathd', 'fail', 'path', 'sda')).stdout).toBe('ok\n');
    expect((await sim.state()).maps[0]?.paths.map((p) => p.dmState)).toEqual(['failed', 'failed']);
    expect((await run(services, 'multipathd', 'reinstate', 'path', '/dev/sda')).stdout).toBe('ok\n');
    expect((await run(services, 'multipathd', 'fail', 'path', 'sdx')).stdout).toBe('fail\n');
  });

  it('reloads the map without a deleted path and flushes it with the last one, unless it is open', async () => {
    const { sim, services } = await start();
    await addTarget(sim, VOL1, PORTALS.slice(0, 3));
    await run(services, 'multipath', '-a', W1);
    await connectPaths(sim, services, VOL1, PORTALS.slice(0, 3));
    await services.waiter.waitForPath('/dev/dm-0', { timeoutMs: 5_000 });
    const fs = services.fs;

    await fs.writeFile('/sys/block/sdb/device/delete', '1');
    await services.waiter.waitForGone('/dev/sdb', { timeoutMs: 5_000 });
    expect((await fs.readdir('/sys/block/dm-0/slaves')).sort()).toEqual(['sda', 'sdc']);
    expect((await run(services, 'multipath', '-ll')).stdout).toBe(
      topology(W1, 'dm-0', [
        ['0:0:0:1', 'sda', '8:0', 'active ready running'],
        ['2:0:0:1', 'sdc', '8:32', 'active ready running'],
      ]),
    );
    expect((await run(services, 'multipathd', 'show', 'paths', 'raw', 'format', '%d')).stdout).toBe('sda\nsdc\n');

    // os-brick 6.1 drops a path from multipathd before deleting the disk.
    expect((await run(services, 'multipathd', 'del', 'path', '/dev/sdc')).stdout).toBe('ok\n');
    expect(await fs.readdir('/sys/block/dm-0/slaves')).toEqual(['sda']);
    expect(await fs.readdir('/sys/block/sdc/holders')).toEqual([]);
    expect((await run(services, 'multipathd', 'del', 'path', '/dev/sdc')).stdout).toBe('fail\n');

    // Held open, the map outlives its last path: no path groups, `##,##`, and it cannot be flushed.
    await sim.faults.holdMapOpen(W1);
    await fs.writeFile('/sys/block/sda/device/delete', '1');
    await services.waiter.waitForGone('/dev/sda', { timeoutMs: 5_000 });
    expect((await run(services, 'multipath', '-ll')).stdout).toBe(`${W1} dm-0 ##,##\nsize=64M features='0' hwhandler='0' wp=rw\n`);
    const inUse = await run(services, 'multipath', '-f', W1);
    expect(inUse).toMatchObject({ exitCode: 1, stdout: '' });
    expect(inUse.stderr).toMatch(new RegExp(`^${TS}${W1}: map in use\n$`));
    expect((await run(services, 'multipathd', 'del', 'map', W1)).stdout).toBe('fail\n');
    expect((await sim.state()).maps[0]).toMatchObject({ name: W1, open: true, paths: [] });

    await sim.faults.releaseMap(W1);
    expect(await run(services, 'multipathd', 'del', 'map', W1)).toMatchObject({ exitCode: 0, stdout: 'ok\n' });
    expect(await fs.exists('/sys/block/dm-0')).toBe(false);
    expect(await fs.exists('/dev/dm-0')).toBe(false);
    // The links go back to the disk of the wwid that is left (sdc, out of multipathd's sight).
    expect(await fs.readlink(`/dev/disk/by-id/scsi-${W1}`)).toBe('../../sdc');

    // Not open: the last path's delete flushes the map (flush_map_nopaths).
    expect((await run(services, 'multipathd', 'add', 'path', '/dev/sdc')).stdout).toBe('ok\n');
    expect((await sim.state()).maps.map((m) => [m.dm, m.paths.map((p) => p.device)])).toEqual([['dm-0', ['sdc']]]);
    await fs.writeFile('/sys/block/sdc/device/delete', '1');
    await services.waiter.waitForGone('/dev/sdc', { timeoutMs: 5_000 });
    expect((await sim.state()).maps).toEqual([]);
    expect(await fs.exists('/sys/block/dm-0')).toBe(false);
    expect(await fs.exists(`/dev/disk/by-id/scsi-${W1}`)).toBe(false);
  });

  it('without multipathd: `multipathd` says nothing (rc 1), `multipath -f` flushes locally, nothing forms until it starts', async () => {
    const { sim, services } = await start();
    await addTarget(sim, VOL1, PORTALS.slice(0, 2));
    await run(services, 'multipath', '-a', W1);
    const [first] = await connectPaths(sim, services, VOL1, [PORTALS[0]!]);
    await services.waiter.waitForPath('/dev/dm-0', { timeoutMs: 5_000 });

    await sim.faults.stopMultipathd();
    expect(await run(services, 'multipathd', 'show', 'status')).toMatchObject({ exitCode: 1, stdout: '', stderr: '' });
    expect(await run(services, 'multipathd', 'add', 'path', `/dev/${first!}`)).toMatchObject({ exitCode: 1, stdout: '', stderr: '' });
    expect((await sim.state()).multipathd).toEqual({ running: false, paths: [] });
    // The map stays (a kernel object); -ll still lists it, with a warning.
    const ll = await run(services, 'multipath', '-ll');
    expect(ll.stdout).toBe(topology(W1, 'dm-0', [['0:0:0:1', 'sda', '8:0', 'active ready running']]));
    expect(ll.stderr).toMatch(new RegExp(`^${TS}Warning: multipath devices exist, but multipathd service is not running\n$`));
    // A new path of the wwid does not join: nobody listens to its uevent.
    await connectPaths(sim, services, VOL1, [PORTALS[1]!]);
    expect((await sim.state()).maps[0]?.paths.map((p) => p.device)).toEqual(['sda']);

    // multipath -f falls back to flushing by itself.
    const missing = await run(services, 'multipath', '-f', 'nosuchmap');
    expect(missing).toMatchObject({ exitCode: 1, stdout: '' });
    expect(missing.stderr).toMatch(new RegExp(`^${TS}nosuchmap is not a multipath device\n$`));
    expect((await run(services, 'multipath', '-f', '/dev/sda')).stderr).toMatch(new RegExp(`^${TS}the -f option requires a map name to remove\n$`));
    await sim.faults.holdMapOpen('dm-0');
    expect((await run(services, 'multipath', '-f', `/dev/mapper/${W1}`)).stderr).toMatch(new RegExp(`^${TS}/dev/mapper/${W1}: map in use\n$`));
    await sim.faults.releaseMap('dm-0');
    expect(await run(services, 'multipath', '-f', `/dev/mapper/${W1}`)).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });
    expect(await services.fs.exists('/dev/dm-0')).toBe(false);

    // `multipath` makes maps itself (and waits for udev): `create:` with the new map's undef states.
    const made = await run(services, 'multipath');
    expect(made.exitCode).toBe(0);
    expect(made.stdout).toBe(
      `create: ${W1} undef IET,VIRTUAL-DISK\nsize=64M features='0' hwhandler='0' wp=undef\n` +
        "|-+- policy='service-time 0' prio=1 status=undef\n| `- 0:0:0:1 sda 8:0  undef ready running\n" +
        "`-+- policy='service-time 0' prio=1 status=undef\n  `- 1:0:0:1 sdb 8:16 undef ready running\n",
    );
    expect(made.stderr).toMatch(new RegExp(`^${TS}Warning: multipath devices exist, but multipathd service is not running\n$`));
    expect(await services.fs.readlink(`/dev/mapper/${W1}`)).toBe('../dm-0');
    expect(await run(services, 'multipath', '-f', W1)).toMatchObject({ exitCode: 0 });

    // multipathd starts: it takes in every disk and makes the maps the policy allows.
    await sim.faults.startMultipathd();
    expect((await sim.state()).maps.map((m) => m.paths.map((p) => p.device))).toEqual([['sda', 'sdb']]);
    expect((await run(services, 'multipathd', 'show', 'status')).exitCode).toBe(0);
  });

  it('answers unknown multipathd commands with its help, and multipath usage errors with rc 1', async () => {
    const { services } = await start();
    const help = await run(services, 'multipathd', 'show', 'nonsense');
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toMatch(/^show nonsense: not found\nmultipath-tools v0\.9\.4 \(12\/19, 2022\)\nCLI commands reference:\n list\|show paths\n/);
    expect(await run(services, 'multipathd', 'show', 'nonsense', 'paths')).toMatchObject({ exitCode: 1, stdout: 'fail\n' });
    expect((await run(services, 'multipathd', 'del', 'path')).stdout).toMatch(/^del path: Missing argument\n/);
    const bad = await run(services, 'multipath', '-Z');
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toMatch(/^Unknown switch: \(null\)\nmultipath-tools v0\.9\.4/);
    expect((await run(services, 'multipath', '-t')).stdout).toContain('\tfind_multipaths "strict"\n');
    expect((await run(services, 'multipathd', 'show', 'config')).stdout).toContain('\tuser_friendly_names "no"\n');
    expect(await run(services, 'multipath', '-w', W1)).toMatchObject({ exitCode: 0, stdout: `wwid '${W1}' not in wwids file\n` });
    expect(await run(services, 'multipath', '-ll', W1)).toMatchObject({ exitCode: 0, stdout: '' });
    expect(await run(services, 'multipath', '-r')).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });
  });
});

describe('tool failures and login counters', { timeout: 60_000 }, () => {
  it('makes a given tool run fail with its exit code and text, the given number of times', async () => {
    const { sim, services } = await start();
    await addTarget(sim, VOL1, [PORTALS[0]!]);
    const [sd] = await connectPaths(sim, services, VOL1, [PORTALS[0]!]);
    await sim.faults.failTool({ tool: 'blockdev', args: ['--flushbufs'], exitCode: 1, stderr: 'blockdev: ioctl error on BLKFLSBUF: Input/output error\n', times: 2 });
    for (let i = 0; i < 2; i++) {
      expect(await run(services, 'blockdev', '--flushbufs', `/dev/${sd!}`)).toMatchObject({
        exitCode: 1,
        stderr: 'blockdev: ioctl error on BLKFLSBUF: Input/output error\n',
      });
    }
    expect((await run(services, 'blockdev', '--flushbufs', `/dev/${sd!}`)).exitCode).toBe(0);
    // Other blockdev runs are not matched.
    expect((await run(services, 'blockdev', '--getsize64', `/dev/${sd!}`)).exitCode).toBe(0);

    await sim.faults.failTool({ tool: 'iscsiadm', args: ['--logout'], exitCode: 10, stderr: 'iscsiadm: Could not logout of all requested sessions\n' });
    const out = await iscsiadm(services, ...node(VOL1, PORTALS[0]), '--logout');
    expect(out).toMatchObject({ exitCode: 10, stdout: '', stderr: 'iscsiadm: Could not logout of all requested sessions\n' });
    // It failed without acting: the session is still there.
    expect((await sim.state()).sessions).toHaveLength(1);
    expect((await sim.faults.current()).toolFailures).toHaveLength(1);
    await sim.faults.clear();
    expect((await iscsiadm(services, ...node(VOL1, PORTALS[0]), '--logout')).exitCode).toBe(0);
  });

  it('counts logins per target and portal: attempts (failed ones too) and sessions made', async () => {
    const { sim, services } = await start();
    await addTarget(sim, VOL1, PORTALS.slice(0, 2));
    await loginManual(sim, services, VOL1, PORTALS[0]);
    // A second login finds the session (rc 15): iscsid does not log in again.
    expect((await iscsiadm(services, ...node(VOL1, PORTALS[0]), '--login')).exitCode).toBe(15);
    await sim.faults.failLogin({ portal: PORTALS[1]!, exitCode: 19, times: 1 });
    await iscsiadm(services, ...node(VOL1, PORTALS[1]), '--interface', 'default', '--op', 'new');
    expect((await iscsiadm(services, ...node(VOL1, PORTALS[1]), '--login')).exitCode).toBe(19);
    expect((await iscsiadm(services, ...node(VOL1, PORTALS[1]), '--login')).exitCode).toBe(0);
    expect((await sim.state()).logins).toEqual([
      { iqn: VOL1, portal: PORTALS[0], attempts: 1, succeeded: 1 },
      { iqn: VOL1, portal: PORTALS[1], attempts: 2, succeeded: 1 },
    ]);
  });

  it('switches multipathd and holds maps open across processes (detached daemon)', async () => {
    const root = await fsp.mkdtemp(path.join(process.env.BERTH_SIMHOST_TMPDIR || os.tmpdir(), 'berth-mp-detached-'));
    try {
      sim = await SimulatedHost.start({ root, detached: true, faults: { multipathdStopped: true } });
      const services = sim.hostServices();
      expect((await run(services, 'multipathd', 'show', 'status')).exitCode).toBe(1);
      const other = await SimulatedHost.connect(root);
      await other.faults.startMultipathd();
      expect((await run(services, 'multipathd', 'show', 'status')).stdout).toBe('path checker states:\n\npaths: 0\nbusy: False\n');
      expect((await sim.state()).multipathd).toEqual({ running: true, paths: [] });
      await other.faults.failTool({ tool: 'multipath', args: ['-f'], exitCode: 1, times: 1 });
      expect((await run(services, 'multipath', '-f', 'x')).stderr).toBe('');
    } finally {
      await sim?.stop();
      sim = undefined;
      await fsp.rm(root, { recursive: true, force: true });
    }
  });
});
