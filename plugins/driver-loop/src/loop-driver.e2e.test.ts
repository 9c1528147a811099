import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, type ConnectionInfo, type Device } from '@berth/core';
import { LOOP_DETACH_PROGRAM } from '@berth/host';
import { call, createLoopTestEnv, rejectionOf, tappedHost, type LoopTestEnv } from './test-loop-env.js';

const MiB = 1024 * 1024;

/** Write `blocks` at their offsets through `devicePath`, fsync, close. */
async function writeThrough(devicePath: string, blocks: ReadonlyArray<{ offset: number; bytes: Buffer }>): Promise<void> {
  const handle = await open(devicePath, 'r+');
  try {
    for (const { offset, bytes } of blocks) await handle.write(bytes, 0, bytes.length, offset);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function readAt(file: string, offset: number, length: number): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, offset);
    return buffer;
  } finally {
    await handle.close();
  }
}

describe('loop transport on real loop devices', () => {
  let env: LoopTestEnv;

  beforeEach(async () => {
    env = await createLoopTestEnv();
  });

  afterEach(async () => {
    await env.dispose();
  });

  it('puts bytes written through /dev/loopN into the backing file, before and after disconnect', async () => {
    const size = 16 * MiB;
    const connection = await env.makeFile('data.img', size);
    const file = connection.data.device_path;
    const device = await env.driver.connect(connection, call());
    expect(device.path).toMatch(/^\/dev\/loop\d+$/);
    expect(device.meta).toEqual({ backingFile: file });
    expect((await stat(device.path)).isBlockDevice()).toBe(true);

    const blocks = [0, 4096 * 3, MiB + 512, 5 * MiB + 4096, size - 4096].map((offset) => ({
      offset,
      bytes: randomBytes(offset === MiB + 512 ? 512 : 4096),
    }));
    await writeThrough(device.path, blocks);
    for (const { offset, bytes } of blocks) expect((await readAt(file, offset, bytes.length)).equals(bytes)).toBe(true);

    await env.driver.disconnect(connection, device, { force: false, ...call() });
    expect(await env.devicesBacking(file)).toEqual([]);
    for (const { offset, bytes } of blocks) expect((await readAt(file, offset, bytes.length)).equals(bytes)).toBe(true);
    // Nothing else was written: the bytes between the blocks are still zero.
    expect((await readAt(file, 8 * MiB, 4096)).equals(Buffer.alloc(4096))).toBe(true);
  });

  it('reuses the loop device when connect is retried', async () => {
    const connection = await env.makeFile('retry.img');
    const first = await env.driver.connect(connection, call());
    const second = await env.driver.connect(connection, call());
    // A new driver instance (an agent restart) finds the same device too.
    const third = await env.driverWith({}).connect(connection, call());
    expect(second.path).toBe(first.path);
    expect(third.path).toBe(first.path);
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([first.path]);
  });

  it('makes one loop device for 10 concurrent connects of one file', async () => {
    const connection = await env.makeFile('concurrent.img');
    const devices = await Promise.all(Array.from({ length: 10 }, () => env.driver.connect(connection, call())));
    expect(new Set(devices.map((d) => d.path)).size).toBe(1);
    expect(await env.devicesBacking(connection.data.device_path)).toHaveLength(1);
  });

  it('attaches different files to different devices in parallel', async () => {
    const connections = await Promise.all([1, 2, 3].map((n) => env.makeFile(`parallel-${n}.img`)));
    const devices = await Promise.all(connections.map((c) => env.driver.connect(c, call())));
    expect(new Set(devices.map((d) => d.path)).size).toBe(3);
    expect(await env.devicesUnderDir()).toHaveLength(3);
  });

  it('refuses to detach a loop device that backs another file, touching neither', async () => {
    const a = await env.makeFile('a.img');
    const b = await env.makeFile('b.img');
    const deviceA = await env.driver.connect(a, call());
    const deviceB = await env.driver.connect(b, call());
    // A stale record naming B's device: disconnecting A must leave B attached, and says so.
    const error = await rejectionOf(env.driver.disconnect(a, deviceB, { force: false, ...call() }));
    expect(BerthError.is(error) && error.details).toMatchObject({ reason: 'identity-mismatch', untouched: true });
    expect((await env.devicesBacking(b.data.device_path)).map((d) => d.name)).toEqual([deviceB.path]);
    expect((await env.devicesBacking(a.data.device_path)).map((d) => d.name)).toEqual([deviceA.path]);
    await env.driver.disconnect(a, deviceA, { force: false, ...call() });
    expect(await env.devicesBacking(a.data.device_path)).toEqual([]);
  });

  it('gives each device its identity: number, backing inode, offset and size limit', async () => {
    const connection = await env.makeFile('identity.img');
    const device = await env.driver.connect(connection, call());
    const info = await stat(connection.data.device_path);
    const node = await stat(device.path);
    expect(device.identity).toEqual({
      kind: 'loop',
      rdev: `${Math.floor(node.rdev / 256)}:${node.rdev % 256}`,
      backingDev: `${Math.floor(info.dev / 256)}:${info.dev % 256}`,
      backingInode: info.ino,
      offset: 0,
      sizeLimit: 0,
    });
    // A retried connect gives back the same device with the same identity.
    expect((await env.driver.connect(connection, call())).identity).toEqual(device.identity);
  });

  it('never detaches a reused device number: the kernel gave it to another file', async () => {
    const mine = await env.makeFile('mine.img');
    const theirs = await env.makeFile('theirs.img');
    const device = await env.driver.connect(mine, call());
    // Someone detaches it behind berth's back and the same number goes to another file.
    await env.host.runner.run('losetup', ['--detach', device.path], { timeoutMs: 10_000 });
    await env.host.runner.run('losetup', [device.path, theirs.data.device_path], { timeoutMs: 10_000 });
    const error = await rejectionOf(env.driver.disconnect(mine, device, { force: true, ...call() }));
    expect(BerthError.is(error) && error.details.reason).toBe('identity-mismatch');
    expect((await env.devicesBacking(theirs.data.device_path)).map((d) => d.name)).toEqual([device.path]);
    // Without the record, nothing of mine is attached: that disconnect succeeds and touches nothing either.
    await env.driver.disconnect(mine, undefined, { force: false, ...call() });
    expect((await env.devicesBacking(theirs.data.device_path)).map((d) => d.name)).toEqual([device.path]);
  });

  it('a disconnect of the device it connected is one process: berth-loop-detach reads, flushes and detaches it (no losetup list, no blockdev)', async () => {
    const tapped = tappedHost(env.host);
    const driver = env.driverWith({}, tapped.host);
    const connection = await env.makeFile('one-process.img');
    const device = await driver.connect(connection, call());
    const bytes = randomBytes(4096);
    // Written without a sync: the dirty buffers must reach the file through the program's flush.
    const handle = await open(device.path, 'r+');
    try {
      await handle.write(bytes, 0, bytes.length, MiB);
    } finally {
      await handle.close();
    }
    tapped.commands.length = 0;
    await driver.disconnect(connection, device, { force: false, ...call() });
    expect(tapped.commands).toEqual(['berth-loop-detach']);
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
    expect(await readAt(connection.data.device_path, MiB, bytes.length)).toEqual(bytes);
  });

  it('never detaches the device when its number now backs another file at the same path (the file replaced), even read from sysfs alone', async () => {
    const connection = await env.makeFile('replaced.img');
    const device = await env.driver.connect(connection, call());
    await replaceBehindBerth(connection, device.path, 'replaced.img');
    const [now] = await env.devicesBacking(connection.data.device_path);
    expect(now?.name).toBe(device.path);
    expect(now?.backingInode).not.toBe(device.identity?.['backingInode']);
    const error = await rejectionOf(env.driver.disconnect(connection, device, { force: false, ...call() }));
    expect(BerthError.is(error) && error.details).toMatchObject({ reason: 'identity-mismatch', untouched: true });
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([now]);
  });

  /** Behind berth's back: `device` detached, the file at its path replaced by a new one (a new inode), attached again at the same number. */
  async function replaceBehindBerth(connection: { data: { device_path: string } }, devicePath: string, name: string): Promise<void> {
    await env.host.runner.run('losetup', ['--detach', devicePath], { timeoutMs: 10_000 });
    // Made while the old file still exists, so its inode number cannot be reused.
    const replacement = await env.makeFile(`${name}.new`);
    await rename(replacement.data.device_path, connection.data.device_path);
    await env.host.runner.run('losetup', [devicePath, connection.data.device_path], { timeoutMs: 10_000 });
  }

  it('the program missing at run time: the recorded device is checked against the listing before the old way, so a replaced file is never detached', async () => {
    const { host, commands } = tappedHost(env.host, {
      rewrite: (command, args) => (command.endsWith('/berth-loop-detach') ? [path.join(env.dir, 'no-such-program'), [...args]] : [command, [...args]]),
    });
    const driver = env.driverWith({}, host);
    const connection = await env.makeFile('missing-program.img');
    const device = await driver.connect(connection, call());
    await replaceBehindBerth(connection, device.path, 'missing-program.img');
    const [now] = await env.devicesBacking(connection.data.device_path);
    commands.length = 0;
    const error = await rejectionOf(driver.disconnect(connection, device, { force: false, ...call() }));
    expect(BerthError.is(error) && error.details).toMatchObject({ reason: 'identity-mismatch', untouched: true });
    // Another inode at the path than the one recorded: the listing decides before the program
    // runs (its device may still hold the recorded file, replaced: the storage-gone refusal).
    expect(commands).toEqual(['losetup']);
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([now]);
    // A device read from its record alone, the program found missing: listed before the old way.
    const plain = await env.makeFile('missing-program-plain.img');
    const plainDevice = await driver.connect(plain, call());
    commands.length = 0;
    await driver.disconnect(plain, plainDevice, { force: false, ...call() });
    expect(commands.slice(0, 2)).toEqual(['berth-loop-detach', 'losetup']);
    expect(await env.devicesBacking(plain.data.device_path)).toEqual([]);
  });

  it('a reused number that is mounted is an identity mismatch (the record is dropped), not busy — a replaced file at the same path too', async () => {
    const mine = await env.makeFile('mine-mounted.img');
    const device = await env.driver.connect(mine, call());
    await replaceBehindBerth(mine, device.path, 'mine-mounted.img');
    const theirs = mine;
    await env.host.runner.run('mkfs.ext4', ['-q', '-F', device.path], { timeoutMs: 60_000 });
    const mountpoint = path.join(env.dir, 'mnt');
    await mkdir(mountpoint);
    await env.host.runner.run('mount', [device.path, mountpoint], { timeoutMs: 30_000 });
    try {
      const error = await rejectionOf(env.driverWith({ holderGraceMs: 0 }).disconnect(mine, device, { force: false, ...call() }));
      expect(BerthError.is(error) && error.details).toMatchObject({ reason: 'identity-mismatch', untouched: true });
      expect((await env.devicesBacking(theirs.data.device_path)).map((d) => d.name)).toEqual([device.path]);
    } finally {
      await env.host.runner.run('umount', [mountpoint], { timeoutMs: 30_000 });
    }
  });

  /** `env.host` whose sysfs reads answer `read(file, n)` (n: how often that file was read before) instead, when it gives an answer. */
  function hostReading(read: (file: string, n: number) => Promise<string | undefined> | undefined) {
    const seen = new Map<string, number>();
    const fs = new Proxy(env.host.fs, {
      get: (target, key, receiver) =>
        key === 'readFileIfExists'
          ? (file: string) => {
              const n = seen.get(file) ?? 0;
              seen.set(file, n + 1);
              return read(file, n) ?? target.readFileIfExists(file);
            }
          : Reflect.get(target, key, receiver),
    });
    return { ...env.host, fs };
  }

  it('a sysfs attribute it cannot read is no evidence the device is gone: the disconnect fails untouched', async () => {
    const connection = await env.makeFile('unreadable.img');
    const device = await env.driver.connect(connection, call());
    const backing = `/sys/block/${path.basename(device.path)}/loop/backing_file`;
    const host = hostReading((file) => (file === backing ? Promise.reject(Object.assign(new Error(`EIO: i/o error, open '${file}'`), { code: 'EIO' })) : undefined));
    const error = await rejectionOf(env.driverWith({}, host).disconnect(connection, device, { force: false, ...call() }));
    expect(BerthError.is(error) && error.details.untouched).toBe(true);
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([device.path]);
  });

  it("a device detached between its sysfs reads (loop/ gone, dev still there) is gone, not an error; loop/ missing while bound is an error", async () => {
    const connection = await env.makeFile('torn.img');
    const device = await env.driver.connect(connection, call());
    const dir = `/sys/block/${path.basename(device.path)}/loop`;
    // Stands in for the kernel's detach landing after the first read of backing_file.
    const detachedMidRead = hostReading((file, n) => (file.startsWith(`${dir}/`) && (file !== `${dir}/backing_file` || n > 0) ? Promise.resolve(undefined) : undefined));
    await env.driverWith({}, detachedMidRead).disconnect(connection, device, { force: false, ...call() });
    // It was not really detached: the real device is still there for the second case.
    const bound = hostReading((file) => (file === `${dir}/offset` ? Promise.resolve(undefined) : undefined));
    const error = await rejectionOf(env.driverWith({}, bound).disconnect(connection, device, { force: false, ...call() }));
    expect(BerthError.is(error) && error.details).toMatchObject({ untouched: true });
    expect(BerthError.is(error) && error.message).toMatch(/missing attributes of a bound loop device/);
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([device.path]);
  });

  it('a bound device whose /dev node is missing is not reported detached: the disconnect fails untouched, and works once the node is back', async () => {
    const connection = await env.makeFile('no-node.img');
    const device = await env.driver.connect(connection, call());
    // Moved aside on the real devtmpfs (the device stays bound), and put back in any case.
    const aside = `/dev/.berth-test-${path.basename(device.path)}-${process.pid}`;
    await rename(device.path, aside);
    try {
      const error = await rejectionOf(env.driver.disconnect(connection, device, { force: false, ...call() }));
      expect(BerthError.is(error) && error.details).toMatchObject({ reason: 'node-missing', untouched: true });
      expect(BerthError.is(error) && error.hint).toMatch(/mknod \/dev\/loop\d+ b 7 \d+/);
      // The ways that list devices (losetup lists none without its node) say so too: a force, a
      // cut-short connect's clean-up (no device handed in), and the way without berth-loop-detach.
      const forced = await rejectionOf(env.driver.disconnect(connection, device, { force: true, ...call() }));
      expect(BerthError.is(forced) && forced.message).toMatch(/device node is missing/);
      expect(BerthError.is(forced) && forced.details).toMatchObject({ untouched: true });
      const cleanUp = await rejectionOf(env.driver.disconnect(connection, undefined, { force: false, ...call() }));
      expect(BerthError.is(cleanUp) && cleanUp.details).toMatchObject({ reason: 'node-missing', untouched: true });
      const oldWay = await rejectionOf(env.driverWith({ nativeDetach: 'off' }).disconnect(connection, device, { force: false, ...call() }));
      expect(BerthError.is(oldWay) && oldWay.details).toMatchObject({ reason: 'node-missing', untouched: true });
      // Still bound, as the kernel says (losetup lists no device without its node).
      expect((await readFile(`/sys/block/${path.basename(device.path)}/loop/backing_file`, 'utf8')).trim()).toBe(connection.data.device_path);
    } finally {
      await rename(aside, device.path);
    }
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([device.path]);
    await env.driver.disconnect(connection, device, { force: false, ...call() });
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
  });

  it('a flush berth-loop-detach reports failed refuses the detach, untouched: the device stays attached as it was', async () => {
    // A real failed flush could not be provoked here: the last close of a writer already writes
    // the device's buffers back (and drops them), so what the program flushes is what a holder
    // left, and a holder makes the device busy. Stands in for the program answering EIO.
    const failing = path.join(env.dir, 'flush-fails');
    await writeFile(failing, ['#!/bin/sh', 'echo "flush-failed 5"', 'exit 9', ''].join('\n'), { mode: 0o755 });
    const tapped = tappedHost(env.host, { rewrite: (command, args) => (command.endsWith('/berth-loop-detach') ? [failing, [...args]] : [command, [...args]]) });
    const driver = env.driverWith({}, tapped.host);
    const connection = await env.makeFile('flush-fails.img');
    const device = await driver.connect(connection, call());
    const error = await rejectionOf(driver.disconnect(connection, device, { force: false, ...call() }));
    expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
    expect(BerthError.is(error) && error.details).toMatchObject({ reason: 'flush-failed', errno: 'EIO', untouched: true });
    expect(BerthError.is(error) && error.message).toBe(`flushing ${device.path} failed (EIO); not detaching it`);
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([device.path]);
  });

  /**
   * A real fault: a 32 MiB volume file on a 4 MiB tmpfs, attached, and 8 MiB written through the
   * device and closed without fsync (as `dd` without conv=fsync, or a crashed writer, does). The
   * writes succeed into the device's page cache; their write-back into the file fails (ENOSPC), the
   * kernel drops them and records the error on the device, and nobody has seen it. `check` gets the
   * device; the devices left and the mount go afterwards, whatever happened.
   */
  async function withLostWrites(
    name: string,
    driver: typeof env.driver,
    check: (connection: ConnectionInfo & { data: { device_path: string } }, device: Device) => Promise<void>,
  ): Promise<void> {
    const mountpoint = path.join(env.dir, name);
    await mkdir(mountpoint);
    await env.host.runner.run('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0700', 'berth-loop-full', mountpoint], { timeoutMs: 10_000 });
    let connection: (ConnectionInfo & { data: { device_path: string } }) | undefined;
    try {
      connection = await env.makeFile(`${name}/lost.img`, 32 * MiB);
      const device = await driver.connect(connection, call());
      const handle = await open(device.path, 'r+');
      try {
        const chunk = randomBytes(MiB);
        for (let i = 0; i < 8; i += 1) await handle.write(chunk, 0, chunk.length, i * MiB);
      } finally {
        await handle.close();
      }
      await check(connection, device);
    } finally {
      if (connection !== undefined) {
        for (const left of await env.devicesBacking(connection.data.device_path)) {
          await env.host.runner.run('losetup', ['--detach', left.name], { timeoutMs: 10_000, reject: false });
        }
      }
      const unmounted = await env.host.runner.run('umount', [mountpoint], { timeoutMs: 10_000, reject: false });
      if (unmounted.exitCode !== 0) await env.host.runner.run('umount', ['--lazy', mountpoint], { timeoutMs: 10_000, reject: false });
    }
  }

  it.each([
    ['berth-loop-detach (its fsync)', {}],
    ['sync + blockdev --flushbufs (nativeDetach off)', { nativeDetach: 'off' as const }],
  ])('writes the kernel could not get into a full filesystem refuse the detach, untouched; the next detach goes on — %s', async (_way, options) => {
    // A detach that only flushed (BLKFLSBUF answers 0) reported a clean detach of a volume that is
    // missing most of what was written to it.
    const driver = env.driverWith(options);
    await withLostWrites('full', driver, async (connection, device) => {
      const error = await rejectionOf(driver.disconnect(connection, device, { force: false, ...call() }));
      expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
      expect(BerthError.is(error) && error.details).toMatchObject({ reason: 'writeback-failed', untouched: true });
      expect(BerthError.is(error) && error.message).toContain(`did not reach ${connection.data.device_path}`);
      expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([device.path]);
      // The kernel reports a lost write once: the user was told, and the next detach goes on.
      await driver.disconnect(connection, device, { force: false, ...call() });
      expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
    });
  });

  it('a forced detach past lost writes detaches the device and reports them, never as untouched', async () => {
    // `--force` goes on past the flush's error. Had the error kept its `untouched`, core would
    // have rolled the detach back as if the device were still attached.
    await withLostWrites('full-forced', env.driver, async (connection, device) => {
      const error = await rejectionOf(env.driver.disconnect(connection, device, { force: true, ...call() }));
      expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
      expect(BerthError.is(error) && error.details.untouched).toBeUndefined();
      expect(BerthError.is(error) && (error.details.errors as Array<{ details?: { reason?: string } }>)[0]?.details?.reason).toBe('writeback-failed');
      expect(BerthError.is(error) && error.message).toContain('the detach goes on (forced)');
      expect(BerthError.is(error) && error.hint).not.toContain('while it is still attached');
      expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
    });
  });

  it('a `sync` that could not open the device (nativeDetach off) fails the detach as a tool failure, never as lost writes', async () => {
    const failing = path.join(env.dir, 'sync-cannot-open');
    await writeFile(failing, ['#!/bin/sh', 'echo "sync: error opening \'$1\': Permission denied" >&2', 'exit 1', ''].join('\n'), { mode: 0o755 });
    const tapped = tappedHost(env.host, { rewrite: (command, args) => (command === 'sync' ? [failing, [...args]] : [command, [...args]]) });
    const driver = env.driverWith({ nativeDetach: 'off' }, tapped.host);
    const connection = await env.makeFile('sync-cannot-open.img');
    const device = await driver.connect(connection, call());
    const error = await rejectionOf(driver.disconnect(connection, device, { force: false, ...call() }));
    expect(BerthError.is(error) && error.details.reason).not.toBe('writeback-failed');
    expect(BerthError.is(error) && error.message).toMatch(/error opening/);
    expect(BerthError.is(error) && error.details.untouched).toBe(true);
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([device.path]);
  });

  it('never touches a device named in inUse, even when finding devices by file', async () => {
    const connection = await env.makeFile('shared.img');
    const device = await env.driver.connect(connection, call());
    await env.driver.disconnect(connection, undefined, { force: true, inUse: [device], ...call() });
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([device.path]);
    const refused = await rejectionOf(env.driver.disconnect(connection, device, { force: true, inUse: [device], ...call() }));
    expect(BerthError.is(refused) && refused.details).toMatchObject({ reason: 'in-use', untouched: true });
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([device.path]);
  });

  it('neither lists nor touches a device someone made over a part of the file (an offset)', async () => {
    const connection = await env.makeFile('partial.img');
    const made = await env.host.runner.run('losetup', ['--find', '--show', '--offset', '4096', connection.data.device_path], { timeoutMs: 10_000 });
    const partial = made.stdout.trim();
    const listed = (await env.driver.connected?.()) ?? [];
    expect(listed.some((entry) => entry.device.path === partial)).toBe(false);
    await env.driver.disconnect(connection, undefined, { force: true, ...call() });
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([partial]);
  });

  it('grows the device after the file grew', async () => {
    const connection = await env.makeFile('grow.img', 64 * MiB);
    const device = await env.driver.connect(connection, call());
    const handle = await open(connection.data.device_path, 'r+');
    await handle.truncate(96 * MiB);
    await handle.close();
    const extend = env.driver.extend;
    if (!extend) throw new Error('the loop transport must support extend');
    expect(await extend.call(env.driver, connection, device, call())).toBe(96 * MiB);
    const sized = await open(device.path, 'r');
    try {
      // The block device itself is now 96 MiB: the last byte can be read.
      const { bytesRead } = await sized.read(Buffer.alloc(512), 0, 512, 96 * MiB - 512);
      expect(bytesRead).toBe(512);
    } finally {
      await sized.close();
    }
  });

  it('attaches read-only when access_mode is ro', async () => {
    const connection = await env.makeFile('ro.img', 16 * MiB, 'ro');
    const device = await env.driver.connect(connection, call());
    const [attached] = await env.devicesBacking(connection.data.device_path);
    expect(attached?.readOnly).toBe(true);
    const writeError = await rejectionOf(writeThrough(device.path, [{ offset: 0, bytes: Buffer.alloc(4096, 1) }]));
    expect(String(writeError)).toMatch(/EROFS|EACCES|EPERM/);
    expect((await readAt(connection.data.device_path, 0, 4096)).equals(Buffer.alloc(4096))).toBe(true);
    // The same file cannot be attached read-write while it is read-only.
    const rw: ConnectionInfo = { ...connection, data: { ...connection.data, access_mode: 'rw' } };
    const error = await rejectionOf(env.driver.connect(rw, call()));
    expect(BerthError.is(error) && error.code).toBe('CONFLICT');
  });

  it('attaches with direct I/O by default, and without when directIo is false', async () => {
    const direct = await env.makeFile('direct.img');
    await env.driver.connect(direct, call());
    expect((await env.devicesBacking(direct.data.device_path))[0]?.directIo).toBe(true);
    const buffered = await env.makeFile('buffered.img');
    await env.driverWith({ directIo: false }).connect(buffered, call());
    expect((await env.devicesBacking(buffered.data.device_path))[0]?.directIo).toBe(false);
  });

  it('keeps a 1 GiB volume sparse while attached', async () => {
    const connection = await env.makeFile('sparse.img', 1024 * MiB);
    await env.driver.connect(connection, call());
    const info = await stat(connection.data.device_path);
    expect(info.size).toBe(1024 * MiB);
    expect(info.blocks).toBeLessThanOrEqual(8);
  });

  it('lists what it connected', async () => {
    const connection = await env.makeFile('listed.img');
    const device = await env.driver.connect(connection, call());
    const connected = await env.driver.connected?.();
    expect(connected).toContainEqual({ device, source: { device_path: connection.data.device_path } });
  });

  it('says NOT_FOUND for a missing file and leaves nothing', async () => {
    const connection: ConnectionInfo = { driver_volume_type: 'file', data: { device_path: `${env.dir}/missing.img` } };
    const error = await rejectionOf(env.driver.connect(connection, call()));
    expect(BerthError.is(error) && error.code).toBe('NOT_FOUND');
    expect(await env.devicesUnderDir()).toEqual([]);
  });

  it('refuses connection_info it cannot connect', async () => {
    const relative = await rejectionOf(env.driver.connect({ driver_volume_type: 'file', data: { device_path: 'x.img' } }, call()));
    expect(BerthError.is(relative) && relative.code).toBe('VALIDATION');
    const iscsi = await rejectionOf(env.driver.connect({ driver_volume_type: 'iscsi', data: {} }, call()));
    expect(BerthError.is(iscsi) && iscsi.code).toBe('VALIDATION');
  });

  it('connects a local block device as it is, and refuses a regular file as local', async () => {
    const file = await env.makeFile('backing.img');
    const loop = await env.driver.connect(file, call());
    const local: ConnectionInfo = { driver_volume_type: 'local', data: { device_path: loop.path } };
    expect((await env.driver.connect(local, call())).path).toBe(loop.path);
    // Disconnecting a local connection leaves the device alone: berth did not make it.
    await env.driver.disconnect(local, { path: loop.path, type: 'block' }, { force: false, ...call() });
    expect(await env.devicesBacking(file.data.device_path)).toHaveLength(1);

    const notBlock = await rejectionOf(
      env.driver.connect({ driver_volume_type: 'local', data: { device_path: file.data.device_path } }, call()),
    );
    expect(BerthError.is(notBlock) && notBlock.code).toBe('UNPROCESSABLE');
    const missing = await rejectionOf(
      env.driver.connect({ driver_volume_type: 'local', data: { device_path: '/dev/berth-no-such-device' } }, call()),
    );
    expect(BerthError.is(missing) && missing.code).toBe('NOT_FOUND');
  });

  it.each(['auto', 'off'] as const)('nativeDetach %s: refuses to detach a device held open, leaving it attached and usable (no autoclear); force detaches it lazily and says so', async (nativeDetach) => {
    const tapped = tappedHost(env.host);
    const driver = env.driverWith({ deviceTimeoutMs: 300, holderGraceMs: 300, nativeDetach }, tapped.host);
    const connection = await env.makeFile('busy.img');
    const device = await driver.connect(connection, call());
    const holder = await open(device.path, 'r');
    try {
      const error = await rejectionOf(driver.disconnect(connection, device, { force: false, ...call() }));
      expect(BerthError.is(error) && error.code).toBe('CONFLICT');
      expect(BerthError.is(error) && error.details).toMatchObject({ reason: 'busy', untouched: true });
      expect(BerthError.is(error) && error.message).toMatch(new RegExp(`process ${process.pid}`));
      // auto: the kernel answered busy (several times within the grace), fuser only named the holder.
      if (nativeDetach === 'auto') expect(tapped.commands.filter((c) => c === 'berth-loop-detach').length).toBeGreaterThan(1);
      else expect(tapped.commands).not.toContain('berth-loop-detach');
      // Nothing was touched: the kernel was not asked to detach it at the last close (finding 3).
      const [still] = await env.devicesBacking(connection.data.device_path);
      expect(still).toMatchObject({ name: device.path, autoclear: false });
      expect((await driver.connect(connection, call())).path).toBe(device.path);

      const forced = await rejectionOf(driver.disconnect(connection, device, { force: true, ...call() }));
      expect(BerthError.is(forced) && forced.code).toBe('DRIVER_ERROR');
      expect(BerthError.is(forced) && forced.details.untouched).toBeUndefined();
      // A connect now would get a device that vanishes at the last close: it is refused instead.
      const reconnect = await rejectionOf(driver.connect(connection, call()));
      expect(BerthError.is(reconnect) && reconnect.code).toBe('CONFLICT');
    } finally {
      await holder.close();
    }
    // losetup --detach left autoclear set: the kernel lets go at the last close.
    await env.host.waiter.waitUntil(
      '/dev',
      async () => ((await env.devicesBacking(connection.data.device_path)).length === 0 ? true : undefined),
      { timeoutMs: 5_000 },
    );
    // The device is gone: a disconnect with its record succeeds.
    await driver.disconnect(connection, device, { force: false, ...call() });
  });

  it.each(['auto', 'off'] as const)('nativeDetach %s: a holder that closes within the grace was a passer-by: the detach goes through', async (nativeDetach) => {
    // The runner tells when a look for holders (berth-loop-detach, or fuser) has answered.
    let looked: () => void = () => undefined;
    const firstLook = new Promise<void>((resolve) => (looked = resolve));
    const { host, commands } = tappedHost(env.host, { onRun: (name) => (name === 'berth-loop-detach' || name === 'fuser' ? looked() : undefined) });
    const driver = env.driverWith({ holderGraceMs: 10_000, nativeDetach }, host);
    const connection = await env.makeFile('passer-by.img');
    const device = await driver.connect(connection, call());
    const holder = await open(device.path, 'r');
    let closed = false;
    try {
      const disconnecting = driver.disconnect(connection, device, { force: false, ...call() });
      // Close once the disconnect has found the device held.
      await firstLook;
      await holder.close();
      closed = true;
      await disconnecting;
    } finally {
      if (!closed) await holder.close();
    }
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
    // auto: the kernel's answer, no walk of /proc; off: fuser, then losetup --detach.
    if (nativeDetach === 'auto') expect(commands.filter((c) => c === 'fuser' || c === 'berth-loop-detach')).toEqual(expect.arrayContaining(['berth-loop-detach']));
    if (nativeDetach === 'auto') expect(commands).not.toContain('fuser');
    else expect(commands).toEqual(expect.arrayContaining(['fuser', 'losetup']));
  });

  it('without CAP_SYS_ADMIN berth-loop-detach changes nothing and the driver goes the old way: a held device refused untouched, a free one detached', async () => {
    // The program run without CAP_SYS_ADMIN (dropped from the bounding set): it may open the
    // device and LOOP_CLR_FD it, but not clear autoclear again, so it must not start.
    const { host, commands } = tappedHost(env.host, {
      rewrite: (command, args) => (command.endsWith('/berth-loop-detach') ? ['setpriv', ['--bounding-set', '-sys_admin', '--inh-caps', '-sys_admin', '--', command, ...args]] : [command, [...args]]),
    });
    const driver = env.driverWith({ holderGraceMs: 0, nativeDetach: 'auto' }, host);
    const connection = await env.makeFile('no-cap.img');
    const device = await driver.connect(connection, call());
    const holder = await open(device.path, 'r');
    try {
      const error = await rejectionOf(driver.disconnect(connection, device, { force: false, ...call() }));
      expect(BerthError.is(error) && error.details).toMatchObject({ reason: 'busy', untouched: true });
      const [still] = await env.devicesBacking(connection.data.device_path);
      expect(still).toMatchObject({ name: device.path, autoclear: false });
      expect(commands).toEqual(expect.arrayContaining(['berth-loop-detach', 'fuser']));
    } finally {
      await holder.close();
    }
    // Known unusable now: fuser and losetup --detach, no second try of the program.
    commands.length = 0;
    await driver.disconnect(connection, device, { force: false, ...call() });
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
    expect(commands).toEqual(expect.arrayContaining(['fuser', 'losetup']));
    expect(commands).not.toContain('berth-loop-detach');
  });

  it("berth-loop-detach was built with @berth/host, whose program the driver runs (this machine has a C compiler)", () => {
    expect(LOOP_DETACH_PROGRAM).toBeDefined();
    expect(existsSync(LOOP_DETACH_PROGRAM!)).toBe(true);
  });

  // Found by an explorer: `rm` of a volume file (or a new file moved over it) behind berth's back
  // left the loop device holding the only copy of the data, and a plain detach threw it away.
  for (const how of ['deleted', 'replaced'] as const) {
    it(`refuses a plain disconnect of a device whose file was ${how} (the data lives only in it), untouched, both ways; a forced one lets go of it`, async () => {
      const connection = await env.makeFile(`${how}.img`);
      const file = connection.data.device_path;
      const device = await env.driver.connect(connection, call());
      const bytes = randomBytes(4096);
      await writeThrough(device.path, [{ offset: MiB, bytes }]);
      if (how === 'deleted') {
        await unlink(file);
      } else {
        const fresh = path.join(env.dir, 'fresh.img');
        await writeFile(fresh, Buffer.alloc(4096));
        await rename(fresh, file);
      }
      const listed = (await env.driver.connected!()).find((entry) => entry.device.path === device.path);
      expect(listed).toMatchObject({ source: { device_path: file, deleted: true }, storageGone: how });
      expect(listed?.device.identity).toEqual(device.identity);
      // With berth-loop-detach (the record read alone, then the listing) and without it.
      for (const driver of [env.driver, env.driverWith({ nativeDetach: 'off' })]) {
        const refused = await rejectionOf(driver.disconnect(connection, device, { force: false, ...call() }));
        expect(BerthError.is(refused) && refused.code).toBe('CONFLICT');
        expect(BerthError.is(refused) && refused.details).toMatchObject({ reason: 'storage-gone', storageGone: how, device: device.path, storage: file, untouched: true });
        expect(BerthError.is(refused) && refused.hint).toContain(`dd if=${device.path} of=<somewhere> bs=1M`);
        expect(BerthError.is(refused) && refused.hint).toContain('--force');
        // Still attached, and the data written through it still readable there.
        expect((await env.devicesUnderDir()).map((d) => [d.name, d.deleted, d.autoclear])).toEqual([[device.path, true, false]]);
        expect((await readAt(device.path, MiB, bytes.length)).equals(bytes)).toBe(true);
      }
      if (how === 'replaced') expect((await readFile(file)).equals(Buffer.alloc(4096))).toBe(true);
      await env.driver.disconnect(connection, device, { force: true, ...call() });
      expect(await env.devicesUnderDir()).toEqual([]);
      // The file now at the path is not touched by any of it.
      if (how === 'replaced') expect((await readFile(file)).equals(Buffer.alloc(4096))).toBe(true);
    });
  }

  it('refuses it too when the connection names the file through a symlinked directory (the kernel shows the real path)', async () => {
    const connection = await env.makeFile('linked.img');
    const file = connection.data.device_path;
    const linkDir = `${env.dir}-link`;
    await symlink(env.dir, linkDir);
    try {
      const viaLink = { ...connection, data: { ...connection.data, device_path: path.join(linkDir, path.basename(file)) } };
      const device = await env.driver.connect(viaLink, call());
      const bytes = randomBytes(4096);
      await writeThrough(device.path, [{ offset: MiB, bytes }]);
      await unlink(file);
      for (const driver of [env.driver, env.driverWith({ nativeDetach: 'off' })]) {
        const refused = await rejectionOf(driver.disconnect(viaLink, device, { force: false, ...call() }));
        // Not "another device now" (which a detach takes for gone, dropping the attachment): the storage-gone refusal.
        expect(BerthError.is(refused) && refused.details).toMatchObject({ reason: 'storage-gone', storageGone: 'deleted', untouched: true });
        expect((await readAt(device.path, MiB, bytes.length)).equals(bytes)).toBe(true);
      }
      await env.driver.disconnect(viaLink, device, { force: true, ...call() });
      expect(await env.devicesUnderDir()).toEqual([]);
    } finally {
      await rm(linkDir, { force: true });
    }
  });

  it('check() passes on this machine', async () => {
    const result = await env.driver.check();
    expect(result).toMatchObject({ ok: true });
    expect(result.checks?.map((c) => c.name)).toEqual(['losetup present', 'running as root', '/dev/loop-control present']);
  });

  it('reads the backing file bytes back through the device', async () => {
    const connection = await env.makeFile('readback.img', 8 * MiB);
    const pattern = randomBytes(64 * 1024);
    const handle = await open(connection.data.device_path, 'r+');
    await handle.write(pattern, 0, pattern.length, 2 * MiB);
    await handle.close();
    const device = await env.driver.connect(connection, call());
    expect((await readAt(device.path, 2 * MiB, pattern.length)).equals(pattern)).toBe(true);
    expect((await readFile(connection.data.device_path)).subarray(2 * MiB, 2 * MiB + pattern.length).equals(pattern)).toBe(true);
  });
});
