import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { callContext as call } from '@berth/iscsi/testing';
import { AttachStateStore } from './attach-state.js';
import { STATE_SUBDIR } from './multipath-driver.js';
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

  it('reconcile\'s look (connected()) in another process finishes a left login whose session is up or whose bound passed, and keeps one still pending; a dry run\'s (readOnly) finishes none', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1), targetSpec(OTHER, portals, 1)] });
    // What an attach that exited left: a session of a given-up login (no disk) at one portal, a
    // record of one iscsid may still be logging in to at the other.
    const node = (iqn: string, portal: string): string[] => ['-m', 'node', '-T', iqn, '-p', portal];
    for (const args of [[...node(IQN, portals[1]), '--op', 'new'], [...node(IQN, portals[1]), '--op', 'update', '-n', 'node.session.scan', '-v', 'manual'], [...node(IQN, portals[1]), '--login'], [...node(OTHER, portals[0]), '--op', 'new']]) {
      expect((await env.host.runner.run('iscsiadm', args, { reject: false, timeoutMs: 30_000 })).exitCode).toBe(0);
    }
    const at = (iqn: string, portal: string, until: number) => ({ target_iqn: iqn, target_portal: portal, target_lun: 1, kernel_lun: 1, started_at: new Date(0).toISOString(), until: new Date(until).toISOString() });
    const states = new AttachStateStore(path.join(env.dataDir, STATE_SUBDIR));
    const paths = portals.map((p) => ({ target_iqn: IQN, target_portal: p, target_lun: 1, kernel_lun: 1, state: 'failed' as const }));
    const base = { version: 1 as const, mode: 'multipath' as const, device: '/dev/dm-9', scsi_wwn: 'naa.60000000000000000e00000000099999', target_iqn: IQN, target_portal: portals[0], target_lun: 1, paths, connectedAt: new Date(0).toISOString() };
    await states.save({ ...base, volumeId: 'vol-up', left_logins: [at(IQN, portals[1], Date.now() + 600_000)] });
    await states.save({ ...base, volumeId: 'vol-pending', target_iqn: OTHER, paths: paths.map((p) => ({ ...p, target_iqn: OTHER })), left_logins: [at(OTHER, portals[0], Date.now() + 600_000)] });

    // A dry run's look (`readOnly`) changes nothing: the session and the entry stay.
    expect(await env.restart().connected!({ readOnly: true })).toEqual([]);
    expect(await leftAt(env, IQN, portals[1])).toEqual({ sessions: 1, record: true });
    expect((await states.load('vol-up'))?.left_logins).toHaveLength(1);

    expect(await env.restart().connected!()).toEqual([]);
    expect(await leftAt(env, IQN, portals[1])).toEqual({ sessions: 0, record: false });
    expect((await states.load('vol-up'))?.left_logins).toBeUndefined();
    // Still within iscsid's bound and no session: its record stays, and so does the entry.
    expect(await leftAt(env, OTHER, portals[0])).toEqual({ sessions: 0, record: true });
    expect((await states.load('vol-pending'))?.left_logins).toHaveLength(1);
  });

  it('the next attach of the volume adopts a left login whose session is up: the path is the volume\'s again', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    const volumeId = randomUUID();
    await env.sim.faults.holdLogins({ portal: portals[1], iqn: IQN });
    const first = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000, volumeId));
    expect(first.paths?.map((p) => p.state)).toEqual(['active', 'failed']);
    // Another driver (a second process) attaches again while the session is up. (The first
    // driver's watcher may log it out first: then the path logs in anew; either way it ends active.)
    // Every path waited for (a healthy one late past the derived grace on a loaded machine is not this test's point).
    const again = env.restart({ stragglerGraceMs: 30_000 });
    await env.sim.faults.releaseLogins();
    await vi.waitFor(async () => expect(await succeededAt(env!, portals[1])).toBe(1), { timeout: 20_000 });
    const second = await again.connect(listConnection(IQN, 1, portals), call(60_000, volumeId));
    expect(second.paths?.map((p) => p.state), JSON.stringify(second.meta?.warnings ?? [])).toEqual(['active', 'active']);
    expect(second.path).toBe(first.path);
    expect((await env.stateFile(volumeId))?.['left_logins']).toBeUndefined();
    expect((await env.sim.state()).maps[0]?.paths).toHaveLength(2);
    await again.disconnect(listConnection(IQN, 1, portals), second, { force: false, ...call(30_000, volumeId) });
    const after = await env.sim.state();
    expect([after.sessions, after.devices, after.maps]).toEqual([[], [], []]);
    expect(await env.nodeRecords()).toEqual([]);
  });
});
