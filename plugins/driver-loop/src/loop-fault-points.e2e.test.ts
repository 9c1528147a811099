import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, FaultInjector, silentLogger } from '@berth/core';
import { createLoopDriver } from './loop-driver.js';
import { call, createLoopTestEnv, rejectionOf, type LoopTestEnv } from './test-loop-env.js';

// The loop transport's fault points (between its commands) and the detach race they helped find.

describe('loop transport fault points', () => {
  let env: LoopTestEnv;

  beforeEach(async () => {
    env = await createLoopTestEnv();
  });

  afterEach(async () => {
    await env.dispose();
  });

  const driverWithFaults = (spec: Record<string, string>) =>
    createLoopDriver({ host: env.host, dataDir: env.dir, options: {}, logger: silentLogger, faults: new FaultInjector(spec) });

  it('a failure right after losetup attached the file leaves no loop device behind', async () => {
    const connection = await env.makeFile('after-losetup.img');
    const error = await rejectionOf(driverWithFaults({ 'loop.connect.after-losetup': 'throw' }).connect(connection, call()));
    expect(BerthError.is(error) && error.message).toMatch(/fault injected at loop\.connect\.after-losetup/);
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
  });

  it('a failure right before the detach leaves the device attached, and a retried disconnect detaches it', async () => {
    const connection = await env.makeFile('before-detach.img');
    const device = await env.driver.connect(connection, call());
    const error = await rejectionOf(driverWithFaults({ 'loop.disconnect.before-detach': 'throw' }).disconnect(connection, device, { force: false, ...call() }));
    expect(BerthError.is(error)).toBe(true);
    expect((await env.devicesBacking(connection.data.device_path)).map((d) => d.name)).toEqual([device.path]);
    await env.driver.disconnect(connection, device, { force: false, ...call() });
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
  });

  it('passes its points only when armed (an unarmed injector changes nothing)', async () => {
    const faults = new FaultInjector({});
    const driver = createLoopDriver({ host: env.host, dataDir: env.dir, options: {}, logger: silentLogger, faults });
    const connection = await env.makeFile('unarmed.img');
    const device = await driver.connect(connection, call());
    await driver.disconnect(connection, device, { force: false, ...call() });
    expect(await env.devicesBacking(connection.data.device_path)).toEqual([]);
    // An armed injector lists the points it saw: both are passed on the way.
    const watching = new FaultInjector({ 'nothing.armed.here': 'throw' });
    const watched = createLoopDriver({ host: env.host, dataDir: env.dir, options: {}, logger: silentLogger, faults: watching });
    await watched.disconnect(connection, await watched.connect(connection, call()), { force: false, ...call() });
    expect([...watching.seen].sort()).toEqual(['loop.connect.after-losetup', 'loop.disconnect.before-detach']);
  });

  it('never fails a disconnect because the kernel tears the device down while it is read (ENODEV)', async () => {
    // The kernel answers ENODEV for /sys/block/loopN/loop/backing_file while a detached device
    // is torn down; the soak hit it once in ~80 detaches. Three files, 60 rounds each, at once.
    const connections = await Promise.all([1, 2, 3].map((n) => env.makeFile(`race-${n}.img`, 4 * 1024 * 1024)));
    const failures: string[] = [];
    await Promise.all(
      connections.map(async (connection) => {
        for (let round = 0; round < 60; round += 1) {
          try {
            const device = await env.driver.connect(connection, call());
            await env.driver.disconnect(connection, device, { force: false, ...call() });
          } catch (error) {
            failures.push(error instanceof Error ? error.message : String(error));
          }
        }
      }),
    );
    expect(failures).toEqual([]);
    expect(await env.devicesUnderDir()).toEqual([]);
    // 180 real attach/holder-check/detach cycles: on a loaded shared machine they take longer than the file's 30 s.
  }, 120_000);
});
