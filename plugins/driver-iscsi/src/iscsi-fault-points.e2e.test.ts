import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { FaultInjector, silentLogger, type TransportCallContext, type TransportDriver } from '@berth/core';
import { callContext, failureOf } from '@berth/iscsi/testing';
import { createIscsiDriver } from './iscsi-driver.js';
import { connectionFor, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// The iSCSI transport's fault points (between its commands), on the simulated host: a failure
// injected at each one leaves what a user would expect, and a retry finishes the job.

const IQN = 'iqn.2026-01.test.berth:faults';
let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

const call = (volumeId?: string): TransportCallContext => callContext(20_000, volumeId);

function driverWith(current: SimEnv, spec: Record<string, string>): { driver: TransportDriver; faults: FaultInjector } {
  const faults = new FaultInjector(spec);
  return { driver: createIscsiDriver({ host: current.host, dataDir: current.dataDir, options: {}, logger: silentLogger, faults }), faults };
}

describe('iSCSI transport fault points', () => {
  it.each(['iscsi.connect.after-node-record', 'iscsi.connect.after-login', 'iscsi.connect.after-scan'])(
    'a failure at %s undoes the connect: no session, no device, no node record',
    async (point) => {
      env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
      const { driver } = driverWith(env, { [point]: 'throw' });
      const error = await failureOf(driver.connect(connectionFor(IQN, 1), call(randomUUID())));
      expect(error.message).toContain(`fault injected at ${point}`);
      const state = await env.sim.state();
      expect(state.sessions).toEqual([]);
      expect(state.devices).toEqual([]);
      expect(await env.nodeRecords()).toEqual([]);
    },
  );

  it.each(['iscsi.disconnect.before-logout', 'iscsi.disconnect.after-logout'])(
    'a failure at %s leaves no device, and a retried disconnect leaves nothing at all',
    async (point) => {
      env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
      const volumeId = randomUUID();
      const device = await env.driver.connect(connectionFor(IQN, 1), call(volumeId));
      const { driver } = driverWith(env, { [point]: 'throw' });
      const error = await failureOf(driver.disconnect(connectionFor(IQN, 1), device, { force: false, ...call(volumeId) }));
      expect(error.message).toContain(`fault injected at ${point}`);
      const state = await env.sim.state();
      expect(state.devices).toEqual([]);
      expect(state.sessions).toHaveLength(point.endsWith('before-logout') ? 1 : 0);
      await env.driver.disconnect(connectionFor(IQN, 1), device, { force: false, ...call(volumeId) });
      expect((await env.sim.state()).sessions).toEqual([]);
      expect(await env.nodeRecords()).toEqual([]);
      expect(await env.stateFile(volumeId)).toBeUndefined();
    },
  );

  it('passes every point of a connect and a disconnect, and none of them in the undo of a failed connect', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const { driver, faults } = driverWith(env, { 'not.a.point': 'throw' });
    const volumeId = randomUUID();
    const device = await driver.connect(connectionFor(IQN, 1), call(volumeId));
    await driver.disconnect(connectionFor(IQN, 1), device, { force: false, ...call(volumeId) });
    expect([...faults.seen].sort()).toEqual([
      'iscsi.connect.after-login',
      'iscsi.connect.after-node-record',
      'iscsi.connect.after-scan',
      'iscsi.disconnect.after-logout',
      'iscsi.disconnect.before-logout',
    ]);
    // The undo of a failed connect logs out too, but it is not a detach: it passes no detach point.
    const failing = driverWith(env, { 'iscsi.connect.after-scan': 'throw' });
    await failureOf(failing.driver.connect(connectionFor(IQN, 1), call(randomUUID())));
    expect((await env.sim.state()).sessions).toEqual([]);
    expect([...failing.faults.seen].filter((p) => p.startsWith('iscsi.disconnect.'))).toEqual([]);
  });
});
