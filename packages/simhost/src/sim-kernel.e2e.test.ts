import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { HostServices } from '@berth/host';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SimulatedHost, type SimulatedHostOptions } from './simulated-host.js';
import { PORTAL, PORTAL2, VOL1, VOL2, iscsiadm, loginManual, node } from './test-helpers.js';

let sim: SimulatedHost | undefined;

afterEach(async () => {
  await sim?.stop();
  sim = undefined;
});

async function start(options: SimulatedHostOptions = {}): Promise<{ sim: SimulatedHost; services: HostServices }> {
  sim = await SimulatedHost.start(options);
  return { sim, services: sim.hostServices() };
}

/** os-brick's glob `/sys/class/iscsi_host/host*\/device/session<S>/target*`. */
async function osBrickTargets(services: HostServices, sid: number): Promise<string[]> {
  const out: string[] = [];
  for (const h of (await services.fs.readdir('/sys/class/iscsi_host')).filter((e) => e.startsWith('host'))) {
    for (const t of await services.fs.readdir(`/sys/class/iscsi_host/${h}/device/session${sid}`)) {
      if (t.startsWith('target')) out.push(`/sys/class/iscsi_host/${h}/device/session${sid}/${t}`);
    }
  }
  return out;
}

const MiB = 1 << 20;

describe('the simulated kernel', { timeout: 60_000 }, () => {
  it('logs in with scan=manual: a session and its SCSI host appear, and no LUN', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: 64 * MiB } } });
    const { sid, host } = await loginManual(sim, services, VOL1);
    expect(sid).toBe(1);
    expect(host).toBe(0);
    const fs = services.fs;
    expect(await fs.readFile('/sys/class/iscsi_session/session1/targetname')).toBe(`${VOL1}\n`);
    expect(await fs.readFile('/sys/class/iscsi_session/session1/state')).toBe('LOGGED_IN\n');
    expect(await fs.readFile('/sys/class/iscsi_session/session1/tpgt')).toBe('1\n');
    expect(await fs.readFile('/sys/class/iscsi_connection/connection1:0/persistent_address')).toBe('127.0.0.1\n');
    expect(await fs.readFile('/sys/class/iscsi_connection/connection1:0/persistent_port')).toBe('3260\n');
    expect(await fs.readFile('/sys/class/scsi_host/host0/proc_name')).toBe('iscsi_tcp\n');
    expect(await fs.realpath('/sys/class/iscsi_session/session1')).toBe('/sys/devices/platform/host0/session1/iscsi_session/session1');
    expect(await fs.realpath('/sys/class/iscsi_host/host0/device')).toBe('/sys/devices/platform/host0');
    expect(await fs.exists('/sys/class/iscsi_transport/tcp')).toBe(true);
    expect(await osBrickTargets(services, 1)).toEqual([]);
    expect((await sim.state()).sessions[0]?.luns).toEqual([]);
  });

  it('makes a device on a targeted scan: sysfs and /dev/sdX (devtmpfs) when the write returns, the udev links after the delay', async () => {
    const { sim, services } = await start({ deviceDelayMs: 300 });
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: 64 * MiB } } });
    const { sid, host } = await loginManual(sim, services, VOL1);
    const fs = services.fs;
    // os-brick's way to write sysfs (`tee -a`): like the kernel's, the write returns after the scan.
    const scan = await services.runner.run('tee', ['-a', `/sys/class/scsi_host/host${host}/scan`], { input: '- - 1' });
    expect([scan.exitCode, scan.stdout, scan.stderr]).toEqual([0, '- - 1', '']);
    const blockDir = `/sys/class/scsi_host/host${host}/device/session${sid}/target${host}:0:0/${host}:0:0:1/block`;
    expect(await fs.readdir(blockDir)).toEqual(['sda']);
    expect(await fs.exists('/dev/sda')).toBe(true);
    // udev lags the kernel: its links are not there yet.
    expect(await fs.exists(`/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-1`)).toBe(false);
    expect((await sim.state()).devices[0]?.present).toBe(false);
    const byPath = `/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-1`;
    await services.waiter.waitForPath(byPath, { timeoutMs: 5_000 });
    expect(await fs.readlink(byPath)).toBe('../../sda');
    expect(await fs.realpath(byPath)).toBe('/dev/sda');
    expect(await osBrickTargets(services, sid)).toEqual([`/sys/class/iscsi_host/host${host}/device/session${sid}/target${host}:0:0`]);
    // Only the LUN asked for: no LUN 0.
    expect(await fs.readdir(`/sys/class/scsi_host/host${host}/device/session${sid}/target${host}:0:0`)).toEqual([`${host}:0:0:1`]);
    const dev = '/sys/block/sda/device';
    expect(await fs.realpath(dev)).toBe(`/sys/devices/platform/host${host}/session${sid}/target${host}:0:0/${host}:0:0:1`);
    expect(await fs.readFile(`${dev}/wwid`)).toBe('naa.60000000000000000e00000000010001\n');
    expect(await fs.readFile(`${dev}/vendor`)).toBe('IET     \n');
    expect(await fs.readFile(`${dev}/model`)).toBe('VIRTUAL-DISK    \n');
    expect(await fs.readFile(`${dev}/rev`)).toBe('0001\n');
    expect(await fs.readFile(`${dev}/type`)).toBe('0\n');
    expect(await fs.readFile(`${dev}/state`)).toBe('running\n');
    expect(await fs.readFile('/sys/block/sda/size')).toBe(`${(64 * MiB) / 512}\n`);
    expect(await fs.readFile('/sys/block/sda/dev')).toBe('8:0\n');
    const pg80 = await fsp.readFile(fs.resolve(`${dev}/vpd_pg80`));
    expect(pg80.subarray(4).toString('ascii')).toBe('beaf11'.padStart(36, ' '));
    const pg83 = await fsp.readFile(fs.resolve(`${dev}/vpd_pg83`));
    expect(pg83.subarray(0, 2)).toEqual(Buffer.from([0, 0x83]));
    expect(pg83.toString('hex')).toContain('60000000000000000e00000000010001');
    expect(await fs.readlink('/dev/disk/by-id/scsi-360000000000000000e00000000010001')).toBe('../../sda');
    expect(await fs.readlink('/dev/disk/by-id/wwn-0x60000000000000000e00000000010001')).toBe('../../sda');
    expect((await services.runner.run('blockdev', ['--getsize64', '/dev/sda'])).stdout).toBe(`${64 * MiB}\n`);
    // The node holds the LUN's bytes.
    await fsp.writeFile(fs.resolve('/dev/sda'), 'written through /dev/sda', { flag: 'r+' });
    expect((await services.runner.run('blockdev', ['--flushbufs', '/dev/sda'])).exitCode).toBe(0);
    const [lun] = (await sim.san.targets())[0]!.luns;
    expect((await fsp.readFile(lun!.file)).subarray(0, 24).toString()).toBe('written through /dev/sda');
  });

  it('removes a device on delete, and the target directory with the last LUN', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB }, 2: { sizeBytes: MiB } } });
    const { sid, host } = await loginManual(sim, services, VOL1);
    const fs = services.fs;
    await fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 1');
    await services.waiter.waitForPath(`/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-1`, { timeoutMs: 5_000 });
    // Once the target directory exists os-brick scans with the channel and target id.
    await fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '0 0 2');
    await services.waiter.waitForPath(`/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-2`, { timeoutMs: 5_000 });
    expect(await fs.realpath(`/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-2`)).toBe('/dev/sdb');
    await fs.writeFile('/sys/block/sda/device/delete', '1');
    await services.waiter.waitForGone('/dev/sda', { timeoutMs: 5_000 });
    expect(await fs.exists(`/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-1`)).toBe(false);
    expect(await fs.exists('/dev/disk/by-id/scsi-360000000000000000e00000000010001')).toBe(false);
    expect(await fs.exists('/sys/block/sda')).toBe(false);
    const targetDir = `/sys/class/scsi_host/host${host}/device/session${sid}/target${host}:0:0`;
    expect(await fs.readdir(targetDir)).toEqual([`${host}:0:0:2`]);
    await fs.writeFile('/sys/block/sdb/device/delete', '1');
    await services.waiter.waitForGone('/dev/sdb', { timeoutMs: 5_000 });
    await services.waiter.waitForGone(targetDir, { timeoutMs: 5_000 });
    expect(await osBrickTargets(services, sid)).toEqual([]);
    // A name is free again once its disk is gone: the next disk is sda.
    await fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 2');
    await services.waiter.waitForPath('/dev/sda', { timeoutMs: 5_000 });
  });

  it('a delete written with tee returns after the disk, its /dev node and its links are gone (sysfs writes are synchronous)', async () => {
    const { sim, services } = await start({ deviceDelayMs: 50 });
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    const { host } = await loginManual(sim, services, VOL1);
    const tee = (file: string, text: string) => services.runner.run('tee', ['-a', file], { input: text, reject: false });
    expect((await tee(`/sys/class/scsi_host/host${host}/scan`, '- - 1')).exitCode).toBe(0);
    const byPath = `/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-1`;
    await services.waiter.waitForPath(byPath, { timeoutMs: 5_000 });
    const deleted = await tee('/sys/block/sda/device/delete', '1');
    expect([deleted.exitCode, deleted.stderr]).toEqual([0, '']);
    // No wait: gone when the write returned, as os-brick expects of a real kernel.
    for (const gone of ['/dev/sda', byPath, '/sys/block/sda', `/sys/class/scsi_host/host${host}/device/session1/target${host}:0:0`]) {
      expect(await services.fs.exists(gone), gone).toBe(false);
    }
    expect((await sim.state()).devices).toEqual([]);
    // What the kernel refuses or does not have, tee reports as coreutils does.
    expect(await tee('/sys/block/sda/device/delete', '1')).toMatchObject({ exitCode: 1, stderr: 'tee: /sys/block/sda/device/delete: No such file or directory\n' });
    expect(await tee(`/sys/class/scsi_host/host${host}/scan`, 'all of them')).toMatchObject({
      exitCode: 1,
      stderr: `tee: /sys/class/scsi_host/host${host}/scan: Invalid argument\n`,
    });
    // Any other file is written as the real tee would.
    const other = path.join(sim.root, 'run/tee-check');
    expect((await tee(other, 'one\n')).exitCode).toBe(0);
    expect((await tee(other, 'two\n')).stdout).toBe('two\n');
    expect(await fsp.readFile(other, 'utf8')).toBe('one\ntwo\n');
  });

  it('an unreachable portal fails a login after login_timeout x initial_login_retry_max of the node record, as iscsid does', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    // Nothing answers there: every attempt runs into the record's login timeout (1 s here).
    await sim.faults.unreachablePortal(PORTAL);
    await iscsiadm(services, ...node(VOL1), '--op', 'new');
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.conn[0].timeo.login_timeout', '-v', '1');
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.session.initial_login_retry_max', '-v', '2');
    let started = performance.now();
    const failed = await iscsiadm(services, ...node(VOL1), '--login');
    const twoAttempts = performance.now() - started;
    expect(failed.exitCode).toBe(8);
    expect(failed.stderr).toContain('initiator reported error (8 - connection timed out)');
    expect(twoAttempts).toBeGreaterThanOrEqual(2_000);
    // initial_login_retry_max 0 still makes one attempt.
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.session.initial_login_retry_max', '-v', '0');
    started = performance.now();
    expect((await iscsiadm(services, ...node(VOL1), '--login')).exitCode).toBe(8);
    const oneAttempt = performance.now() - started;
    expect(oneAttempt).toBeGreaterThanOrEqual(1_000);
    expect(oneAttempt).toBeLessThan(twoAttempts);
  });

  it('holds a scan (heldScans) until a delete on another session, which returns once the held disk is in sysfs', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL, PORTAL2], luns: { 1: { sizeBytes: MiB } } });
    await sim.faults.load({ heldScans: [{ portal: PORTAL2, iqn: VOL1 }] });
    const one = await loginManual(sim, services, VOL1);
    const two = await loginManual(sim, services, VOL1, PORTAL2);
    const fs = services.fs;
    await fs.writeFile(`/sys/class/scsi_host/host${one.host}/scan`, '- - 1');
    await services.waiter.waitForPath('/dev/sda', { timeoutMs: 5_000 });
    // A FIFO write returns at once: the scan is parked in the kernel, nothing in sysfs yet.
    await fs.writeFile(`/sys/class/scsi_host/host${two.host}/scan`, '- - 1');
    await vi.waitFor(async () => expect((await sim.state()).heldScans).toBe(1), { timeout: 10_000 });
    expect((await sim.state()).devices.map((d) => d.sid)).toEqual([one.sid]);
    // The delete of sda lets the held scan land first: when it returns, sdb is in sysfs.
    const del = await services.runner.run('tee', ['-a', '/sys/block/sda/device/delete'], { input: '1' });
    expect(del.exitCode).toBe(0);
    const state = await sim.state();
    expect(state.heldScans).toBe(0);
    expect(state.devices.map((d) => [d.name, d.sid])).toEqual([['sdb', two.sid]]);
    expect(await fs.exists('/sys/block/sdb')).toBe(true);
  });

  it('releases a held scan on its session\'s logout and when the fault is cleared', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    await sim.san.addTarget({ iqn: VOL2, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    await sim.faults.holdScans({ portal: PORTAL });
    const one = await loginManual(sim, services, VOL1);
    const two = await loginManual(sim, services, VOL2);
    await services.fs.writeFile(`/sys/class/scsi_host/host${one.host}/scan`, '- - 1');
    await services.fs.writeFile(`/sys/class/scsi_host/host${two.host}/scan`, '- - 1');
    await vi.waitFor(async () => expect((await sim.state()).heldScans).toBe(2), { timeout: 10_000 });
    // The logout does not wait forever on its parked scan, and the scan makes no disk.
    expect((await iscsiadm(services, ...node(VOL1), '--logout')).exitCode).toBe(0);
    expect((await sim.state()).heldScans).toBe(1);
    await sim.faults.clear();
    await services.waiter.waitForPath('/dev/sda', { timeoutMs: 5_000 });
    const state = await sim.state();
    expect(state.heldScans).toBe(0);
    expect(state.devices.map((d) => d.sid)).toEqual([two.sid]);
  });

  it('holds a login (heldLogins) past its killed iscsiadm, as iscsid does, until released', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    await sim.faults.holdLogins({ portal: PORTAL });
    await iscsiadm(services, ...node(VOL1), '--interface', 'default', '--op', 'new');
    // The client is killed (its abort) while the login is parked in the daemon.
    const client = new AbortController();
    const login = services.runner.run('iscsiadm', [...node(VOL1), '--login'], { reject: false, timeoutMs: 30_000, signal: client.signal }).catch(() => undefined);
    await vi.waitFor(async () => expect((await sim.state()).heldLogins).toBe(1), { timeout: 10_000 });
    client.abort();
    await login;
    expect((await sim.state()).sessions).toEqual([]);
    expect((await iscsiadm(services, ...node(VOL1), '--login')).exitCode).toBe(15);
    expect((await iscsiadm(services, ...node(VOL1), '--logout')).exitCode).toBe(21);
    await sim.faults.releaseLogins();
    await services.waiter.waitForPath('/sys/class/iscsi_session/session1', { timeoutMs: 5_000 });
    const state = await sim.state();
    expect(state.heldLogins).toBe(0);
    expect(state.sessions.map((s) => s.portal)).toEqual([PORTAL]);
    expect((await iscsiadm(services, ...node(VOL1), '--logout')).exitCode).toBe(0);
  });

  it('ends a held login at iscsid\'s bound (login_timeout × initial_login_retry_max) with 8, no session', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    await sim.faults.holdLogins({ portal: PORTAL });
    await iscsiadm(services, ...node(VOL1), '--interface', 'default', '--op', 'new');
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.conn[0].timeo.login_timeout', '-v', '1', '-n', 'node.session.initial_login_retry_max', '-v', '1');
    expect((await iscsiadm(services, ...node(VOL1), '--login')).exitCode).toBe(8);
    const state = await sim.state();
    expect([state.heldLogins, state.sessions]).toEqual([0, []]);
  });

  it('removes everything of a session on logout', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    const { host } = await loginManual(sim, services, VOL1);
    await services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 1');
    await services.waiter.waitForPath('/dev/sda', { timeoutMs: 5_000 });
    const r = await iscsiadm(services, ...node(VOL1), '--logout');
    expect(r.exitCode).toBe(0);
    for (const p of ['/dev/sda', '/sys/block/sda', `/sys/class/scsi_host/host${host}`, `/sys/class/iscsi_host/host${host}`, '/sys/class/iscsi_session/session1', '/sys/class/iscsi_connection/connection1:0']) {
      expect([p, await services.fs.exists(p)]).toEqual([p, false]);
    }
    expect(await services.fs.readdir('/sys/devices/platform')).toEqual([]);
    expect(await services.fs.readdir('/dev/disk/by-path')).toEqual([]);
    expect(await services.fs.readdir('/dev/disk/by-id')).toEqual([]);
    expect((await sim.state()).sessions).toEqual([]);
    // Session ids are never reused; host numbers are.
    const again = await loginManual(sim, services, VOL1);
    expect(again).toEqual({ sid: 2, host });
  });

  it('scans every LUN at login with scan=auto, the controller LUN 0 without a block device', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB }, 3: { sizeBytes: MiB } } });
    await iscsiadm(services, ...node(VOL1), '--interface', 'default', '--op', 'new');
    expect((await iscsiadm(services, ...node(VOL1), '--login')).exitCode).toBe(0);
    await services.waiter.waitForPath(`/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-3`, { timeoutMs: 5_000 });
    await services.waiter.waitForPath(`/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-1`, { timeoutMs: 5_000 });
    const luns = (await sim.state()).sessions[0]!.luns;
    expect(luns.map((l) => [l.lun, l.device])).toEqual([
      [0, undefined],
      [1, expect.stringMatching(/^sd[ab]$/)],
      [3, expect.stringMatching(/^sd[ab]$/)],
    ]);
    expect(await services.fs.readFile('/sys/class/scsi_host/host0/device/session1/target0:0:0/0:0:0:0/model')).toBe('Controller      \n');
    expect(await services.fs.readFile('/sys/class/scsi_host/host0/device/session1/target0:0:0/0:0:0:0/type')).toBe('12\n');
    expect(await services.fs.readdir('/sys/class/scsi_host/host0/device/session1/target0:0:0/0:0:0:0/block')).toEqual([]);
  });

  it('takes 20 concurrent scan writes for 20 LUNs of one session, each once', async () => {
    const { sim, services } = await start();
    const luns = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [i + 1, { sizeBytes: MiB }]));
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns });
    const { host } = await loginManual(sim, services, VOL1);
    await Promise.all(Array.from({ length: 20 }, (_, i) => services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, `- - ${i + 1}`)));
    await Promise.all(
      Array.from({ length: 20 }, (_, i) => services.waiter.waitForPath(`/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-${i + 1}`, { timeoutMs: 10_000 })),
    );
    const state = await sim.state();
    const s = state.sessions[0]!;
    expect(s.luns.map((l) => l.lun)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(new Set(state.devices.map((d) => d.name)).size).toBe(20);
    expect((await services.fs.readdir('/dev')).filter((e) => e.startsWith('sd')).sort()).toEqual(state.devices.map((d) => d.name).sort());
  });

  it('names LUNs ≥ 256 with flat addressing and IPv6 portals without brackets', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL2, portals: ['[::1]:3260'], luns: { 256: { sizeBytes: MiB } } });
    const { sid, host } = await loginManual(sim, services, VOL2, '[::1]:3260');
    expect((await iscsiadm(services, '-m', 'session')).stdout).toBe(`tcp: [${sid}] [::1]:3260,1 ${VOL2} (non-flash)\n`);
    expect(await services.fs.readFile(`/sys/class/iscsi_connection/connection${sid}:0/persistent_address`)).toBe('::1\n');
    expect(await services.fs.readFile(`/sys/class/iscsi_connection/connection${sid}:0/address`)).toBe('0000:0000:0000:0000:0000:0000:0000:0001\n');
    await services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 16640');
    const link = `/dev/disk/by-path/ip-::1:3260-iscsi-${VOL2}-lun-0x4100000000000000`;
    await services.waiter.waitForPath(link, { timeoutMs: 5_000 });
    expect(await services.fs.exists(`/sys/class/scsi_host/host${host}/device/session${sid}/target${host}:0:0/${host}:0:0:16640/block/sda`)).toBe(true);
    expect(await services.fs.readFile('/sys/block/sda/device/wwid')).toBe('naa.60000000000000000e00000000010100\n');
  });

  it('shows a grown LUN after a session rescan', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: 64 * MiB } } });
    const { sid, host } = await loginManual(sim, services, VOL1);
    await services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 1');
    // /dev/sda comes at once (devtmpfs), its by-path link after udev's delay: the size is read through the link below.
    const byPath = `/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-1`;
    await services.waiter.waitForPath(byPath, { timeoutMs: 5_000 });
    await sim.san.growLun(VOL1, 1, 96 * MiB);
    expect(await services.fs.readFile('/sys/block/sda/size')).toBe(`${(64 * MiB) / 512}\n`);
    const r = await iscsiadm(services, '-m', 'session', '-r', String(sid), '--rescan');
    expect(r).toMatchObject({ exitCode: 0, stdout: `Rescanning session [sid: ${sid}, target: ${VOL1}, portal: 127.0.0.1,3260]\n`, stderr: '' });
    expect(await services.fs.readFile('/sys/block/sda/size')).toBe(`${(96 * MiB) / 512}\n`);
    expect((await services.runner.run('blockdev', ['--getsize64', byPath])).stdout).toBe(`${96 * MiB}\n`);
    // The rescan also scanned the host: LUN 0 is there now.
    expect((await sim.state()).sessions[0]!.luns.map((l) => l.lun)).toEqual([0, 1]);
  });

  it('decides logins like tgtd: CHAP (24), mutual CHAP, ACL and unknown target (19)', async () => {
    const { sim, services } = await start({ initiatorName: 'iqn.2026-01.test.berth:initiator-a' });
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } }, chap: { username: 'chapuser', password: 'good-secret' } });
    await sim.san.addTarget({ iqn: VOL2, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } }, acl: ['iqn.2026-01.test.berth:initiator-b'] });
    const failure = (iqn: string, code: number, text: string): string =>
      `iscsiadm: Could not login to [iface: default, target: ${iqn}, portal: 127.0.0.1,3260].\niscsiadm: initiator reported error (${code} - ${text})\niscsiadm: Could not log into all portals\n`;
    await iscsiadm(services, ...node(VOL1), '--op', 'new');
    expect(await iscsiadm(services, ...node(VOL1), '--login')).toMatchObject({ exitCode: 24, stderr: failure(VOL1, 24, 'iSCSI login failed due to authorization failure') });
    for (const [k, v] of [
      ['node.session.auth.authmethod', 'CHAP'],
      ['node.session.auth.username', 'chapuser'],
      ['node.session.auth.password', 'wrong-secret'],
    ] as const) {
      await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', k, '-v', v);
    }
    expect((await iscsiadm(services, ...node(VOL1), '--login')).exitCode).toBe(24);
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.session.auth.password', '-v', 'good-secret');
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.session.auth.username_in', '-v', 'chaptarget');
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.session.auth.password_in', '-v', 'target-secret');
    // Mutual CHAP asked for, but the target has no outgoing account.
    expect((await iscsiadm(services, ...node(VOL1), '--login')).exitCode).toBe(24);
    await sim.san.setMutualChap(VOL1, { username: 'chaptarget', password: 'target-secret' });
    expect((await iscsiadm(services, ...node(VOL1), '--login')).exitCode).toBe(0);
    expect(await services.fs.readFile('/sys/class/iscsi_session/session1/username')).toBe('chapuser\n');
    await iscsiadm(services, ...node(VOL2), '--op', 'new');
    expect(await iscsiadm(services, ...node(VOL2), '--login')).toMatchObject({ exitCode: 19, stderr: failure(VOL2, 19, 'encountered non-retryable iSCSI login failure') });
    await sim.san.setAcl(VOL2, ['iqn.2026-01.test.berth:initiator-a']);
    expect((await iscsiadm(services, ...node(VOL2), '--login')).exitCode).toBe(0);
    await iscsiadm(services, ...node('iqn.2026-01.test.berth:missing'), '--op', 'new');
    expect((await iscsiadm(services, ...node('iqn.2026-01.test.berth:missing'), '--login')).exitCode).toBe(19);
    // A failed login leaves no session behind.
    expect((await sim.state()).sessions.map((s) => s.iqn).sort()).toEqual([VOL1, VOL2]);
  });

  it('injects login failures, unreachable portals (8, bounded), slow and missing devices', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB }, 2: { sizeBytes: MiB } } });
    await sim.san.addTarget({ iqn: VOL2, portals: ['127.0.0.2:3260'], luns: { 1: { sizeBytes: MiB } } });
    await sim.faults.failLogin({ iqn: VOL1, exitCode: 5, times: 1 });
    await iscsiadm(services, ...node(VOL1), '--op', 'new');
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.session.scan', '-v', 'manual');
    const failed = await iscsiadm(services, ...node(VOL1), '--login');
    expect(failed.exitCode).toBe(5);
    expect(failed.stderr).toContain('initiator reported error (5 - encountered iSCSI login failure)');
    expect((await iscsiadm(services, ...node(VOL1), '--login')).exitCode).toBe(0);

    await sim.faults.unreachablePortal('127.0.0.2:3260', 150);
    await iscsiadm(services, ...node(VOL2, '127.0.0.2:3260'), '--op', 'new');
    const started = Date.now();
    const unreachable = await iscsiadm(services, ...node(VOL2, '127.0.0.2:3260'), '--login');
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(unreachable).toMatchObject({ exitCode: 8 });
    expect(unreachable.stderr).toContain('initiator reported error (8 - connection timed out)');

    await sim.faults.slowDevice({ iqn: VOL1, lun: 1, extraDelayMs: 400 });
    await sim.faults.deviceNeverAppears({ iqn: VOL1, lun: 2 });
    const t0 = Date.now();
    await services.fs.writeFile('/sys/class/scsi_host/host0/scan', '- - 1');
    await services.waiter.waitForPath('/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2026-01.test.berth:vol1-lun-1', { timeoutMs: 5_000 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    await services.fs.writeFile('/sys/class/scsi_host/host0/scan', '0 0 2');
    const sdev = '/sys/class/scsi_host/host0/device/session1/target0:0:0/0:0:0:2/block';
    const name = await services.waiter.waitUntil('/sys/devices/platform', async () => (await services.fs.readdir(sdev))[0], { timeoutMs: 5_000 });
    await expect(services.waiter.waitForPath(`/dev/${name}`, { timeoutMs: 300 })).rejects.toThrow();
    expect(await services.fs.exists('/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2026-01.test.berth:vol1-lun-2')).toBe(false);
  });

  it('loses and restores a session: FAILED with blocked devices, then LOGGED_IN', async () => {
    const { sim, services } = await start();
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    const { sid, host } = await loginManual(sim, services, VOL1);
    await services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 1');
    await services.waiter.waitForPath('/dev/sda', { timeoutMs: 5_000 });
    await sim.faults.loseSession(sid);
    expect(await services.fs.readFile(`/sys/class/iscsi_session/session${sid}/state`)).toBe('FAILED\n');
    expect(await services.fs.readFile('/sys/block/sda/device/state')).toBe('blocked\n');
    expect(await services.fs.readFile(`/sys/class/iscsi_connection/connection${sid}:0/state`)).toBe('failed\n');
    const tree = await iscsiadm(services, '-m', 'session', '-P', '1');
    expect(tree.stdout).toContain('\t\tiSCSI Session State: FAILED\n');
    expect(tree.stdout).toContain('\t\tiSCSI Connection State: TRANSPORT WAIT\n');
    await sim.faults.restoreSession(sid);
    expect(await services.fs.readFile(`/sys/class/iscsi_session/session${sid}/state`)).toBe('LOGGED_IN\n');
    expect(await services.fs.readFile('/sys/block/sda/device/state')).toBe('running\n');
  });

  it('prints -m session -P 1 like session_info_print_tree', async () => {
    const { sim, services } = await start({ initiatorName: 'iqn.2026-01.test.berth:initiator-a' });
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    await loginManual(sim, services, VOL1);
    const r = await iscsiadm(services, '-m', 'session', '-P', '1');
    expect(r.stdout).toBe(
      [
        `Target: ${VOL1} (non-flash)`,
        '\tCurrent Portal: 127.0.0.1:3260,1',
        '\tPersistent Portal: 127.0.0.1:3260,1',
        '\t\t**********',
        '\t\tInterface:',
        '\t\t**********',
        '\t\tIface Name: default',
        '\t\tIface Transport: tcp',
        '\t\tIface Initiatorname: iqn.2026-01.test.berth:initiator-a',
        '\t\tIface IPaddress: 127.0.0.1',
        '\t\tIface HWaddress: <empty>',
        '\t\tIface Netdev: <empty>',
        '\t\tSID: 1',
        '\t\tiSCSI Connection State: LOGGED IN',
        '\t\tiSCSI Session State: LOGGED_IN',
        '\t\tInternal iscsid Session State: NO CHANGE',
        '',
      ].join('\n'),
    );
  });

  it('leaves nothing behind on stop: sessions logged out, root removed', async () => {
    const { sim: host, services } = await start();
    await host.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: MiB } } });
    const { host: h } = await loginManual(host, services, VOL1);
    await services.fs.writeFile(`/sys/class/scsi_host/host${h}/scan`, '- - 1');
    await services.waiter.waitForPath('/dev/sda', { timeoutMs: 5_000 });
    const root = host.root;
    await host.stop();
    sim = undefined;
    await expect(fsp.stat(root)).rejects.toMatchObject({ code: 'ENOENT' });
    // The tools say iscsid is gone.
    const r = await services.runner.run(path.join(root, 'bin/iscsiadm'), ['-m', 'session'], { reject: false });
    expect(r.exitCode).not.toBe(0);
  });
});
