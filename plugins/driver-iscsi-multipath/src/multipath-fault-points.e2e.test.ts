import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { FaultInjector, silentLogger } from '@berth/core';
import { callContext, failureOf } from '@berth/iscsi/testing';
import { createMultipathDriver } from './multipath-driver.js';
import { listConnection, PORTALS, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// The multipath transport passes the same fault points as the single-path one (they are the
// LUN lifecycle's, once per path): a failure at each leaves what a user expects, and a retry
// finishes the job. The crash suites can reach multipath through them.

const IQN = 'iqn.2026-01.test.berth:mp-faults';
const portals = PORTALS.slice(0, 2);
const connection = listConnection(IQN, 1, portals);
let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

function withFaults(current: SimEnv, spec: Record<string, string>): { driver: ReturnType<typeof createMultipathDriver>; faults: FaultInjector } {
  const faults = new FaultInjector(spec);
  return { driver: createMultipathDriver({ host: current.host, dataDir: current.dataDir, options: {}, logger: silentLogger, faults }), faults };
}

describe('iSCSI multipath transport fault points', () => {
  it('passes every lifecycle point on a connect and a disconnect', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
    const watched = withFaults(env, { 'not.a.point': 'throw' });
    const volumeId = randomUUID();
    const device = await watched.driver.connect(connection, callContext(60_000, volumeId));
    await watched.driver.disconnect(connection, device, { force: false, ...callContext(60_000, volumeId) });
    expect([...watched.faults.seen].sort()).toEqual([
      'iscsi.connect.after-login',
      'iscsi.connect.after-node-record',
      'iscsi.connect.after-scan',
      'iscsi.disconnect.after-logout',
      'iscsi.disconnect.before-logout',
    ]);
  });

  for (const point of ['iscsi.connect.after-node-record', 'iscsi.connect.after-login', 'iscsi.connect.after-scan']) {
    it(`a failure at ${point} on every path undoes them all, passing no disconnect point`, async () => {
      env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
      const failing = withFaults(env, { [point]: 'throw' });
      const error = await failureOf(failing.driver.connect(connection, callContext(60_000, randomUUID())));
      expect(error.message).toContain(`fault injected at ${point}`);
      const state = await env.sim.state();
      expect([state.sessions, state.devices, state.maps, await env.nodeRecords()]).toEqual([[], [], [], []]);
      expect([...failing.faults.seen].filter((p) => p.startsWith('iscsi.disconnect.'))).toEqual([]);
    });
  }

  for (const point of ['iscsi.disconnect.before-logout', 'iscsi.disconnect.after-logout']) {
    it(`a failure at ${point} leaves no disk and no map; a retried disconnect leaves nothing`, async () => {
      env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
      const volumeId = randomUUID();
      const device = await env.driver.connect(connection, callContext(60_000, volumeId));
      const error = await failureOf(withFaults(env, { [point]: 'throw' }).driver.disconnect(connection, device, { force: false, ...callContext(60_000, volumeId) }));
      expect(error.message).toContain(`fault injected at ${point}`);
      const state = await env.sim.state();
      expect([state.devices, state.maps]).toEqual([[], []]);
      await env.driver.disconnect(connection, device, { force: false, ...callContext(60_000, volumeId) });
      expect((await env.sim.state()).sessions).toEqual([]);
      expect(await env.nodeRecords()).toEqual([]);
      expect(await env.stateFile(volumeId)).toBeUndefined();
    });
  }
});
