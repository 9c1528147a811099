import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BerthError, type BackendVolume, type ConnectionInfo } from '@berth/core';
import { stopManagedTgtd } from './managed-tgtd.js';
import { createTgtTestEnv, loginAndReadCapacity, type TgtTestEnv } from './test-tgt-env.js';

const MiB = 1024 * 1024;
const INITIATOR = 'iqn.2026-11.io.berth.test:multipath-host';
const connector = { host: 'mp-host', initiator: INITIATOR, multipath: true };

let env: TgtTestEnv;

beforeAll(async () => {
  // Two portals on the same port, as issue 4's multipath setup has them.
  env = await createTgtTestEnv({ addresses: ['127.0.0.1', '127.0.0.2'] });
}, 30_000);

afterAll(async () => {
  await env?.dispose();
}, 30_000);

function signal(): AbortSignal {
  return AbortSignal.timeout(20_000);
}

function volume(): BackendVolume {
  return { id: randomUUID(), name: 'mp', sizeBytes: 24 * MiB, providerLocation: null };
}

async function loginAt(portal: string, info: ConnectionInfo) {
  return loginAndReadCapacity(env.runner, {
    portal,
    iqn: String(info.data.target_iqn),
    lun: 1,
    initiator: INITIATOR,
    auth: { username: String(info.data.auth_username), password: String(info.data.auth_password) },
  });
}

describe('tgt backend with two portals', () => {
  it('lists both portals (with an IQN and LUN for each) and the volume is reachable through each', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const info = await env.backend.initializeConnection(v, connector, signal());
    const iqn = `iqn.2026-11.io.berth:volume-${v.id}`;
    expect(info.data).toMatchObject({
      target_portal: env.portals[0],
      target_portals: env.portals,
      target_iqns: [iqn, iqn],
      target_luns: [1, 1],
      target_iqn: iqn,
      target_lun: 1,
    });
    for (const portal of env.portals) {
      const seen = await loginAt(portal, info);
      expect(seen.exitCode, `${portal}: ${seen.output}`).toBe(0);
      expect(seen.sizeBytes).toBe(24 * MiB);
    }
  });

  it("advertise: 'first' hands out only the first portal (a multipath transport must find the others)", async () => {
    const first = env.backendWith({ advertise: 'first' });
    const v = volume();
    await first.create(v, signal());
    const info = await first.initializeConnection(v, connector, signal());
    expect(info.data.target_portal).toBe(env.portals[0]);
    expect(info.data.target_portals).toBeUndefined();
    expect(info.data.target_iqns).toBeUndefined();
    // Both portals still serve the target.
    expect((await loginAt(env.portals[1] ?? '', info)).exitCode).toBe(0);
  });

  it('after a restart, tgtd listens on both portals again', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const info = await env.backend.initializeConnection(v, connector, signal());
    await stopManagedTgtd(env.dataDir, env.controlPort, { runner: env.runner });
    expect((await loginAt(env.portals[1] ?? '', info)).exitCode).toBe(10);
    await env.backendWith({}).exports?.();
    for (const portal of env.portals) expect((await loginAt(portal, info)).exitCode).toBe(0);
    const check = await env.backend.check();
    expect(check.ok, check.summary).toBe(true);
  });

  it('refuses to start when its first portal is taken, instead of letting tgtd fall back to 0.0.0.0:3260', async () => {
    // A second env whose first portal is this env's (in use by its tgtd).
    const other = await createTgtTestEnv();
    try {
      const clash = other.backendWith({ portals: [env.portals[0] ?? ''] });
      const error = await clash.create(volume(), signal()).catch((e: unknown) => e);
      expect(BerthError.is(error) && error.code).toBe('BACKEND_ERROR');
      expect((error as BerthError).message).toMatch(/could not listen on|does not listen on|cannot listen on/);
      const ports = await other.runner.run('tgtadm', ['-C', String(other.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'portal'], { reject: false });
      // Its tgtd was stopped: nothing answers on its control port, nothing listens on 3260 for it.
      expect(ports.exitCode).toBe(107);
    } finally {
      await other.dispose();
    }
  });
});
