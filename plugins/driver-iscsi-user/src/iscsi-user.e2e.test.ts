import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConnectionInfo, Device } from '@berth/core';
import { loopInfo, StorageDaemon } from '@berth/qemu';
import { exportRecords, userPaths } from './export-records.js';
import { call, createUserTestEnv, expectNothingLeft, readAt, rejection, writeAt, writeDirect, type UserTestEnv } from './test-user-env.js';

// The iscsi-user transport against the real tgtd of the tgt backend (private tgtd, CHAP on):
// bytes written through /dev/loopN (direct and buffered) land in tgtd's LUN file; wrong CHAP,
// missing LUN and dead portals fail clearly and leave nothing; a SIGKILLed daemon is noticed and
// its exports rebuilt on the same loop devices; 16 volumes at once through one daemon.

const MiB = 1024 * 1024;
const timings: string[] = [];
let env: UserTestEnv;

beforeAll(async () => {
  env = await createUserTestEnv();
});

afterAll(async () => {
  console.log(`\niscsi-user e2e timings\n${timings.join('\n')}`);
  await env?.dispose();
});


describe('iscsi-user transport on a real tgtd', () => {
  it('attach, write direct and buffered, detach: the LUN file holds every byte, nothing is left', async () => {
    const { connection, lunFile } = await env.makeVolume(32 * MiB);
    const started = Date.now();
    const device = await env.driver.connect(connection, call());
    timings.push(`connect (daemon start + login + export + losetup): ${Date.now() - started} ms`);
    expect(device.path).toMatch(/^\/dev\/loop\d+$/);
    expect((await stat(device.path)).isBlockDevice()).toBe(true);
    const info = await loopInfo(env.host.fs, device.path);
    expect(info).toMatchObject({ directIo: false, readOnly: false, sizeBytes: 32 * MiB });
    expect(device.identity).toMatchObject({ kind: 'iscsi-user', rdev: info?.rdev });
    expect(device.identity?.mountpoint).toBe(info?.backingFile);
    const secrets = userPaths(env.dataDir).secrets;
    expect((await stat(secrets)).mode & 0o777).toBe(0o700);
    for (const name of await env.host.fs.readdir(secrets)) expect((await stat(path.join(secrets, name))).mode & 0o777).toBe(0o600);

    const writes: Array<{ offset: number; data: Buffer }> = [];
    const direct = (offset: number, size: number, bs: number): void => {
      const data = randomBytes(size);
      writeDirect(device.path, data, offset, bs, env.dataDir);
      writes.push({ offset, data });
    };
    const buffered = (offset: number, size: number): void => {
      const data = randomBytes(size);
      writeAt(device.path, data, offset);
      writes.push({ offset, data });
    };
    direct(0, 4096, 4096);
    direct(1 * MiB, 4 * MiB, MiB); // 1 MiB direct writes: what qemu 7.2's FUSE + dio loop corrupted
    direct(6 * MiB + 512, 512 * 7, 512);
    buffered(9 * MiB + 123, 777_777);
    buffered(32 * MiB - 4096, 4096);
    // Four writers at once, direct and buffered.
    await Promise.all(
      [0, 1, 2, 3].map(async (n) => {
        const data = randomBytes(MiB);
        const offset = (12 + 2 * n) * MiB;
        if (n % 2 === 0) writeDirect(device.path, data, offset, 64 * 1024, env.dataDir);
        else writeAt(device.path, data, offset);
        writes.push({ offset, data });
      }),
    );
    // Read back through the device before the detach, then from tgtd's file after it.
    for (const w of writes) expect(readAt(device.path, w.data.length, w.offset).equals(w.data)).toBe(true);
    const stopAt = Date.now();
    await env.driver.disconnect(connection, device, { force: false, ...call() });
    timings.push(`disconnect (flush + losetup -d + export del + logout + daemon stop): ${Date.now() - stopAt} ms`);
    for (const w of writes) expect(readAt(lunFile, w.data.length, w.offset).equals(w.data), `bytes at ${w.offset}`).toBe(true);
    await expectNothingLeft(env);
  });

  it('mutual CHAP: the target proves itself first; a wrong target secret is refused', async () => {
    const { connection, lunFile } = await env.makeVolume(8 * MiB, { mutualChap: true });
    expect(connection.data.auth_password_in).toBeTruthy();
    const device = await env.driver.connect(connection, call());
    const data = randomBytes(64 * 1024);
    writeAt(device.path, data, 3 * MiB);
    await env.driver.disconnect(connection, device, { force: false, ...call() });
    expect(readAt(lunFile, data.length, 3 * MiB).equals(data)).toBe(true);
    const wrong: ConnectionInfo = { ...connection, data: { ...connection.data, auth_password_in: 'not-the-target-secret' } };
    const error = await rejection(env.driver.connect(wrong, call()));
    expect(error.code).toBe('AUTH_FAILED');
    expect(error.message).toMatch(/mutual CHAP/);
    expect(JSON.stringify(error.toJSON())).not.toContain('not-the-target-secret');
    await expectNothingLeft(env);
  });

  it('wrong CHAP, a missing LUN and an unreachable portal fail clearly within the deadline and leave nothing', async () => {
    const { connection } = await env.makeVolume(4 * MiB);
    const secret = String(connection.data.auth_password);
    const cases: Array<[string, ConnectionInfo, string, RegExp]> = [
      ['wrong CHAP', { ...connection, data: { ...connection.data, auth_password: 'wrong-password-123' } }, 'AUTH_FAILED', /refused the CHAP login/],
      ['missing LUN', { ...connection, data: { ...connection.data, target_lun: 7 } }, 'NOT_FOUND', /has no LUN 7/],
      ['unreachable portal', { ...connection, data: { ...connection.data, target_portal: `127.0.0.9:${env.port}`, target_portals: [] } }, 'TIMEOUT', /no portal of the target answers/],
    ];
    for (const [what, bad, code, message] of cases) {
      const started = Date.now();
      const error = await rejection(env.driver.connect(bad, call(30_000)));
      timings.push(`${what}: ${error.code} in ${Date.now() - started} ms`);
      expect(error.code, `${what}: ${error.message}`).toBe(code);
      expect(error.message, what).toMatch(message);
      expect(error.hint, what).toMatch(/\S/);
      const text = JSON.stringify(error.toJSON()) + error.message;
      expect(text).not.toContain(secret);
      expect(text).not.toContain('wrong-password-123');
      expect(Date.now() - started, what).toBeLessThan(30_000);
      await expectNothingLeft(env);
    }
  });

  it('a second portal is used when the first does not answer', async () => {
    const { connection } = await env.makeVolume(4 * MiB);
    const twoPortals: ConnectionInfo = { ...connection, data: { ...connection.data, target_portal: `127.0.0.9:${env.port}`, target_portals: [`127.0.0.9:${env.port}`, `127.0.0.1:${env.port}`] } };
    const device = await env.driver.connect(twoPortals, call());
    expect(device.meta?.portal).toBe(`127.0.0.1:${env.port}`);
    await env.driver.disconnect(twoPortals, device, { force: false, ...call() });
    await expectNothingLeft(env);
  });

  it('mutual CHAP with the first portal dead: the target proves itself on the portal the session goes to', async () => {
    // It was checked on the first listed portal, whatever the session then used: a dead first
    // portal failed the connect as a mutual CHAP failure.
    const { connection } = await env.makeVolume(4 * MiB, { mutualChap: true });
    const dead = `127.0.0.9:${env.port}`;
    const twoPortals: ConnectionInfo = { ...connection, data: { ...connection.data, target_portal: dead, target_portals: [dead, `127.0.0.1:${env.port}`] } };
    const device = await env.driver.connect(twoPortals, call());
    expect(device.meta?.portal).toBe(`127.0.0.1:${env.port}`);
    // The target's account is kept for a failover's check (0600), and goes at the disconnect.
    const key = (await env.host.fs.readdir(userPaths(env.dataDir).secrets)).find((name) => name.endsWith('.in'));
    expect(key).toBeDefined();
    expect((await stat(path.join(userPaths(env.dataDir).secrets, key!))).mode & 0o777).toBe(0o600);
    await env.driver.disconnect(twoPortals, device, { force: false, ...call() });
    await expectNothingLeft(env);
  });

  /** A volume attached with a marker written, its daemon SIGKILLed and started again (by a process that then died before its restore). */
  async function attachedThenDaemonRestarted(): Promise<{ volume: Awaited<ReturnType<UserTestEnv['makeVolume']>>; device: Device; marker: Buffer }> {
    const volume = await env.makeVolume(8 * MiB);
    const device = await env.driver.connect(volume.connection, call());
    const marker = randomBytes(8192);
    writeAt(device.path, marker, 2 * MiB);
    const pid = await env.daemonPid();
    process.kill(pid!, 'SIGKILL');
    await env.host.waiter.waitUntil('/proc', async () => ((await env.daemonPid()) === undefined ? true : undefined), { timeoutMs: 10_000 });
    await new StorageDaemon({ dir: userPaths(env.dataDir).daemon, waiter: env.host.waiter, startTimeoutMs: 20_000 }).ensureRunning();
    return { volume, device, marker };
  }

  it('a daemon restarted by a process killed before it rebuilt the exports: the next process rebuilds them', async () => {
    // The process that noticed started the daemon again and was killed before its restore: a
    // running daemon without the export the record calls active.
    const { volume, device, marker } = await attachedThenDaemonRestarted();
    const second = env.driverWith();
    const listed = (await second.connected!()).map((c) => c.device.path);
    if (listed.length === 0) {
      // Another process on this machine took the loop number between its detach and its rebuild:
      // failed clearly (what the SIGKILL test below allows too); reconnected on a new device.
      expect((await second.check()).summary).toMatch(/1 export\(s\) lost/);
      const again = await second.connect(volume.connection, call());
      expect(readAt(again.path, marker.length, 2 * MiB).equals(marker)).toBe(true);
      await second.disconnect(volume.connection, again, { force: false, ...call() });
    } else {
      expect(listed).toEqual([device.path]);
      expect(readAt(device.path, marker.length, 2 * MiB).equals(marker)).toBe(true);
      await second.disconnect(volume.connection, device, { force: false, ...call() });
    }
    await expectNothingLeft(env);
  });

  it('a daemon that dies right after its start (qemu 7.2 segfaulted so once in CI) is started again: the connect succeeds and the exports recorded before are rebuilt', async () => {
    // A volume attached, then its daemon SIGKILLed: the next connect starts a daemon, which is
    // killed at once too (a real SIGKILL at the supervisor's after-start point); before, that
    // connect failed with "qemu-storage-daemon is not running".
    const first = await env.makeVolume(8 * MiB);
    const device = await env.driver.connect(first.connection, call());
    const marker = randomBytes(8192);
    writeAt(device.path, marker, 2 * MiB);
    process.kill((await env.daemonPid())!, 'SIGKILL');
    await env.host.waiter.waitUntil('/proc', async () => ((await env.daemonPid()) === undefined ? true : undefined), { timeoutMs: 10_000 });
    const killed: number[] = [];
    const second = env.driverWith({}, {
      async hit(name) {
        if (name !== 'iscsi-user.daemon.after-start' || killed.length > 0) return;
        const pid = (await env.daemonPid())!;
        killed.push(pid);
        process.kill(pid, 'SIGKILL');
        await env.host.waiter.waitUntil('/proc', async () => ((await env.daemonPid()) === undefined ? true : undefined), { timeoutMs: 10_000 });
      },
    });
    const other = await env.makeVolume(8 * MiB);
    const otherDevice = await second.connect(other.connection, call());
    expect(killed).toHaveLength(1);
    expect(await env.daemonPid()).not.toBe(killed[0]);
    const listed = (await second.connected!()).map((c) => c.device.path).sort();
    if (listed.includes(device.path)) {
      expect(readAt(device.path, marker.length, 2 * MiB).equals(marker)).toBe(true);
      await second.disconnect(first.connection, device, { force: false, ...call() });
    } else {
      // Another process on this machine took the loop number during the restore: failed clearly.
      expect((await second.check()).summary).toMatch(/1 export\(s\) lost/);
      const again = await second.connect(first.connection, call());
      expect(readAt(again.path, marker.length, 2 * MiB).equals(marker)).toBe(true);
      await second.disconnect(first.connection, again, { force: false, ...call() });
    }
    await second.disconnect(other.connection, otherDevice, { force: false, ...call() });
    await expectNothingLeft(env);
  });

  it('a restore killed after it released a loop device and before it rebuilt the chain: the next process rebuilds it (not left active on a free device)', async () => {
    // What the killed restore had done: the daemon started again, the record marked `restoring`,
    // its device let go of the dead FUSE file and that file unmounted — and nothing rebuilt.
    const { volume, device, marker } = await attachedThenDaemonRestarted();
    const records = exportRecords(userPaths(env.dataDir));
    const [record] = await records.list();
    expect(record).toMatchObject({ status: 'active', loopDevice: device.path });
    await records.save({ ...record!, restoring: true });
    const mountpoint = (await loopInfo(env.host.fs, device.path))?.backingFile;
    execFileSync('losetup', ['--detach', device.path]);
    if (mountpoint !== undefined) execFileSync('umount', ['-l', mountpoint]);
    const second = env.driverWith();
    const listed = (await second.connected!()).map((c) => c.device.path);
    // Before: its device no longer backed the dead file, so it was taken for a detach's leftover —
    // left `active`, naming a free loop device, its LUN silently down.
    if (listed.length === 0) {
      // Another process on this machine took the loop number meanwhile: failed clearly instead.
      expect((await second.check()).summary).toMatch(/1 export\(s\) lost/);
    } else {
      expect(listed).toEqual([device.path]);
      expect(readAt(device.path, marker.length, 2 * MiB).equals(marker)).toBe(true);
      expect((await records.list())[0]?.restoring).toBeUndefined();
    }
    const again = listed.length === 0 ? await second.connect(volume.connection, call()) : device;
    await second.disconnect(volume.connection, again, { force: false, ...call() });
    await expectNothingLeft(env);
  });

  it('a SIGKILLed daemon with 4 volumes attached is noticed and rebuilt on the same loop devices; one held open is failed clearly', async () => {
    const volumes = await Promise.all([1, 2, 3, 4, 5].map(() => env.makeVolume(8 * MiB)));
    const devices: Device[] = [];
    try {
      for (const v of volumes) devices.push(await env.driver.connect(v.connection, call()));
      const before = await Promise.all(devices.map((d) => loopInfo(env.host.fs, d.path)));
      const markers = volumes.map(() => randomBytes(8192));
      devices.forEach((d, i) => writeAt(d.path, markers[i]!, 2 * MiB));
      const pid = await env.daemonPid();
      expect(pid).toBeDefined();
      // The fifth is held open by this process when the daemon dies: it cannot be rebuilt in place.
      const held = openSync(devices[4]!.path, 'r');
      try {
        process.kill(pid!, 'SIGKILL');
        await env.host.waiter.waitUntil('/proc', async () => ((await env.daemonPid()) === undefined ? true : undefined), { timeoutMs: 10_000 });
        const started = Date.now();
        // Another berth process (a new driver instance) notices at its first call and restores.
        const second = env.driverWith();
        const listed = await second.connected!();
        timings.push(`restore of 4 exports after SIGKILL: ${Date.now() - started} ms`);
        expect((await env.daemonPid()) ?? 0).not.toBe(pid);
        // The held one's export is dead: its device is left to the kernel, which detaches it at
        // the last close (autoclear), never kept attached to the dead FUSE file berth unmounts.
        expect((await loopInfo(env.host.fs, devices[4]!.path))?.autoclear).toBe(true);
        // Between a dead device's detach and its rebuild, another process on this machine may take
        // its loop number (other suites run beside this one): the restore then fails that one
        // clearly (reconcile reconnects it on a new device). Every device nobody took is rebuilt.
        const listedPaths = new Set(listed.map((c) => c.device.path));
        const taken = [0, 1, 2, 3].filter((i) => !listedPaths.has(devices[i]!.path));
        const rebuilt = [0, 1, 2, 3].filter((i) => !taken.includes(i));
        expect(listed.map((c) => c.device.path).sort()).toEqual(rebuilt.map((i) => devices[i]!.path).sort());
        const check = await second.check();
        expect(check.ok).toBe(false);
        expect(check.summary).toMatch(new RegExp(`${1 + taken.length} export\\(s\\) lost`));
        expect(check.fix).toMatch(/berth reconcile/);
        const lost = (check.checks ?? []).find((c) => c.name === 'exports lost when qemu-storage-daemon died')?.detail ?? '';
        expect(lost.split('now backs another file').length - 1).toBe(taken.length);
        // Each one it calls taken names what its device backs now: another program's file, not ours.
        for (const i of taken) {
          const now = new RegExp(`${devices[i]!.path} now backs another file \\(([^)]*)\\)`).exec(lost)?.[1];
          expect(now, lost).toBeDefined();
          expect(now!.startsWith(env.dataDir), now).toBe(false);
        }
        for (const i of rebuilt) {
          const after = await loopInfo(env.host.fs, devices[i]!.path);
          expect(after?.rdev).toBe(before[i]?.rdev);
          expect(readAt(devices[i]!.path, markers[i]!.length, 2 * MiB).equals(markers[i]!)).toBe(true);
        }
        if (taken.length > 0) timings.push(`restore: ${taken.length} loop device(s) taken by another process meanwhile, failed clearly`);
        const first = rebuilt[0];
        if (first !== undefined) {
          const more = randomBytes(4096);
          writeAt(devices[first]!.path, more, 5 * MiB);
          await second.disconnect(volumes[first]!.connection, devices[first]!, { force: false, ...call() });
          expect(readAt(volumes[first]!.lunFile, more.length, 5 * MiB).equals(more)).toBe(true);
        }
        for (const i of rebuilt.slice(1)) await second.disconnect(volumes[i]!.connection, devices[i]!, { force: false, ...call() });
        // A lost one whose device was taken: reconnected (what berth reconcile does) on a new device.
        for (const i of taken) {
          const again = await second.connect(volumes[i]!.connection, call());
          expect(again.path).not.toBe(devices[i]!.path);
          expect(readAt(again.path, markers[i]!.length, 2 * MiB).equals(markers[i]!)).toBe(true);
          await second.disconnect(volumes[i]!.connection, again, { force: false, ...call() });
        }
      } finally {
        closeSync(held);
      }
      // Closed now: the lost one is reconnected (what berth reconcile does) and detached cleanly.
      const again = await env.driver.connect(volumes[4]!.connection, call());
      expect(readAt(again.path, markers[4]!.length, 2 * MiB).equals(markers[4]!)).toBe(true);
      await env.driver.disconnect(volumes[4]!.connection, again, { force: false, ...call() });
      await expectNothingLeft(env);
    } finally {
      // Whatever failed above, nothing of this test stays for the next ones.
      for (const v of volumes) await env.driver.disconnect(v.connection, undefined, { force: true, ...call() }).catch(() => undefined);
    }
  });

  it('16 volumes attach at once through one daemon, each with its own bytes', async () => {
    const volumes = await Promise.all(Array.from({ length: 16 }, () => env.makeVolume(4 * MiB)));
    const started = Date.now();
    const devices = await Promise.all(volumes.map((v) => env.driver.connect(v.connection, call(120_000))));
    timings.push(`16 concurrent connects: ${Date.now() - started} ms`);
    expect(new Set(devices.map((d) => d.path)).size).toBe(16);
    const data = volumes.map(() => randomBytes(128 * 1024));
    devices.forEach((d, i) => writeAt(d.path, data[i]!, MiB));
    expect((await env.driver.connected!()).length).toBe(16);
    const stopAt = Date.now();
    await Promise.all(volumes.map((v, i) => env.driver.disconnect(v.connection, devices[i], { force: false, ...call(120_000) })));
    timings.push(`16 concurrent disconnects: ${Date.now() - stopAt} ms`);
    volumes.forEach((v, i) => expect(readAt(v.lunFile, data[i]!.length, MiB).equals(data[i]!)).toBe(true));
    await expectNothingLeft(env);
  });

  it('leaves a device another attachment uses, and never touches a recorded path that now backs another file', async () => {
    const { connection } = await env.makeVolume(4 * MiB);
    const device = await env.driver.connect(connection, call());
    await env.driver.disconnect(connection, undefined, { force: true, inUse: [device], ...call() });
    expect((await env.driver.connected!()).map((c) => c.device.path)).toEqual([device.path]);
    // A recorded path that now names another file (a loop number reused): that device is left alone.
    const other = path.join(tmpdir(), `berth-iu-other-${randomBytes(4).toString('hex')}.img`);
    writeFileSync(other, Buffer.alloc(MiB));
    const otherLoop = execFileSync('losetup', ['--find', '--show', other], { encoding: 'utf8' }).trim();
    try {
      const stale: Device = { ...device, path: otherLoop };
      const error = await rejection(env.driver.disconnect(connection, stale, { force: false, ...call() }));
      expect(error.code).toBe('CONFLICT');
      expect(error.details.reason).toBe('identity-mismatch');
      expect((await loopInfo(env.host.fs, otherLoop))?.backingFile).toBe(other);
      await expectNothingLeft(env);
    } finally {
      execFileSync('losetup', ['--detach', otherLoop]);
      rmSync(other, { force: true });
    }
  });

  it('a disconnect repeated after one that finished succeeds when the loop number now backs another file (left alone)', async () => {
    // Seen in CI: the conformance suite's "disconnect twice" lost /dev/loopN to another suite's
    // volume between its two disconnects, and the second one failed CONFLICT identity-mismatch
    // ("detach --force finishes the detach") though nothing of this LUN was left to finish.
    const { connection } = await env.makeVolume(4 * MiB);
    const device = await env.driver.connect(connection, call());
    await env.driver.disconnect(connection, device, { force: false, ...call() });
    const other = path.join(tmpdir(), `berth-iu-other-${randomBytes(4).toString('hex')}.img`);
    writeFileSync(other, Buffer.alloc(MiB));
    let taken = false;
    try {
      // The same number, taken as another program would (it is free: the disconnect detached it;
      // another suite on this machine may have taken it first, which is the same case).
      try {
        execFileSync('losetup', [device.path, other], { stdio: 'pipe' });
        taken = true;
      } catch (error) {
        if ((await loopInfo(env.host.fs, device.path))?.backingFile === undefined) throw error;
      }
      const before = (await loopInfo(env.host.fs, device.path))?.backingFile;
      await env.driver.disconnect(connection, device, { force: false, ...call() });
      expect((await loopInfo(env.host.fs, device.path))?.backingFile).toBe(before);
      if (taken) expect(before).toBe(other);
      await expectNothingLeft(env);
    } finally {
      if (taken) execFileSync('losetup', ['--detach', device.path]);
      rmSync(other, { force: true });
    }
  });
});
