import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHostServices, type HostServices } from '@berth/host';
import { BerthError } from '@berth/core';
import { createLoopTestEnv, type LoopTestEnv } from './test-loop-env.js';

function call(): { signal: AbortSignal } {
  return { signal: AbortSignal.timeout(20_000) };
}

async function rejectionOf(promise: Promise<unknown>): Promise<BerthError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!BerthError.is(error)) throw new Error(`expected a BerthError, got ${String(error)}`);
  return error;
}

describe('loop transport failures', () => {
  let env: LoopTestEnv;

  beforeEach(async () => {
    env = await createLoopTestEnv();
  });

  afterEach(async () => {
    await env.dispose();
  });

  /** Host services whose `losetup` is a script that lists nothing and fails attaches with `stderr`. */
  async function hostWithFailingLosetup(stderr: string): Promise<HostServices> {
    const bin = path.join(env.dir, 'bin');
    await mkdir(bin, { recursive: true });
    const script = [
      '#!/bin/sh',
      'if [ "$1" = "--json" ]; then echo \'{"loopdevices": []}\'; exit 0; fi',
      `echo '${stderr}' >&2`,
      'exit 1',
      '',
    ].join('\n');
    await writeFile(path.join(bin, 'losetup'), script, { mode: 0o755 });
    return createHostServices({ pathPrepend: [bin] });
  }

  // nativeAttach off: berth-loop-attach (run by its path) attaches without losetup, and without
  // it the losetup scripts below would not be asked.
  it('says how to install losetup when it is missing', async () => {
    const noTools = createHostServices({ env: { PATH: path.join(env.dir, 'empty-bin') } });
    const driver = env.driverWith({ nativeAttach: 'off', nativeDetach: 'off' }, noTools);
    const connection = await env.makeFile('a.img');
    const error = await rejectionOf(driver.connect(connection, call()));
    expect(error.code).toBe('HOST_UNSUPPORTED');
    expect(error.hint).toContain('apt-get install -y mount');
    const check = await driver.check();
    expect(check.ok).toBe(false);
    expect(check.summary).toContain('losetup present');
    expect(check.fix).toContain('apt-get install -y mount');
    // The undo of that failed connect finds nothing of the file attached (read from sysfs) and
    // succeeds, instead of failing for the same missing tool (finding 7 of issue 9).
    await driver.disconnect(connection, undefined, { force: true, ...call() });
    // When something of the file is attached, it says so with the install hint.
    const attached = await env.driver.connect(connection, call());
    const stuck = await rejectionOf(driver.disconnect(connection, attached, { force: false, ...call() }));
    expect(stuck.code).toBe('HOST_UNSUPPORTED');
    expect(stuck.hint).toContain('apt-get install -y');
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([attached.path]);
    // berth-loop-detach needs neither losetup nor blockdev: with it, the device berth recorded is
    // read from sysfs, flushed and detached all the same.
    await env.driverWith({}, noTools).disconnect(connection, attached, { force: false, ...call() });
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
  });

  it('maps permission errors to PERMISSION_DENIED with a hint to run as root', async () => {
    const host = await hostWithFailingLosetup('losetup: /x.img: failed to set up loop device: Permission denied');
    const error = await rejectionOf(env.driverWith({ nativeAttach: 'off' }, host).connect(await env.makeFile('a.img'), call()));
    expect(error.code).toBe('PERMISSION_DENIED');
    expect(error.hint).toMatch(/root/);
  });

  it('maps exhausted loop devices to HOST_UNSUPPORTED', async () => {
    const host = await hostWithFailingLosetup('losetup: cannot find an unused loop device');
    const error = await rejectionOf(env.driverWith({ nativeAttach: 'off' }, host).connect(await env.makeFile('a.img'), call()));
    expect(error.code).toBe('HOST_UNSUPPORTED');
    expect(error.hint).toMatch(/losetup --detach/);
  });

  it('maps other failures to DRIVER_ERROR with losetup\'s words', async () => {
    const host = await hostWithFailingLosetup('losetup: /x.img: something unexpected happened');
    const error = await rejectionOf(env.driverWith({ nativeAttach: 'off' }, host).connect(await env.makeFile('a.img'), call()));
    expect(error.code).toBe('DRIVER_ERROR');
    expect(error.message).toContain('something unexpected happened');
  });

  it.each(['auto', 'off'] as const)('nativeAttach %s: detaches what it attached when cancelled right after the attach ran', async (nativeAttach) => {
    const controller = new AbortController();
    const ran: string[] = [];
    // The cancel lands right after the kernel attached the file, before connect returns.
    const host: HostServices = {
      ...env.host,
      runner: {
        async run(file, args, options) {
          const result = await env.host.runner.run(file, args, options);
          ran.push(path.basename(file));
          if (args.includes('--find') || file.endsWith('/berth-loop-attach')) controller.abort();
          return result;
        },
      },
    };
    const connection = await env.makeFile('cancelled.img');
    const error = await rejectionOf(env.driverWith({ nativeAttach }, host).connect(connection, { signal: controller.signal }));
    expect(error.code).toBe('CANCELLED');
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
    expect(ran.includes('berth-loop-attach')).toBe(nativeAttach === 'auto');
  });

  it('a detach that finds the number bound to another file after its flush leaves that device alone (forced, without berth-loop-detach)', async () => {
    const connection = await env.makeFile('mine.img');
    const other = await env.makeFile('other.img');
    const device = await env.driver.connect(connection, call());
    let rebound = false;
    // While the detach flushes, someone detaches the device by hand and binds its number to another volume's file.
    const host: HostServices = {
      ...env.host,
      runner: {
        async run(file, args, options) {
          if (!rebound && path.basename(file) === 'sync') {
            rebound = true;
            await env.host.runner.run('losetup', ['--detach', device.path], { timeoutMs: 10_000 });
            await env.host.runner.run('losetup', [device.path, other.data.device_path], { timeoutMs: 10_000 });
          }
          return env.host.runner.run(file, args, options);
        },
      },
    };
    const error = await rejectionOf(env.driverWith({ nativeDetach: 'off' }, host).disconnect(connection, device, { force: true, ...call() }));
    expect(rebound).toBe(true);
    expect(error.message).toContain(`now backs ${other.data.device_path}`);
    expect((await env.devicesBacking(other.data.device_path)).map((d) => d.name)).toEqual([device.path]);
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
  });
});
