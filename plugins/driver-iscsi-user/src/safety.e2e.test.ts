import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BerthError, silentLogger, type Device, type FaultPoints } from '@berth/core';
import type { HostServices } from '@berth/host';
import { loopInfo } from '@berth/qemu';
import { userPaths } from './export-records.js';
import { createIscsiUserDriver } from './iscsi-user-driver.js';
import { call, createUserTestEnv, expectNothingLeft, loopsUnder, readAt, rejection, writeAt, type UserTestEnv } from './test-user-env.js';

// What a disconnect or a failed connect must not do on a real tgtd, qemu-storage-daemon, FUSE and
// loop devices: report success while leaving the record (a loop number reused by another
// attachment's device), let a held device vanish later (autoclear), drop the record of a chain it
// could not remove, or tear down a device whose buffers could not be flushed.

const MiB = 1024 * 1024;
let env: UserTestEnv;

beforeAll(async () => {
  env = await createUserTestEnv();
});

afterAll(async () => {
  await env?.dispose();
});


/** The one record of the env, as stored. */
function onlyRecord(): Record<string, unknown> {
  const dir = userPaths(env.dataDir).records;
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  expect(files).toHaveLength(1);
  return JSON.parse(readFileSync(path.join(dir, files[0]!), 'utf8')) as Record<string, unknown>;
}

/** The one record names `loopDevice` as its chain's device (what a reused number leaves behind). */
function renameRecordedDevice(loopDevice: string): void {
  const dir = userPaths(env.dataDir).records;
  const [file] = readdirSync(dir).filter((f) => f.endsWith('.json'));
  const record = onlyRecord();
  writeFileSync(path.join(dir, file!), JSON.stringify({ ...record, loopDevice }));
}

/** A child process (`sleep`) holding `device` open on its stdin. */
async function holder(device: string): Promise<ChildProcess> {
  const fd = openSync(device, 'r');
  try {
    const child = spawn('sleep', ['600'], { stdio: [fd, 'ignore', 'ignore'] });
    await once(child, 'spawn');
    return child;
  } finally {
    closeSync(fd);
  }
}

async function release(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  // The kernel closes a process's files before its parent learns that it exited.
  await exited;
}

/** `env.host` with `command` run as `instead`. */
function hostRunning(command: string, instead: string): HostServices {
  const runner = env.host.runner;
  return { ...env.host, runner: { run: (file, args, options) => runner.run(file === command ? instead : file, args, options) } };
}

describe('iscsi-user: disconnect and connect safety on a real tgtd', () => {
  it('a recorded loop number the kernel reused for another attachment\'s device: the disconnect removes its own chain, record and secret, leaves that device alone and reports the mismatch', async () => {
    const { connection } = await env.makeVolume(4 * MiB);
    const device = await env.driver.connect(connection, call());
    const other = path.join(tmpdir(), `berth-iu-reused-${randomBytes(4).toString('hex')}.img`);
    writeFileSync(other, Buffer.alloc(MiB));
    let reused: string | undefined;
    try {
      // The number the record names went to another volume's device, which another attachment
      // uses (the chain's own device was lost and the kernel gave its number away). The number is
      // not taken back from the kernel here (another loop user on the machine could take it in
      // between): the other device gets a number of its own, and the record and the device handed
      // to the disconnect name it, as they would after the reuse.
      reused = execFileSync('losetup', ['--find', '--show', other], { encoding: 'utf8' }).trim();
      const info = await loopInfo(env.host.fs, reused);
      const another: Device = { path: reused, type: 'block', identity: { kind: 'loop', rdev: info?.rdev ?? '' } };
      renameRecordedDevice(reused);
      const error = await rejection(env.driver.disconnect(connection, { ...device, path: reused }, { force: false, inUse: [another], ...call() }));
      expect(error.code).toBe('CONFLICT');
      expect(error.details.reason).toBe('identity-mismatch');
      expect((await loopInfo(env.host.fs, reused))?.backingFile).toBe(other);
      await expectNothingLeft(env);
    } finally {
      if (reused) execFileSync('losetup', ['--detach', reused]);
      rmSync(other, { force: true });
      await env.driver.disconnect(connection, undefined, { force: true, ...call() }).catch(() => undefined);
    }
  });

  it('a device held open: the disconnect is refused (CONFLICT busy, untouched) and the device stays attached after the holder closes it; then it detaches', async () => {
    const { connection } = await env.makeVolume(4 * MiB);
    const device = await env.driver.connect(connection, call());
    let child: ChildProcess | undefined;
    try {
      child = await holder(device.path);
      const error = await rejection(env.driver.disconnect(connection, device, { force: false, ...call() }));
      expect(error.code).toBe('CONFLICT');
      // Found up front, before anything was flushed or removed: untouched, the holder named.
      expect(error.message).toMatch(/is busy: process \d+ \(\w+\) has it open/);
      expect(error.details).toMatchObject({ reason: 'busy', untouched: true });
      await release(child);
      // Its last opener closed it: a device left with autoclear would be gone now.
      expect(await loopInfo(env.host.fs, device.path)).toMatchObject({ backingFile: device.identity?.mountpoint, autoclear: false, rdev: device.identity?.rdev });
      expect((await env.driver.connected!()).map((c) => c.device.path)).toEqual([device.path]);
      await env.driver.disconnect(connection, device, { force: false, ...call() });
      await expectNothingLeft(env);
    } finally {
      await release(child);
      await env.driver.disconnect(connection, undefined, { force: true, ...call() }).catch(() => undefined);
    }
  });

  it('a failed connect whose undo finds its loop device held keeps its record (failed, with the reason) and secret; a disconnect removes them once it is closed', async () => {
    const { connection } = await env.makeVolume(4 * MiB);
    let held: number | undefined;
    const faults: FaultPoints = {
      async hit(name) {
        if (name !== 'iscsi-user.connect.after-losetup') return;
        const [loop] = loopsUnder(env.dataDir);
        held = openSync(loop!, 'r');
        throw new BerthError('DRIVER_ERROR', 'injected: the connect fails after losetup');
      },
    };
    try {
      const error = await rejection(env.driverWith({}, faults).connect(connection, call()));
      expect(error.message).toMatch(/injected/);
      const record = onlyRecord();
      expect(record).toMatchObject({ status: 'failed' });
      expect(String(record.failure)).toMatch(/injected.*held open/);
      expect(error.details.leftover).toMatch(/held open/);
      expect(await env.host.fs.readdir(userPaths(env.dataDir).secrets)).not.toEqual([]);
      const [loop] = loopsUnder(env.dataDir);
      expect(await loopInfo(env.host.fs, loop!)).toMatchObject({ autoclear: false });
      expect(await env.driver.connected!()).toEqual([]);
    } finally {
      if (held !== undefined) closeSync(held);
    }
    await env.driver.disconnect(connection, undefined, { force: false, ...call() });
    await expectNothingLeft(env);
  });

  it('a flush that fails refuses the detach, untouched: the device, export and record stay; forced, it goes', async () => {
    const { connection, lunFile } = await env.makeVolume(4 * MiB);
    const device = await env.driver.connect(connection, call());
    try {
      const data = randomBytes(64 * 1024);
      writeAt(device.path, data, MiB);
      // `blockdev --flushbufs` fails (run as `false`).
      const failing = createIscsiUserDriver({ host: hostRunning('blockdev', 'false'), dataDir: env.dataDir, options: {}, logger: silentLogger });
      const error = await rejection(failing.disconnect(connection, device, { force: false, ...call() }));
      expect(error.code).toBe('DRIVER_ERROR');
      expect(error.message).toMatch(/flushing .* failed, so it was not detached/);
      expect(error.details).toMatchObject({ reason: 'flush-failed', untouched: true });
      expect(await loopInfo(env.host.fs, device.path)).toMatchObject({ backingFile: device.identity?.mountpoint, autoclear: false });
      expect((await env.driver.connected!()).map((c) => c.device.path)).toEqual([device.path]);
      expect(readAt(device.path, data.length, MiB).equals(data)).toBe(true);
      // Forced: the flush failure is given up knowingly and the chain goes.
      await failing.disconnect(connection, device, { force: true, ...call() });
      await expectNothingLeft(env);
      expect(readAt(lunFile, data.length, MiB).equals(data)).toBe(true);
    } finally {
      await env.driver.disconnect(connection, undefined, { force: true, ...call() }).catch(() => undefined);
    }
  });
});
