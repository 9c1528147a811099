import { randomBytes, randomUUID } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { ConnectedDevice, Device, TransportDriver } from '@berth/core';
import { callContext as call } from '@berth/iscsi/testing';
import { listConnection, PORTALS, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// Item 5's other half: a path an attach gave up is added later by `repairPaths` (what the agent's
// path check and `berth reconcile` call on a device `connected()` lists with a `failed` path).

const IQN = 'iqn.2026-01.test.berth:mp-repair';
const portals: [string, string] = [PORTALS[0], PORTALS[1]];

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

/** The entry `connected()` lists for `device`. */
async function listedOf(driver: TransportDriver, device: Device): Promise<ConnectedDevice> {
  const listed = (await driver.connected!()).find((d) => d.device.path === device.path);
  expect(listed).toBeDefined();
  return listed!;
}

/** Attach LUN 1 over both portals while the second refuses its login (`times` logins, or always). */
async function attachWithoutSecond(current: SimEnv, times?: number): Promise<{ device: Device; volumeId: string }> {
  await current.sim.faults.failLogin({ portal: portals[1], exitCode: 19, ...(times === undefined ? {} : { times }) });
  const volumeId = randomUUID();
  const device = await current.driver.connect(listConnection(IQN, 1, portals), call(60_000, volumeId));
  expect(device.paths?.map((p) => [p.portal, p.state])).toEqual([
    [portals[0], 'active'],
    [portals[1], 'failed'],
  ]);
  return { device, volumeId };
}

describe('repairPaths: a path missing from the map is added later', { timeout: 120_000 }, () => {
  it('connected() lists the missing portal failed; once it answers, repairPaths adds it to the map; again: nothing to do', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    const { device, volumeId } = await attachWithoutSecond(env, 1);
    const listed = await listedOf(env.driver, device);
    expect(listed.device.paths?.map((p) => [p.portal, p.state])).toEqual([
      [portals[0], 'active'],
      [portals[1], 'failed'],
    ]);

    // Another process (the agent, reconcile) repairs it: a driver on the same host and data dir.
    const repair = await env.restart().repairPaths!(listed, call(60_000));
    expect(repair.changed).toBe(true);
    expect(repair.detail).toMatch(new RegExp(`^added path ${portals[1].replace(/\./g, '\\.')} \\(sd[a-z]+\\) in \\d+ ms$`));
    const state = await env.sim.state();
    expect(state.maps).toHaveLength(1);
    expect(state.maps[0]?.paths).toHaveLength(2);
    expect((await listedOf(env.driver, device)).device.paths?.map((p) => p.state)).toEqual(['active', 'active']);
    expect(await env.stateFile(volumeId)).toMatchObject({ paths: [{ state: 'active' }, { target_portal: portals[1], state: 'active', device: expect.stringMatching(/^\/dev\/sd/) }] });

    // Bytes written through the new path are read through the map.
    const added = (await env.stateFile(volumeId))!['paths'] as Array<{ device: string }>;
    const bytes = randomBytes(4096);
    const handle = await open(path.join(env.sim.root, added[1]!.device), 'r+');
    try {
      await handle.write(bytes, 0, bytes.length, 8192);
      await handle.sync();
    } finally {
      await handle.close();
    }
    const through = await readFile(path.join(env.sim.root, device.path));
    expect(through.subarray(8192, 8192 + bytes.length).equals(bytes)).toBe(true);

    const again = await env.driver.repairPaths!(listed, call(60_000));
    expect(again.changed).toBe(false);
    expect(again.detail).toMatch(/every path is in the map/);

    await env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call(30_000, volumeId) });
    const after = await env.sim.state();
    expect([after.sessions, after.devices, after.maps]).toEqual([[], [], []]);
    expect(await env.nodeRecords()).toEqual([]);
  });

  it('a login given up at the grace that iscsid carries on is not listed failed (nor logged in twice) until it is finished; then it is added', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    await env.sim.faults.holdLogins({ portal: portals[1], iqn: IQN });
    const volumeId = randomUUID();
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000, volumeId));
    expect(device.paths?.map((p) => p.state)).toEqual(['active', 'failed']);
    expect((await listedOf(env.driver, device)).device.paths?.map((p) => [p.portal, p.state])).toEqual([[portals[0], 'active']]);
    const early = await env.driver.repairPaths!(await listedOf(env.driver, device), call(60_000));
    expect(early).toMatchObject({ changed: false, detail: expect.stringMatching(/every path is in the map/) });
    expect((await env.sim.state()).heldLogins).toBe(1);

    // iscsid's login ends; the left login is finished (its session logged out, its record deleted).
    await env.sim.faults.releaseLogins();
    await vi.waitFor(async () => expect((await env!.stateFile(volumeId))?.['left_logins']).toBeUndefined(), { timeout: 20_000 });
    const listed = await listedOf(env.driver, device);
    expect(listed.device.paths?.map((p) => [p.portal, p.state])).toEqual([
      [portals[0], 'active'],
      [portals[1], 'failed'],
    ]);
    expect((await env.driver.repairPaths!(listed, call(60_000))).changed).toBe(true);
    expect((await env.sim.state()).maps[0]?.paths).toHaveLength(2);
    await env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call(30_000, volumeId) });
    expect((await env.sim.state()).sessions).toEqual([]);
    expect(await env.nodeRecords()).toEqual([]);
  });

  it('CHAP: the repair logs in with the CHAP of the map\'s path (from its record); the secret reaches no detail, state or log', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1, { chap: { username: 'user', password: 'chap-secret-9' } })] });
    await env.sim.faults.failLogin({ portal: portals[1], exitCode: 19, times: 1 });
    const volumeId = randomUUID();
    const connection = listConnection(IQN, 1, portals, { auth_method: 'CHAP', auth_username: 'user', auth_password: 'chap-secret-9' });
    const device = await env.driver.connect(connection, call(60_000, volumeId));
    expect(device.paths?.map((p) => p.state)).toEqual(['active', 'failed']);
    const repair = await env.restart().repairPaths!(await listedOf(env.driver, device), call(60_000));
    expect(repair.changed).toBe(true);
    expect((await env.sim.state()).maps[0]?.paths).toHaveLength(2);
    expect(JSON.stringify({ repair, state: await env.stateFile(volumeId), logs: env.logs })).not.toContain('chap-secret-9');
    await env.driver.disconnect(connection, device, { force: false, ...call(30_000, volumeId) });
    expect(await env.nodeRecords()).toEqual([]);
  });

  it('a portal still dead: changed false, no record or session left; another map\'s device is not repaired', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    const { device, volumeId } = await attachWithoutSecond(env);
    const listed = await listedOf(env.driver, device);
    const repair = await env.driver.repairPaths!(listed, call(60_000));
    expect(repair.changed).toBe(false);
    expect(repair.detail).toContain(`${portals[1]} still down`);
    expect(repair.detail).not.toContain('\n');
    const state = await env.sim.state();
    expect(state.sessions.map((s) => s.portal)).toEqual([portals[0]]);
    expect(state.maps[0]?.paths).toHaveLength(1);
    expect(await env.nodeRecord(IQN, portals[1])).toBeUndefined();
    expect((await env.stateFile(volumeId))?.['left_logins']).toBeUndefined();

    // A device whose identity is another's now: nothing touched.
    const other = { ...listed, device: { ...listed.device, identity: { kind: 'dm' as const, uuid: 'mpath-36001405000000000000000000000000', wwn: '36001405000000000000000000000000', dm: 'dm-0' } } };
    await env.sim.faults.clear();
    const refused = await env.driver.repairPaths!(other, call(60_000));
    expect(refused.changed).toBe(false);
    expect(refused.detail).toMatch(/another device/);
    expect((await env.sim.state()).sessions).toHaveLength(1);

    await env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call(30_000, volumeId) });
    expect((await env.sim.state()).sessions).toEqual([]);
    expect(await env.nodeRecords()).toEqual([]);
  });
});
