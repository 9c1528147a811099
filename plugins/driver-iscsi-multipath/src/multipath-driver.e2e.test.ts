import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { redactConnectionInfo, type Device, type TransportCallContext } from '@berth/core';
import { callContext, failureOf } from '@berth/iscsi/testing';
import {
  discoveryConnection,
  existsUnder,
  listConnection,
  PORTALS,
  startSimEnv,
  targetSpec,
  wwnOf,
  type SimEnv,
} from './test-sim-env.js';

// The driver against berth's simulated host: the kernel's sysfs and /dev, open-iscsi's iscsiadm
// and node database, dm-multipath with multipath/multipathd, a model SAN on several portals.
// What is checked is what a user would look at: the kernel's sessions and disks, the maps,
// `iscsiadm -m node`, the device node, the state file.

const call = (timeoutMs = 30_000, volumeId?: string): TransportCallContext => callContext(timeoutMs, volumeId);

const IQN = 'iqn.2026-01.test.berth:mp1';
const OTHER = 'iqn.2026-01.test.berth:mp2';

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

async function wwidOf(current: SimEnv, iqn: string, lun: number): Promise<string> {
  const info = (await current.san.targets()).find((t) => t.iqn === iqn)?.luns.find((l) => l.lun === lun);
  if (info === undefined) throw new Error(`no LUN ${lun} on ${iqn}`);
  return info.wwid;
}

/**
 * Tests that expect every path in the map wait for every login: the straggler grace is derived from
 * the first logins' times, and on a loaded machine a healthy path can be late past it (seen in runs
 * at load ~25, and on 2026-12-05 in one of 21 runs of this package: the discovery CHAP test's first
 * path cut as a straggler). The grace's own behaviour is tested with dead portals below.
 */
const EVERY_PATH = { stragglerGraceMs: 30_000 } as const;

/** Nothing is left on the host: no session, no disk, no map, no node record. */
async function expectNothingLeft(current: SimEnv): Promise<void> {
  const state = await current.sim.state();
  expect(state.sessions).toEqual([]);
  expect(state.devices).toEqual([]);
  expect(state.maps).toEqual([]);
  expect(await current.nodeRecords()).toEqual([]);
}

/** The device is one map holding one disk per portal in `portals`, all with `wwn`. */
async function expectOneMapOver(current: SimEnv, device: Device, portals: readonly string[], wwn: string): Promise<void> {
  const state = await current.sim.state();
  expect(state.maps).toHaveLength(1);
  const map = state.maps[0]!;
  expect(device.path).toBe(`/dev/${map.dm}`);
  expect(await existsUnder(current.host, device.path)).toBe(true);
  expect(map.wwid).toBe(wwn);
  expect(device.scsi_wwn).toBe(wwn);
  expect(device.multipath_id).toBe(wwn);
  expect(map.paths.map((p) => p.dmState)).toEqual(portals.map(() => 'active'));
  // One session per portal, each with this LUN's disk, and that disk in the map.
  expect(state.sessions.map((s) => s.portal).sort()).toEqual([...portals].sort());
  const disks = state.devices.map((d) => d.name).sort();
  expect(map.paths.map((p) => p.device).sort()).toEqual(disks);
  expect(device.paths?.map((p) => [p.portal, p.state])).toEqual(portals.map((p) => [p, 'active']));
  expect(device.paths?.map((p) => p.device?.slice('/dev/'.length)).sort()).toEqual(disks);
  // The kernel's view: each disk is held by the map (`holders/dm-N`).
  for (const disk of disks) expect(await current.host.fs.exists(`/sys/block/${disk}/holders/${map.dm}`)).toBe(true);
}

describe('connect and disconnect from target_portals', () => {
  for (const count of [2, 4]) {
    it(`${count} portals: one dm device over every path, one WWN, persisted state; disconnect leaves nothing`, async () => {
      const portals = PORTALS.slice(0, count);
      env = await startSimEnv({ driver: EVERY_PATH, targets: [targetSpec(IQN, portals)] });
      const volumeId = randomUUID();
      const connection = listConnection(IQN, 1, portals);
      const device = await env.driver.connect(connection, call(30_000, volumeId));
      const wwn = wwnOf(await wwidOf(env, IQN, 1));
      await expectOneMapOver(env, device, portals, wwn);
      expect(device.meta?.['mode']).toBe('multipath');
      expect(device.meta?.['warnings']).toBeUndefined();
      // Logged in once per portal, in parallel, through records that bound iscsid's own retries.
      expect((await env.sim.state()).logins.map((l) => [l.portal, l.succeeded])).toEqual(portals.map((p) => [p, 1]));
      for (const portal of portals) {
        const record = await env.nodeRecord(IQN, portal);
        expect(record?.['node.session.scan']).toBe('manual');
        expect(record?.['node.conn[0].timeo.login_timeout']).toBe('5');
        expect(record?.['node.session.initial_login_retry_max']).toBe('2');
        expect(record?.['node.startup']).toBe('automatic');
      }
      const saved = await env.stateFile(volumeId);
      expect(saved).toMatchObject({ volumeId, mode: 'multipath', device: device.path, scsi_wwn: wwn, target_iqn: IQN, target_portal: portals[0], target_lun: 1 });
      expect((saved?.['paths'] as unknown[]).length).toBe(count);

      // Detach with the stored, password-less connection_info.
      await env.driver.disconnect(redactConnectionInfo(connection), device, { force: false, ...call(30_000, volumeId) });
      await expectNothingLeft(env);
      expect(await existsUnder(env.host, device.path)).toBe(false);
      expect(await env.stateFile(volumeId)).toBeUndefined();
    });
  }

  it('is idempotent: a second connect returns the same map without a login', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ driver: EVERY_PATH, targets: [targetSpec(IQN, portals)] });
    const first = await env.driver.connect(listConnection(IQN, 1, portals), call());
    const logins = env.loginRuns();
    const second = await env.driver.connect(listConnection(IQN, 1, portals), call());
    expect(second.path).toBe(first.path);
    expect(second.paths).toEqual(first.paths);
    expect(env.loginRuns()).toBe(logins);
    expect((await env.sim.state()).maps).toHaveLength(1);
  });

  it('CHAP on every path, and the password never reaches the device, the state or the logs', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ driver: EVERY_PATH, targets: [targetSpec(IQN, portals, 1, { chap: { username: 'user', password: 'chap-secret-1' } })] });
    const volumeId = randomUUID();
    const device = await env.driver.connect(listConnection(IQN, 1, portals, { auth_method: 'CHAP', auth_username: 'user', auth_password: 'chap-secret-1' }), call(30_000, volumeId));
    expect((await env.sim.state()).maps[0]?.paths).toHaveLength(2);
    const everything = JSON.stringify({ device, state: await env.stateFile(volumeId), logs: env.logs });
    expect(everything).not.toContain('chap-secret-1');
  });

  it('a wrong CHAP password on every portal: AUTH_FAILED naming each portal, nothing left', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1, { chap: { username: 'user', password: 'right' } })] });
    const error = await failureOf(env.driver.connect(listConnection(IQN, 1, portals, { auth_method: 'CHAP', auth_username: 'user', auth_password: 'wrong' }), call()));
    expect(error.code).toBe('AUTH_FAILED');
    for (const p of portals) expect(error.message).toContain(p);
    await expectNothingLeft(env);
  });
});

describe('connect from SendTargets discovery', () => {
  for (const count of [2, 4]) {
    it(`${count} portals found through the first: one dm device over every path; no discovery or stray record left`, async () => {
      const portals = PORTALS.slice(0, count);
      env = await startSimEnv({ driver: EVERY_PATH, advertiseAll: true, targets: [targetSpec(IQN, portals), targetSpec(OTHER, portals)] });
      const connection = discoveryConnection(IQN, 1, portals[0]!);
      const device = await env.driver.connect(connection, call());
      await expectOneMapOver(env, device, portals, wwnOf(await wwidOf(env, IQN, 1)));
      expect(device.meta?.['discovered']).toBe(true);
      // Only this target's records: discovery ran nonpersistent, and the other target is not a path.
      expect((await env.nodeRecords()).every((line) => line.endsWith(IQN))).toBe(true);
      expect(env.runs.some((r) => r.includes('nonpersistent'))).toBe(true);
      const discoveryDb = await env.host.runner.run('iscsiadm', ['-m', 'discoverydb'], { reject: false, timeoutMs: 10_000 });
      expect(discoveryDb.stdout.trim()).toBe('');

      await env.driver.disconnect(connection, device, { force: false, ...call() });
      await expectNothingLeft(env);
    });
  }

  it('a target whose portal lists only itself (tgtd\'s SendTargets) gives a map with one path', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, PORTALS.slice(0, 2))] });
    const device = await env.driver.connect(discoveryConnection(IQN, 1, PORTALS[0]), call());
    expect(device.paths?.map((p) => [p.portal, p.state])).toEqual([[PORTALS[0], 'active']]);
    expect((await env.sim.state()).maps[0]?.paths).toHaveLength(1);
  });

  it('discovery CHAP; persistent mode restores the node.startup values discovery resets', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({
      advertiseAll: true,
      targets: [targetSpec(IQN, portals), targetSpec(OTHER, portals)],
      driver: { ...EVERY_PATH, discoveryMode: 'persistent', startup: 'manual' },
    });
    await env.san.setDiscoveryChap({ username: 'disc', password: 'disc-secret' });
    // A record of another target an administrator set to log in at boot, before berth ran: the
    // persistent discovery through its portal rewrites it with the defaults.
    await env.host.runner.run('iscsiadm', ['-m', 'node', '-T', OTHER, '-p', portals[0]!, '--op', 'new'], { timeoutMs: 10_000 });
    await env.host.runner.run('iscsiadm', ['-m', 'node', '-T', OTHER, '-p', portals[0]!, '--op', 'update', '-n', 'node.startup', '-v', 'automatic'], { timeoutMs: 10_000 });

    const wrong = await failureOf(
      env.driver.connect(discoveryConnection(IQN, 1, portals[0]!, { discovery_auth_method: 'CHAP', discovery_auth_username: 'disc', discovery_auth_password: 'nope' }), call()),
    );
    expect(wrong.code).toBe('AUTH_FAILED');
    expect(env.loginRuns()).toBe(0);

    const connection = discoveryConnection(IQN, 1, portals[0]!, { discovery_auth_method: 'CHAP', discovery_auth_username: 'disc', discovery_auth_password: 'disc-secret' });
    const device = await env.driver.connect(connection, call());
    expect(device.paths?.map((p) => p.state)).toEqual(['active', 'active']);
    // The administrator's record keeps its value; the records berth logs in through get berth's.
    expect((await env.nodeRecord(OTHER, portals[0]!))?.['node.startup']).toBe('automatic');
    for (const p of portals) expect((await env.nodeRecord(IQN, p))?.['node.startup']).toBe('manual');
    // The record discovery made for the other target at the second portal is gone again.
    expect(await env.nodeRecord(OTHER, portals[1]!)).toBeUndefined();
    expect(JSON.stringify(env.logs)).not.toContain('disc-secret');

    await env.driver.disconnect(connection, device, { force: false, ...call() });
    expect((await env.nodeRecords()).map((l) => l.split(' ')[1])).toEqual([OTHER]);
  });

  it('a target the portal does not offer: NOT_FOUND before any login', async () => {
    env = await startSimEnv({ advertiseAll: true, targets: [targetSpec(OTHER, PORTALS.slice(0, 2))] });
    const error = await failureOf(env.driver.connect(discoveryConnection(IQN, 1, PORTALS[0]), call()));
    expect(error.code).toBe('NOT_FOUND');
    expect(env.loginRuns()).toBe(0);
    await expectNothingLeft(env);
  });
});

describe('dead and slow portals', () => {
  it('one portal unreachable: the attach succeeds on the others long before a login timeout, and reports the missing path', async () => {
    const portals = PORTALS.slice(0, 3);
    // A fixed grace (2 s) and an 8 s portal budget: the healthy second path is not cut on a loaded
    // machine; the derived grace has its own test below.
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)], driver: { portalTimeoutMs: 8_000, stragglerGraceMs: 2_000 } });
    // A login there hangs as long as iscsid's own timeouts would let it (its defaults: 15 s x 8 tries).
    const loginTimeoutMs = 60_000;
    await env.sim.faults.unreachablePortal(portals[2]!, loginTimeoutMs);
    const volumeId = randomUUID();
    const started = performance.now();
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(90_000, volumeId));
    const elapsed = performance.now() - started;
    expect(elapsed).toBeLessThan(loginTimeoutMs / 6);
    expect(device.paths?.map((p) => [p.portal, p.state])).toEqual([
      [portals[0], 'active'],
      [portals[1], 'active'],
      [portals[2], 'failed'],
    ]);
    const failed = (device.meta?.['paths'] as Array<Record<string, unknown>>)[2];
    expect(String(failed?.['error'])).toMatch(/127\.0\.0\.3:3260.*(did not answer|timed out)/);
    const state = await env.sim.state();
    expect(state.maps[0]?.paths).toHaveLength(2);
    expect(state.sessions.map((s) => s.portal).sort()).toEqual(portals.slice(0, 2));
    // The dead portal's record stays while iscsid may still log in (a left login, in the state);
    // the detach finishes it once iscsid's bound (login_timeout × retry max) has passed.
    expect(await env.nodeRecord(IQN, portals[2]!)).toBeDefined();
    expect(await env.stateFile(volumeId)).toMatchObject({ left_logins: [{ target_portal: portals[2] }] });

    await env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call(30_000, volumeId) });
    await expectNothingLeft(env);
  });

  it('a dead portal costs about one healthy login plus the grace, not portalTimeoutMs', async () => {
    const portals = PORTALS.slice(0, 3);
    // portalTimeoutMs at its default (15 s); the dead portal's login would hang 6 s.
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
    await env.sim.faults.unreachablePortal(portals[2]!, 6_000);
    const started = performance.now();
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000));
    const elapsed = performance.now() - started;
    expect(device.paths?.map((p) => p.state)).toEqual(['active', 'active', 'failed']);
    const failed = (device.meta?.['paths'] as Array<Record<string, unknown>>)[2];
    expect(String(failed?.['error'])).toMatch(/127\.0\.0\.3:3260.*(stragglerGraceMs|did not answer)/);
    expect(device.meta?.['degraded']).toBe(true);
    expect(String(device.meta?.['warnings'])).toMatch(/gave up on 1 path/);
    // The grace window is a share of the first login, far below the 15 s portal budget.
    expect(elapsed).toBeLessThan(15_000);
    // Its record stays until iscsid's bound has passed (10 s with the defaults), then goes.
    expect(await env.nodeRecord(IQN, portals[2]!)).toBeDefined();
    await vi.waitFor(async () => expect(await env!.nodeRecord(IQN, portals[2]!)).toBeUndefined(), { timeout: 30_000, interval: 250 });
  });

  it('a path missing from an attach is added by the next attach of the volume, into the same map', async () => {
    const portals = PORTALS.slice(0, 3);
    // The refused login fails at once; the healthy paths are all waited for (a CI run at 5209b21
    // saw the second one cut as a straggler under load, which is not this test's point).
    env = await startSimEnv({ driver: EVERY_PATH, targets: [targetSpec(IQN, portals)] });
    await env.sim.faults.failLogin({ portal: portals[2]!, exitCode: 19, times: 1 });
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000));
    // Each path's error in the message. CI runs under load met a healthy path failed here: the
    // simulated iscsiadm's node listing read a record the refused path's cleanup had just deleted
    // (ENOENT); the listing now skips it (simhost node-db.ts).
    expect(device.paths?.map((p) => p.state), JSON.stringify(device.meta?.['paths'])).toEqual(['active', 'active', 'failed']);
    const again = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000));
    expect(again.path).toBe(device.path);
    expect(again.paths?.map((p) => p.state)).toEqual(['active', 'active', 'active']);
    expect(again.meta?.['degraded']).toBe(false);
    expect((await env.sim.state()).maps[0]?.paths).toHaveLength(3);
    await env.driver.disconnect(listConnection(IQN, 1, portals), again, { force: false, ...call(60_000) });
    await expectNothingLeft(env);
  });

  it('a portal iscsid is still logging in to (an abandoned attempt): waited for within the budget, then a clear error', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)], driver: { portalTimeoutMs: 2_500 } });
    await env.sim.faults.unreachablePortal(portals[1]!, 60_000);
    const first = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000));
    await env.driver.disconnect(listConnection(IQN, 1, portals), first, { force: false, ...call() });
    // The first login to the dead portal is still running in iscsid: a new one answers rc 15.
    const second = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000));
    expect(second.paths?.map((p) => p.state)).toEqual(['active', 'failed']);
    const error = String((second.meta?.['paths'] as Array<Record<string, unknown>>)[1]?.['error']);
    expect(error).toMatch(/still logging in/);
    expect(await env.nodeRecord(IQN, portals[1]!)).toBeUndefined();
  });

  it('every portal unreachable: a clear error within the portal budget, nothing left behind', async () => {
    const portals = PORTALS.slice(0, 2);
    // iscsid's bound on the logins, 1 s: the records the given-up logins keep go soon after.
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)], driver: { portalTimeoutMs: 800, loginTimeoutSeconds: 1, loginRetryMax: 1 } });
    for (const p of portals) await env.sim.faults.unreachablePortal(p, 20_000);
    const started = performance.now();
    const error = await failureOf(env.driver.connect(listConnection(IQN, 1, portals), call()));
    expect(performance.now() - started).toBeLessThan(6_000);
    expect(error.code).toBe('TIMEOUT');
    expect(error.message).toMatch(/none of the 2 path\(s\)/);
    for (const p of portals) expect(error.message).toContain(p);
    expect(error.hint).toMatch(/reachable/);
    await vi.waitFor(async () => expect(await env!.nodeRecords()).toEqual([]), { timeout: 20_000, interval: 250 });
    await expectNothingLeft(env);
  });

  it('a portal refusing the login (rc 19) is a failed path, the others carry the volume', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
    await env.sim.faults.failLogin({ portal: portals[1]!, exitCode: 19 });
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call());
    expect(device.paths?.map((p) => p.state)).toEqual(['active', 'failed']);
    expect((await env.sim.state()).logins.find((l) => l.portal === portals[1])?.attempts).toBe(1);
  });
});

describe('multipathd down', () => {
  it('with enforceMultipath: HOST_UNSUPPORTED with the fix, no login, nothing left', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)], driver: { enforceMultipath: true } });
    await env.sim.faults.stopMultipathd();
    const error = await failureOf(env.driver.connect(listConnection(IQN, 1, portals), call()));
    expect(error.code).toBe('HOST_UNSUPPORTED');
    expect(error.message).toMatch(/multipathd is not running/);
    expect(error.hint).toMatch(/systemctl enable --now multipathd/);
    expect(env.loginRuns()).toBe(0);
    await expectNothingLeft(env);
  });

  it('with enforce_multipath in the connector the pipeline passes: the same clear error', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
    await env.sim.faults.stopMultipathd();
    const context = { ...call(), connector: { host: 'h', multipath: true, enforce_multipath: true } } as TransportCallContext;
    expect((await failureOf(env.driver.connect(listConnection(IQN, 1, portals), context))).code).toBe('HOST_UNSUPPORTED');
    await expectNothingLeft(env);
  });

  it('without enforce: one path as /dev/sdX, with a warning in the log, the paths and meta; detach cleans up', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
    await env.sim.faults.stopMultipathd();
    const volumeId = randomUUID();
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(30_000, volumeId));
    expect(device.path).toMatch(/^\/dev\/sd[a-z]+$/);
    expect(device.multipath_id).toBeUndefined();
    expect(device.meta?.['mode']).toBe('single');
    expect(String(device.meta?.['warnings'])).toMatch(/multipathd is not running/);
    expect(device.paths?.map((p) => [p.portal, p.state])).toEqual([
      [portals[0], 'active'],
      [portals[1], 'unused'],
    ]);
    expect(env.logs.some((l) => l.level === 'warn' && /degrading to one path/.test(l.msg ?? ''))).toBe(true);
    const state = await env.sim.state();
    expect(state.sessions).toHaveLength(1);
    expect(state.maps).toEqual([]);
    expect(env.loginRuns()).toBe(1);
    await env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call(30_000, volumeId) });
    await expectNothingLeft(env);
  });
});

describe('WWN checks', () => {
  it('a path whose LUN has another WWN is refused: not in the map, its disk and session removed', async () => {
    const portals = PORTALS.slice(0, 2);
    // Portal 2 serves another volume's target, and the connection says it is this volume's.
    env = await startSimEnv({ targets: [targetSpec(IQN, [portals[0]!]), targetSpec(OTHER, [portals[1]!])] });
    const connection = listConnection(IQN, 1, portals, { target_iqns: [IQN, OTHER] });
    const device = await env.driver.connect(connection, call());
    const wwn = wwnOf(await wwidOf(env, IQN, 1));
    expect(device.scsi_wwn).toBe(wwn);
    expect(device.paths?.map((p) => [p.portal, p.state])).toEqual([
      [portals[0], 'active'],
      [portals[1], 'refused'],
    ]);
    expect(String((device.meta?.['paths'] as Array<Record<string, unknown>>)[1]?.['error'])).toMatch(/another LUN/);
    const state = await env.sim.state();
    expect(state.maps).toHaveLength(1);
    expect(state.maps[0]?.paths).toHaveLength(1);
    expect(state.sessions.map((s) => s.iqn)).toEqual([IQN]);
    expect(state.devices).toHaveLength(1);
    expect(await env.nodeRecord(OTHER, portals[1]!)).toBeUndefined();
    expect(env.logs.some((l) => l.level === 'error' && /another WWN/.test(l.msg ?? ''))).toBe(true);
  });
});

describe('disconnect', () => {
  it('after one path died: everything that exists is removed', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
    const volumeId = randomUUID();
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(30_000, volumeId));
    const dead = (await env.sim.state()).sessions.find((s) => s.portal === portals[1]);
    await env.sim.faults.loseSession(dead!.sid);
    const paths = await env.driver.paths!(listConnection(IQN, 1, portals), device);
    expect(paths.map((p) => [p.portal, p.state])).toEqual([
      [portals[0], 'active'],
      [portals[1], 'failed/blocked'],
    ]);
    await env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call(30_000, volumeId) });
    await expectNothingLeft(env);
  });

  it('what it could not remove is reported, and everything else is removed', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
    const volumeId = randomUUID();
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(30_000, volumeId));
    const dead = (await env.sim.state()).sessions.find((s) => s.portal === portals[1]);
    await env.sim.faults.loseSession(dead!.sid);
    // The logout through the dead portal fails (iscsid cannot reach the target).
    await env.sim.faults.failTool({ tool: 'iscsiadm', args: ['-p', portals[1]!, '--logout'], exitCode: 10, stderr: 'iscsiadm: Could not logout of [sid: 2, target: x, portal: y].\n' });
    const error = await failureOf(env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: true, ...call(30_000, volumeId) }));
    expect(error.message).toContain(`log out of ${portals[1]}`);
    expect(error.message).toMatch(/1 error/);
    const state = await env.sim.state();
    expect(state.maps).toEqual([]);
    expect(state.devices).toEqual([]);
    expect(state.sessions.map((s) => s.portal)).toEqual([portals[1]]);
    // The state stays for a retry, which then finishes the job.
    expect(await env.stateFile(volumeId)).toBeDefined();
    await env.sim.faults.clear();
    await env.driver.disconnect(listConnection(IQN, 1, portals), undefined, { force: false, ...call(30_000, volumeId) });
    await expectNothingLeft(env);
    expect(await env.stateFile(volumeId)).toBeUndefined();
  });

  it('a map that is held open: without force nothing is removed; with force the paths go and the map is reported', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)], driver: { flushAttempts: 2, flushRetryDelayMs: 10 } });
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call());
    const map = (await env.sim.state()).maps[0]!;
    await env.sim.faults.holdMapOpen(map.name);
    const kept = await failureOf(env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: false, ...call() }));
    expect(kept.message).toMatch(/nothing was removed/);
    expect((await env.sim.state()).devices).toHaveLength(2);
    expect((await env.sim.state()).maps).toHaveLength(1);

    const forced = await failureOf(env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: true, ...call() }));
    expect(forced.message).toMatch(/remove multipath map/);
    const state = await env.sim.state();
    expect(state.devices).toEqual([]);
    expect(state.sessions).toEqual([]);
    await env.sim.faults.releaseMap(map.name);
  });

  it('after a restart, from the state file alone', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals)] });
    const volumeId = randomUUID();
    await env.driver.connect(listConnection(IQN, 1, portals), call(30_000, volumeId));
    const restarted = env.restart();
    await restarted.disconnect(discoveryConnection(IQN, 1, portals[0]!), undefined, { force: false, ...call(30_000, volumeId) });
    await expectNothingLeft(env);
  });

  it('keeps a session another LUN still uses', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 2)] });
    const one = await env.driver.connect(listConnection(IQN, 1, portals), call());
    const two = await env.driver.connect(listConnection(IQN, 2, portals), call());
    expect((await env.sim.state()).maps).toHaveLength(2);
    expect(env.loginRuns()).toBe(2);
    await env.driver.disconnect(listConnection(IQN, 1, portals), one, { force: false, ...call() });
    const state = await env.sim.state();
    expect(state.sessions).toHaveLength(2);
    expect(state.maps.map((m) => `/dev/${m.dm}`)).toEqual([two.path]);
    await env.driver.disconnect(listConnection(IQN, 2, portals), two, { force: false, ...call() });
    await expectNothingLeft(env);
  });
});

describe('map formation', () => {
  it('multipathd that misses the new disks: berth hands them over with multipath -a and add path', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ driver: EVERY_PATH, targets: [targetSpec(IQN, portals)] });
    await env.sim.faults.multipathdMissesNewPaths(true);
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call());
    expect(device.paths?.map((p) => p.state)).toEqual(['active', 'active']);
    expect(env.runs.some((r) => r[0] === 'multipath' && r[1] === '-a')).toBe(true);
    expect(env.runs.filter((r) => r[0] === 'multipathd' && r[1] === 'add').length).toBe(2);
  });

  it('find_multipaths greedy in /etc/multipath.conf: check() says so, and the map is used as multipathd makes it', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ driver: EVERY_PATH, targets: [targetSpec(IQN, portals)] });
    await env.host.fs.mkdir('/etc');
    await env.host.fs.writeFile('/etc/multipath.conf', 'defaults {\n    find_multipaths greedy\n    user_friendly_names no\n}\n');
    const check = await env.driver.check();
    expect(check.summary).toMatch(/find_multipaths greedy/);
    expect(check.checks?.find((c) => c.name === 'find_multipaths policy')?.detail).toMatch(/multipathd maps every path by itself/);
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call());
    expect(device.paths?.map((p) => p.state)).toEqual(['active', 'active']);
    expect((await env.sim.state()).maps).toHaveLength(1);
  });

  it('connects LUNs of one target concurrently: one login per portal, one map per LUN', async () => {
    const portals = PORTALS.slice(0, 2);
    env = await startSimEnv({ driver: EVERY_PATH, targets: [targetSpec(IQN, portals, 4)] });
    const devices = await Promise.all([1, 2, 3, 4].map((lun) => env!.driver.connect(listConnection(IQN, lun, portals), call(60_000))));
    expect(new Set(devices.map((d) => d.path)).size).toBe(4);
    const state = await env.sim.state();
    expect(state.maps).toHaveLength(4);
    expect(state.sessions).toHaveLength(2);
    expect(state.logins.map((l) => l.succeeded)).toEqual([1, 1]);
    for (const d of devices) expect(d.paths?.map((p) => p.state)).toEqual(['active', 'active']);
  });
});

describe('check()', () => {
  it('says multipathd runs and which find_multipaths policy applies; when it stops, says how to start it', async () => {
    env = await startSimEnv();
    const ok = await env.driver.check();
    expect(ok.ok).toBe(true);
    expect(ok.summary).toMatch(/multipathd running/);
    expect(ok.summary).toMatch(/find_multipaths strict/);
    expect(ok.summary).not.toContain('\n');
    await env.sim.faults.stopMultipathd();
    const down = await env.driver.check();
    expect(down.ok).toBe(false);
    expect(down.summary).toMatch(/multipathd running: no/);
    expect(down.fix).toMatch(/systemctl enable --now multipathd/);
  });
});
