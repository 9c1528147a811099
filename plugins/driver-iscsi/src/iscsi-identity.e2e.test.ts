import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { Device } from '@berth/core';
import { deleteScsiDevice } from '@berth/iscsi';
import { callContext as call, existsUnder, failureOf } from '@berth/iscsi/testing';
import { connectionFor, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// Device identity on the simulated host: the kernel gives a deleted disk's name to the next disk
// it scans, as a real one does. A disconnect, extend or paths of the old device must then touch
// nothing (CONFLICT, identity-mismatch); a device simply gone is success; another attachment's
// device (`inUse`) is never removed, nor its session logged out.

const IQN = 'iqn.2026-01.test.berth:identity';

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

/** Delete a disk behind berth's back (`echo 1 > /sys/block/sdX/device/delete`) and wait until it is gone. */
async function deleteBehindBerth(current: SimEnv, device: Device): Promise<void> {
  const name = device.path.slice('/dev/'.length);
  await deleteScsiDevice(current.host.fs, name);
  await current.host.waiter.waitUntil('/dev', async () => ((await existsUnder(current.host, device.path)) ? undefined : true), {
    timeoutMs: 10_000,
    what: `${device.path} to go`,
  });
}

describe('device identity', () => {
  it('connect records the disk\'s identity (session, H:C:T:L, WWN), and connected() reports the same', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const device = await env.driver.connect(connectionFor(IQN, 1), call(20_000, randomUUID()));
    const state = await env.sim.state();
    expect(device.identity).toEqual({ kind: 'scsi', sessionId: state.sessions[0]?.sid, hctl: device.meta?.['hctl'], wwn: device.scsi_wwn });
    const connected = await env.restart().connected?.();
    expect(connected?.map((c) => c.device.identity)).toEqual([device.identity]);
  });

  it('a reused sdX name: disconnect, extend and paths touch nothing and say identity-mismatch; the other LUN keeps its disk and session', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 2)] });
    const volumeA = randomUUID();
    const a = await env.driver.connect(connectionFor(IQN, 1), call(20_000, volumeA));
    await deleteBehindBerth(env, a);
    // The next scan takes the lowest free name: LUN 2 now answers to A's path.
    const b = await env.driver.connect(connectionFor(IQN, 2), call(20_000, randomUUID()));
    expect(b.path).toBe(a.path);
    const runsBefore = env.runs.length;

    const error = await failureOf(env.driver.disconnect(connectionFor(IQN, 1), a, { force: false, ...call(20_000, volumeA) }));
    expect(error.code).toBe('CONFLICT');
    expect(error.details).toMatchObject({ reason: 'identity-mismatch', device: a.path });
    expect(error.hint).toMatch(/reconcile/);
    const forced = await failureOf(env.driver.disconnect(connectionFor(IQN, 1), a, { force: true, ...call(20_000, volumeA) }));
    expect(forced.details).toMatchObject({ reason: 'identity-mismatch' });
    expect((await failureOf(env.driver.extend!(connectionFor(IQN, 1), a, call()))).details).toMatchObject({ reason: 'identity-mismatch' });
    expect((await failureOf(env.driver.paths!(connectionFor(IQN, 1), a))).details).toMatchObject({ reason: 'identity-mismatch' });

    // Nothing ran, and B's disk and the session are as they were.
    expect(env.runs.slice(runsBefore)).toEqual([]);
    expect(await existsUnder(env.host, b.path)).toBe(true);
    const state = await env.sim.state();
    expect(state.sessions).toHaveLength(1);
    expect(state.devices.map((d) => [`/dev/${d.name}`, d.lun])).toEqual([[b.path, 2]]);

    await env.driver.disconnect(connectionFor(IQN, 2), b, { force: false, ...call() });
    expect((await env.sim.state()).sessions).toEqual([]);
  });

  it('a disk that is simply gone: the disconnect succeeds and closes the session', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const volumeId = randomUUID();
    const device = await env.driver.connect(connectionFor(IQN, 1), call(20_000, volumeId));
    await deleteBehindBerth(env, device);
    await env.driver.disconnect(connectionFor(IQN, 1), device, { force: false, ...call(20_000, volumeId) });
    expect((await env.sim.state()).sessions).toEqual([]);
    expect(await env.stateFile(volumeId)).toBeUndefined();
  });

  it('never removes a disk another attachment uses (inUse), nor logs out of its session', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const device = await env.driver.connect(connectionFor(IQN, 1), call());
    // A cut-short connect of a second attachment: no device of its own, the first's in use.
    await env.driver.disconnect(connectionFor(IQN, 1), undefined, { force: false, inUse: [device], ...call() });
    expect(await existsUnder(env.host, device.path)).toBe(true);
    expect((await env.sim.state()).sessions).toHaveLength(1);
    expect(env.runs.some((r) => r.includes('--logout') || r[0] === 'blockdev')).toBe(false);

    await env.driver.disconnect(connectionFor(IQN, 1), device, { force: false, ...call() });
    expect(await existsUnder(env.host, device.path)).toBe(false);
    expect((await env.sim.state()).sessions).toEqual([]);
  });
});
