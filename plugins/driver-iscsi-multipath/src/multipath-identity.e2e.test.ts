import { afterEach, describe, expect, it } from 'vitest';
import type { Device } from '@berth/core';
import { deleteScsiDevice } from '@berth/iscsi';
import { callContext as call, existsUnder, failureOf } from '@berth/iscsi/testing';
import { listConnection, PORTALS, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// Device identity of a multipath device on the simulated host: the kernel hands a flushed map's
// dm-N to the next map, as a real one does. A disconnect or paths of the old device must then
// touch nothing (CONFLICT, identity-mismatch); another attachment's map (`inUse`) stays.

const IQN = 'iqn.2026-01.test.berth:mp-identity';
const portals = PORTALS.slice(0, 2);

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

/** Flush a map and delete its paths behind berth's back, waiting until they are gone. */
async function removeBehindBerth(current: SimEnv, device: Device): Promise<void> {
  await current.host.runner.run('multipath', ['-f', String(device.meta?.['mapName'])], { timeoutMs: 20_000 });
  for (const p of device.paths ?? []) if (p.device !== undefined) await deleteScsiDevice(current.host.fs, p.device.slice('/dev/'.length));
  const gone = [device.path, ...(device.paths ?? []).flatMap((p) => (p.device === undefined ? [] : [p.device]))];
  await current.host.waiter.waitUntil('/dev', async () => {
    for (const node of gone) if (await existsUnder(current.host, node)) return undefined;
    return true;
  }, { timeoutMs: 20_000, what: 'the map and its paths to go' });
}

describe('multipath device identity', () => {
  it('the map\'s dm uuid is its identity, in connect and in connected()', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000));
    expect(device.identity).toEqual({ kind: 'dm', uuid: `mpath-${device.multipath_id}`, wwn: device.scsi_wwn, dm: device.path.slice('/dev/'.length) });
    expect((await env.driver.connected?.())?.map((c) => c.device.identity)).toEqual([device.identity]);
  });

  it('a reused dm-N: disconnect and paths touch nothing and say identity-mismatch; the other volume\'s map stays', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 2)] });
    const a = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000));
    await removeBehindBerth(env, a);
    const b = await env.driver.connect(listConnection(IQN, 2, portals), call(60_000));
    expect(b.path).toBe(a.path);
    const runsBefore = env.runs.length;

    const error = await failureOf(env.driver.disconnect(listConnection(IQN, 1, portals), a, { force: true, ...call(60_000) }));
    expect(error.code).toBe('CONFLICT');
    expect(error.details).toMatchObject({ reason: 'identity-mismatch', device: a.path });
    expect((await failureOf(env.driver.paths!(listConnection(IQN, 1, portals), a))).details).toMatchObject({ reason: 'identity-mismatch' });
    expect(env.runs.slice(runsBefore)).toEqual([]);
    const state = await env.sim.state();
    expect(state.maps.map((m) => [m.dm, m.wwid, m.paths.length])).toEqual([[b.path.slice('/dev/'.length), b.multipath_id, 2]]);
    expect(state.sessions).toHaveLength(2);

    await env.driver.disconnect(listConnection(IQN, 2, portals), b, { force: false, ...call(60_000) });
    expect((await env.sim.state()).sessions).toEqual([]);
  });

  it('a repeat connect of a connected volume whose map is not usable now never removes that map (another attachment\'s): its dm-N is not handed to the next volume', async () => {
    const OTHER = 'iqn.2026-01.test.berth:mp-identity-other';
    env = await startSimEnv({ driver: { stragglerGraceMs: 30_000, mapTimeoutMs: 800 }, targets: [targetSpec(IQN, portals, 1), targetSpec(OTHER, portals, 1)] });
    const volumeId = '6f1b0c1e-0000-4000-8000-000000000001';
    // Attachment 1 of the volume: its map.
    const first = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000, volumeId));
    const sessions = (await env.sim.state()).sessions;
    // Every path lost for a moment: the map has no usable path.
    for (const session of sessions) await env.sim.faults.loseSession(session.sid);
    // Attachment 2 of the same volume (core connects again: connect is idempotent). It degrades,
    // or fails; either way attachment 1's map stays.
    const second = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000, volumeId)).catch((error: unknown) => error);
    expect(await existsUnder(env.host, first.path)).toBe(true);
    expect((await env.sim.state()).maps.map((m) => [m.dm, m.wwid])).toEqual([[first.path.slice('/dev/'.length), first.multipath_id]]);
    for (const session of sessions) await env.sim.faults.restoreSession(session.sid);
    // Another volume's map gets another dm-N: attachment 1's device (and its /dev/berth link) still reaches its own volume.
    const other = await env.driver.connect(listConnection(OTHER, 1, portals), call(60_000));
    expect(other.path).not.toBe(first.path);
    expect(second).toBeDefined();
  });

  it('never removes a map another attachment uses (inUse), nor its paths or sessions', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000));
    await env.driver.disconnect(listConnection(IQN, 1, portals), undefined, { force: true, inUse: [device], ...call(60_000) });
    const state = await env.sim.state();
    expect(state.maps).toHaveLength(1);
    expect(state.sessions).toHaveLength(2);
    expect(await existsUnder(env.host, device.path)).toBe(true);
    await env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call(60_000) });
    expect((await env.sim.state()).maps).toEqual([]);
  });
});
