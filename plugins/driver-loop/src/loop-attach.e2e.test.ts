import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, open, stat, truncate, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, type ConnectionInfo, type Device } from '@berth/core';
import { loopIdentity, parseLosetupList } from './losetup.js';
import { call, createLoopTestEnv, rejectionOf, tappedHost, type LoopTestEnv } from './test-loop-env.js';

// berth-loop-attach (src/native/berth-loop-attach.c) against the losetup way (nativeAttach off),
// on real loop devices.

const HELPER = 'berth-loop-attach';

describe('loop connect with berth-loop-attach and with losetup', () => {
  let env: LoopTestEnv;

  beforeEach(async () => {
    env = await createLoopTestEnv();
  });

  afterEach(async () => {
    await env.dispose();
  });

  /** The device losetup lists for `device.path`, as the driver's losetup way reads it. */
  async function listedIdentity(device: Device): Promise<Record<string, string | number> | undefined> {
    const listed = await env.host.runner.run('losetup', ['--json', '--list', '--output', 'NAME,MAJ:MIN,BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET,SIZELIMIT,AUTOCLEAR,RO,DIO,LOG-SEC'], { timeoutMs: 10_000 });
    const found = parseLosetupList(listed.stdout).find((d) => d.name === device.path);
    return found ? loopIdentity(found) : undefined;
  }

  /**
   * A driver on `tapped` (whose berth-loop-attach cannot be used) connects `connection` with
   * losetup after the program's one run, and a file after it without running the program again.
   */
  async function expectLosetupFromThenOn(tapped: ReturnType<typeof tappedHost>, connection: Awaited<ReturnType<LoopTestEnv['makeFile']>>, next: string): Promise<void> {
    const driver = env.driverWith({ nativeAttach: 'auto' }, tapped.host);
    const device = await driver.connect(connection, call());
    expect(await env.devicesBacking(connection.data.device_path)).toMatchObject([{ name: device.path }]);
    expect(tapped.commands).toEqual([HELPER, 'losetup', 'losetup', 'losetup']);
    tapped.commands.length = 0;
    await driver.connect(await env.makeFile(next), call());
    expect(tapped.commands).not.toContain(HELPER);
  }

  it('berth-loop-attach was built with the package (this machine has a C compiler)', () => {
    expect(existsSync(fileURLToPath(new URL('../dist/berth-loop-attach', import.meta.url)))).toBe(true);
  });

  it.each(['auto', 'off'] as const)('nativeAttach %s: attaches, reuses the device on a retry, refuses another mode, detaches', async (nativeAttach) => {
    const tapped = tappedHost(env.host);
    const driver = env.driverWith({ nativeAttach }, tapped.host);
    const connection = await env.makeFile('cycle.img');
    const file = connection.data.device_path;
    const device = await driver.connect(connection, call());
    expect(device.path).toMatch(/^\/dev\/loop\d+$/);
    expect(device.meta).toEqual({ backingFile: file });
    expect((await stat(device.path)).isBlockDevice()).toBe(true);
    expect(await env.devicesBacking(file)).toMatchObject([{ name: device.path, directIo: true, readOnly: false, autoclear: false }]);
    // auto: one process, no losetup; off: list, --find --show, list.
    if (nativeAttach === 'auto') expect(tapped.commands).toEqual([HELPER]);
    else expect(tapped.commands).toEqual(['losetup', 'losetup', 'losetup']);

    expect(await driver.connect(connection, call())).toEqual(device);
    const ro: ConnectionInfo = { ...connection, data: { ...connection.data, access_mode: 'ro' } };
    const refused = await rejectionOf(driver.connect(ro, call()));
    expect(BerthError.is(refused) && refused.code).toBe('CONFLICT');
    expect(BerthError.is(refused) && refused.message).toMatch(/already attached .* read-write, not read-only/);

    await driver.disconnect(connection, device, { force: false, ...call() });
    expect(await env.devicesBacking(file)).toEqual([]);
  });

  it.each(['auto', 'off'] as const)('nativeAttach %s: read-only, and a read-write connect of it is a CONFLICT', async (nativeAttach) => {
    const driver = env.driverWith({ nativeAttach });
    const connection = await env.makeFile('ro.img', 16 * 1024 * 1024, 'ro');
    const device = await driver.connect(connection, call());
    expect(await env.devicesBacking(connection.data.device_path)).toMatchObject([{ name: device.path, readOnly: true }]);
    const rw: ConnectionInfo = { ...connection, data: { ...connection.data, access_mode: 'rw' } };
    const refused = await rejectionOf(driver.connect(rw, call()));
    expect(BerthError.is(refused) && refused.code).toBe('CONFLICT');
  });

  it.each(['auto', 'off'] as const)('nativeAttach %s: a device being detached (autoclear) is a CONFLICT, not reused', async (nativeAttach) => {
    const driver = env.driverWith({ nativeAttach });
    const connection = await env.makeFile('autoclear.img');
    const device = await driver.connect(connection, call());
    const holder = await open(device.path, 'r');
    try {
      // Someone's losetup --detach while it is open: the kernel marks it to go at the last close.
      await env.host.runner.run('losetup', ['--detach', device.path], { timeoutMs: 10_000 });
      const refused = await rejectionOf(driver.connect(connection, call()));
      expect(BerthError.is(refused) && refused.code).toBe('CONFLICT');
      expect(BerthError.is(refused) && refused.message).toMatch(/being detached/);
      expect(await env.devicesBacking(connection.data.device_path)).toMatchObject([{ name: device.path, autoclear: true }]);
    } finally {
      await holder.close();
    }
    await env.host.waiter.waitUntil('/dev', async () => ((await env.devicesBacking(connection.data.device_path)).length === 0 ? true : undefined), { timeoutMs: 5_000 });
  });

  it('both ways give the same device and identity for the same file, and it is the one losetup lists', async () => {
    const native = env.driverWith({ nativeAttach: 'auto' });
    const losetup = env.driverWith({ nativeAttach: 'off' });
    const first = await env.makeFile('same-a.img');
    const made = await native.connect(first, call());
    expect(made.identity).toBeDefined();
    expect(await losetup.connect(first, call())).toEqual(made);
    expect(await listedIdentity(made)).toEqual(made.identity);
    expect((await native.connected?.())?.find((c) => c.device.path === made.path)?.device).toEqual(made);

    const second = await env.makeFile('same-b.img');
    const listed = await losetup.connect(second, call());
    expect(await native.connect(second, call())).toEqual(listed);
    // And the identity is the kernel's: the node's number, the file's device and inode.
    const info = await stat(second.data.device_path, { bigint: true });
    const node = await stat(listed.path);
    expect(listed.identity).toMatchObject({ rdev: `${Math.floor(node.rdev / 256)}:${node.rdev % 256}`, backingInode: Number(info.ino), offset: 0, sizeLimit: 0 });
  });

  it('two files attached at once get two devices; one file attached from five driver instances at once gets one', async () => {
    const [a, b] = await Promise.all([env.makeFile('two-a.img'), env.makeFile('two-b.img')]);
    if (!a || !b) throw new Error('no files');
    const [deviceA, deviceB] = await Promise.all([env.driver.connect(a, call()), env.driverWith({}).connect(b, call())]);
    expect(deviceA.path).not.toBe(deviceB.path);

    // Each instance has its own per-file lock: only the program's flock on /dev/loop-control
    // keeps two of them from both finding the file unattached.
    const shared = await env.makeFile('shared.img');
    const devices = await Promise.all(Array.from({ length: 5 }, () => env.driverWith({}).connect(shared, call())));
    expect(new Set(devices.map((d) => d.path)).size).toBe(1);
    expect(await env.devicesBacking(shared.data.device_path)).toHaveLength(1);
    expect(new Set(devices.map((d) => JSON.stringify(d.identity))).size).toBe(1);
  });

  it('a cancel at any moment of the attach leaves no device behind', async () => {
    for (let turns = 0; turns < 8; turns++) {
      const connection = await env.makeFile(`cancel-${turns}.img`);
      const controller = new AbortController();
      const connecting = env.driverWith({ nativeAttach: 'auto' }).connect(connection, { signal: controller.signal });
      for (let i = 0; i < turns; i++) await nextTurn();
      controller.abort();
      const outcome = await connecting.then(
        (device) => ({ device }),
        (error: unknown) => ({ error }),
      );
      if ('device' in outcome) {
        // Finished before the cancel landed: a whole attach, detached here.
        await env.driver.disconnect(connection, outcome.device, { force: false, ...call() });
      } else {
        // Before the file's lock was taken the signal's own AbortError comes back (core maps it).
        const code = BerthError.is(outcome.error) ? outcome.error.code : outcome.error instanceof Error ? outcome.error.name : String(outcome.error);
        expect(['CANCELLED', 'AbortError']).toContain(code);
      }
      expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
    }
  });

  it('a file system that refuses O_DIRECT (ramfs): the program changes nothing, and the connect fails as losetup --direct-io=on does', async () => {
    const mnt = `${env.dir}/ramfs`;
    await mkdir(mnt);
    await env.host.runner.run('mount', ['-t', 'ramfs', 'berth-test', mnt], { timeoutMs: 10_000 });
    try {
      const file = `${mnt}/direct.img`;
      await writeFile(file, '');
      await truncate(file, 4 * 1024 * 1024);
      const connection: ConnectionInfo = { driver_volume_type: 'file', data: { device_path: file } };
      const errors: unknown[] = [];
      for (const nativeAttach of ['auto', 'off'] as const) {
        const tapped = tappedHost(env.host);
        errors.push(await rejectionOf(env.driverWith({ nativeAttach, directIo: true }, tapped.host).connect(connection, call())));
        // auto: the program failed first (nothing changed), then losetup said why in its words.
        expect(tapped.commands.slice(0, 2)).toEqual(nativeAttach === 'auto' ? [HELPER, 'losetup'] : ['losetup', 'losetup']);
      }
      const [native, losetup] = errors.map((e) => (BerthError.is(e) ? { code: e.code, message: e.message } : e));
      expect(native).toEqual(losetup);
      expect(native).toMatchObject({ code: 'DRIVER_ERROR', message: expect.stringMatching(/Invalid argument/) });
      expect(await env.devicesBacking(file)).toEqual([]);
    } finally {
      await env.host.runner.run('umount', [mnt], { timeoutMs: 10_000 });
    }
  });

  it('a run killed after it said `free` and before its answer may have attached: what appeared is detached', async () => {
    // Stands in for the program killed (SIGKILL) between LOOP_CONFIGURE and its answer line.
    const killed = `${env.dir}/killed-after-free`;
    await writeFile(killed, ['#!/bin/sh', 'echo free', 'losetup --find --direct-io=on -- "$1"', 'kill -9 $$', ''].join('\n'), { mode: 0o755 });
    const tapped = tappedHost(env.host, { rewrite: (command, args) => (command.endsWith(`/${HELPER}`) ? [killed, [...args]] : [command, [...args]]) });
    const connection = await env.makeFile('killed.img');
    const error = await rejectionOf(env.driverWith({ nativeAttach: 'auto' }, tapped.host).connect(connection, call()));
    expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
    // The undo lists, then flushes and detaches in one berth-loop-detach run (only a device of the file's inode).
    expect(tapped.commands).toEqual([HELPER, 'losetup', 'berth-loop-detach']);
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
  });

  it('a run that ended without any answer (killed by someone else) may have attached: what appeared is detached, and losetup does not attach again', async () => {
    const killed = `${env.dir}/killed-silently`;
    await writeFile(killed, ['#!/bin/sh', 'losetup --find --direct-io=on -- "$1"', 'kill -9 $$', ''].join('\n'), { mode: 0o755 });
    const tapped = tappedHost(env.host, { rewrite: (command, args) => (command.endsWith(`/${HELPER}`) ? [killed, [...args]] : [command, [...args]]) });
    const connection = await env.makeFile('silent.img');
    const error = await rejectionOf(env.driverWith({ nativeAttach: 'auto' }, tapped.host).connect(connection, call()));
    expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
    expect(BerthError.is(error) && error.message).toMatch(/ended without an answer/);
    expect(tapped.commands).toEqual([HELPER, 'losetup', 'berth-loop-detach']);
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
  });

  it.each(['installed', 'missing'] as const)('an `attached` device that backs another file than the path (kernel\'s backing_file) is detached, that one only (losetup %s)', async (losetup) => {
    // Stands in for the path swapped between the program's open and the driver's look: it
    // attaches another file and names that device, with its true identity.
    const other = await env.makeFile('swapped-in.img');
    const lying = `${env.dir}/lying-attach`;
    await writeFile(lying, [
      '#!/bin/sh',
      `dev=$(losetup --find --show --direct-io=on -- '${other.data.device_path}')`,
      'set -- $(losetup --noheadings --output MAJ:MIN,BACK-MAJ:MIN,BACK-INO "$dev")',
      'echo free',
      'echo "attached $dev $1 $2 $3 0 0 16"',
      '',
    ].join('\n'), { mode: 0o755 });
    const tapped = tappedHost(env.host, {
      rewrite: (command, args) => {
        if (command.endsWith(`/${HELPER}`)) return [lying, [...args]];
        if (losetup === 'missing' && command === 'losetup') return [`${env.dir}/no-losetup`, [...args]];
        return [command, [...args]];
      },
    });
    const connection = await env.makeFile('swapped.img');
    const error = await rejectionOf(env.driverWith({ nativeAttach: 'auto' }, tapped.host).connect(connection, call()));
    expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
    expect(BerthError.is(error) && error.message).toMatch(/backs .*swapped-in\.img by the kernel's account/);
    expect(await env.devicesBacking(other.data.device_path)).toEqual([]);
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
  });

  it.each(['auto', 'off'] as const)('nativeAttach %s: a read-write connect of a file this process may not write fails (PERMISSION_DENIED) and leaves no device; read-only works', async (nativeAttach) => {
    // Root without CAP_DAC_OVERRIDE on a file of nobody's, 0644: it may read it, not write it.
    // losetup then attaches read-only (and berth-loop-attach's open fails): never handed out as read-write.
    const connection = await env.makeFile('not-writable.img');
    await chown(connection.data.device_path, 65534, 65534);
    await chmod(connection.data.device_path, 0o644);
    const noDac = ['--bounding-set', '-dac_override,-dac_read_search', '--inh-caps', '-dac_override,-dac_read_search', '--'];
    const tapped = tappedHost(env.host, { rewrite: (command, args) => ['setpriv', [...noDac, command, ...args]] });
    const driver = env.driverWith({ nativeAttach }, tapped.host);
    const error = await rejectionOf(driver.connect(connection, call()));
    expect(BerthError.is(error) && { code: error.code, message: error.message }).toEqual({ code: 'PERMISSION_DENIED', message: expect.stringMatching(/is not writable by this process/) });
    expect(BerthError.is(error) && error.hint).toMatch(/--mode ro/);
    // auto: the program failed its open and changed nothing; losetup attached read-only, undone.
    expect(tapped.commands.slice(0, 3)).toEqual(nativeAttach === 'auto' ? [HELPER, 'losetup', 'losetup'] : ['losetup', 'losetup', 'losetup']);
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);

    const ro: ConnectionInfo = { ...connection, data: { ...connection.data, access_mode: 'ro' } };
    const device = await driver.connect(ro, call());
    expect(await env.devicesBacking(connection.data.device_path)).toMatchObject([{ name: device.path, readOnly: true }]);
  });

  it.each(['auto', 'off'] as const)('nativeAttach %s: a device of the file once at the path (now another inode) is not handed out', async (nativeAttach) => {
    const driver = env.driverWith({ nativeAttach });
    const connection = await env.makeFile('replaced.img');
    const file = connection.data.device_path;
    const first = await driver.connect(connection, call());
    // Another file mounted over the path: the old device still names the path (as losetup --list shows).
    const other = await env.makeFile('replacement.img');
    await env.host.runner.run('mount', ['--bind', other.data.device_path, file], { timeoutMs: 10_000 });
    let second: Device | undefined;
    try {
      second = await driver.connect(connection, call());
      expect(second.path).not.toBe(first.path);
      const now = await stat(file, { bigint: true });
      expect(second.identity).toMatchObject({ backingInode: Number(now.ino) });
    } finally {
      // Detached before the unmount: once unmounted its back-file no longer names the temp dir.
      if (second !== undefined && second.path !== first.path) await env.host.runner.run('losetup', ['--detach', second.path], { timeoutMs: 10_000 });
      await env.host.runner.run('umount', [file], { timeoutMs: 10_000 });
    }
  });

  it('a program that cannot start: losetup attaches instead, from then on', async () => {
    const tapped = tappedHost(env.host, {
      rewrite: (command, args) => (command.endsWith(`/${HELPER}`) ? [`${env.dir}/no-such-program`, [...args]] : [command, [...args]]),
    });
    await expectLosetupFromThenOn(tapped, await env.makeFile('missing-a.img'), 'missing-b.img');
  });

  it('a process that may not open /dev/loop-control: the program changes nothing, says no-permission, and losetup attaches', async () => {
    // The program as nobody, with the file readable and writable to it: it gets as far as the
    // loop devices (root:disk 0660) and stops there.
    await chmod(env.dir, 0o711);
    const connection = await env.makeFile('nobody.img');
    await chmod(connection.data.device_path, 0o666);
    const nobody = ['--reuid=65534', '--regid=65534', '--clear-groups', '--'];
    const probe = await env.host.runner.run('setpriv', [...nobody, fileURLToPath(new URL(`../dist/${HELPER}`, import.meta.url)), connection.data.device_path], { timeoutMs: 10_000, reject: false });
    expect({ stdout: probe.stdout, exitCode: probe.exitCode }).toEqual({ stdout: 'no-permission\n', exitCode: 7 });
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);

    const tapped = tappedHost(env.host, {
      rewrite: (command, args) => (command.endsWith(`/${HELPER}`) ? ['setpriv', [...nobody, command, ...args]] : [command, [...args]]),
    });
    await expectLosetupFromThenOn(tapped, connection, 'nobody-b.img');
  });

  it('without CAP_SYS_ADMIN the program attaches as losetup does (LOOP_CONFIGURE asks only for the device opened for writing), with the same identity', async () => {
    const drop = ['--bounding-set', '-sys_admin', '--inh-caps', '-sys_admin', '--'];
    const plain = await env.makeFile('no-cap-losetup.img');
    const byLosetup = await env.host.runner.run('setpriv', [...drop, 'losetup', '--find', '--show', '--', plain.data.device_path], { timeoutMs: 10_000, reject: false });
    expect(byLosetup.exitCode).toBe(0);

    const tapped = tappedHost(env.host, {
      rewrite: (command, args) => (command.endsWith(`/${HELPER}`) ? ['setpriv', [...drop, command, ...args]] : [command, [...args]]),
    });
    const connection = await env.makeFile('no-cap.img');
    const device = await env.driverWith({ nativeAttach: 'auto' }, tapped.host).connect(connection, call());
    expect(tapped.commands).toEqual([HELPER]);
    expect(await listedIdentity(device)).toEqual(device.identity);
  });
});
