import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { callContext as call } from '@berth/iscsi/testing';
import { listConnection, PORTALS, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// A path given up while its login is slow but alive: killing `iscsiadm --login` does not stop
// iscsid's login (the simulated host's `heldLogins` carries it on in its daemon, as iscsid does),
// so a session may come up after the attach returned. No session, record or disk of that portal
// may be left behind by it.

const IQN = 'iqn.2026-01.test.berth:mp-left';
const OTHER = 'iqn.2026-01.test.berth:mp-left-other';
const portals: [string, string] = [PORTALS[0], PORTALS[1]];

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

/** The sessions (portals) and node records of `iqn` at `portal`. */
async function leftAt(current: SimEnv, iqn: string, portal: string): Promise<{ sessions: number; record: boolean }> {
  const sessions = (await current.sim.state()).sessions.filter((s) => s.iqn === iqn && s.portal === portal).length;
  return { sessions, record: (await current.nodeRecord(iqn, portal)) !== undefined };
}

/** How many logins to `portal` made a session. */
async function succeededAt(current: SimEnv, portal: string): Promise<number> {
  return (await current.sim.state()).logins.find((l) => l.iqn === IQN && l.portal === portal)?.succeeded ?? 0;
}

describe('a path given up while its login is still alive', { timeout: 120_000 }, () => {
  it('the attach returns at the grace; the session that comes later is logged out and its record deleted', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    await env.sim.faults.holdLogins({ portal: portals[1], iqn: IQN });
    const volumeId = randomUUID();
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000, volumeId));
    expect(device.paths?.map((p) => [p.portal, p.state])).toEqual([
      [portals[0], 'active'],
      [portals[1], 'failed'],
    ]);
    // iscsid still carries the login on: the attach did not wait for it.
    expect((await env.sim.state()).heldLogins).toBe(1);

    // The target answers at last: the session comes up, with no disk and (before the fix) no record.
    await env.sim.faults.releaseLogins();
    await vi.waitFor(async () => expect(await succeededAt(env!, portals[1])).toBe(1), { timeout: 20_000 });
    await vi.waitFor(async () => expect(await leftAt(env!, IQN, portals[1])).toEqual({ sessions: 0, record: false }), { timeout: 20_000 });
    await vi.waitFor(async () => expect((await env!.stateFile(volumeId))?.['left_logins']).toBeUndefined(), { timeout: 20_000 });
    // The volume's own path is untouched.
    expect(await leftAt(env, IQN, portals[0])).toEqual({ sessions: 1, record: true });
    expect((await env.sim.state()).maps).toHaveLength(1);

    await env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call(30_000, volumeId) });
    const after = await env.sim.state();
    expect([after.sessions, after.devices, after.maps]).toEqual([[], [], []]);
    expect(await env.nodeRecords()).toEqual([]);
  });

  it('the detach finishes it: the session that comes up is logged out, its record deleted, other volumes\' sessions stay', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1), targetSpec(OTHER, portals, 1)] });
    // Another volume on the same portals, attached before (every path waited for): its sessions must stay.
    const everyPath = env.restart({ stragglerGraceMs: 30_000 });
    const other = await everyPath.connect(listConnection(OTHER, 1, portals), call(60_000, randomUUID()));
    expect(other.paths?.map((p) => p.state)).toEqual(['active', 'active']);
    await env.sim.faults.holdLogins({ portal: portals[1], iqn: IQN });
    const volumeId = randomUUID();
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000, volumeId));
    expect(device.paths?.map((p) => p.state)).toEqual(['active', 'failed']);
    // What a detach or reconcile in another process needs: the portal, its iqn and LUN, iscsid's bound.
    expect(await env.stateFile(volumeId)).toMatchObject({ left_logins: [{ target_portal: portals[1], target_iqn: IQN, target_lun: 1 }] });
    expect(await env.nodeRecord(IQN, portals[1])).toBeDefined();

    // The detach starts while iscsid is still logging in; the login ends (a session, no disk) during it.
    const detach = env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call(60_000, volumeId) });
    await vi.waitFor(async () => expect(await leftAt(env!, IQN, portals[0])).toEqual({ sessions: 0, record: false }), { timeout: 20_000 });
    await env.sim.faults.releaseLogins();
    await detach;
    expect(await succeededAt(env, portals[1])).toBe(1);
    expect(await leftAt(env, IQN, portals[1])).toEqual({ sessions: 0, record: false });
    expect(await env.stateFile(volumeId)).toBeUndefined();
    // The other volume: both sessions, its map, its records.
    const state = await env.sim.state();
    expect(state.sessions.map((s) => [s.iqn, s.portal]).sort()).toEqual(portals.map((p) => [OTHER, p]));
    expect(state.maps).toHaveLength(1);
    for (const p of portals) expect(await env.nodeRecord(OTHER, p)).toBeDefined();
    await everyPath.disconnect(listConnection(OTHER, 1, portals), other, { force: false, ...call(30_000) });
  });
});
