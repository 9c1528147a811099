import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { redactConnectionInfo, type Device, type TransportCallContext } from '@berth/core';
import { callContext, failureOf } from '@berth/iscsi/testing';
import { connectionFor, existsUnder, PORTAL, startSimEnv, targetSpec, wwnOf, type SimEnv } from './test-sim-env.js';

const call = (timeoutMs = 20_000, volumeId?: string): TransportCallContext => callContext(timeoutMs, volumeId);

// The driver against berth's simulated host: the kernel's sysfs and /dev, open-iscsi's iscsiadm
// and its node database, a model SAN behind the sessions. What is checked is what a user would
// look at: sessions and devices in the kernel, `iscsiadm -m node`, the device node, the state file.

const IQN = 'iqn.2026-01.test.berth:vol1';

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

async function wwidOf(current: SimEnv, iqn: string, lun: number): Promise<string> {
  const target = (await current.sim.san.targets()).find((t) => t.iqn === iqn);
  const info = target?.luns.find((l) => l.lun === lun);
  if (info === undefined) throw new Error(`no LUN ${lun} on ${iqn}`);
  return info.wwid;
}

/** Nothing of `iqn` is left on the host: no session, no device, no node record. */
async function expectNothingLeft(current: SimEnv): Promise<void> {
  const state = await current.sim.state();
  expect(state.sessions).toEqual([]);
  expect(state.devices).toEqual([]);
  expect(await current.nodeRecords()).toEqual([]);
}

describe('connect and disconnect', () => {
  it('logs in fresh, scans one LUN, returns its device and WWN, and persists the attach state without secrets', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const volumeId = randomUUID();
    const device = await env.driver.connect(connectionFor(IQN, 1), call(20_000, volumeId));

    expect(device.path).toMatch(/^\/dev\/sd[a-z]+$/);
    expect(await existsUnder(env.host, device.path)).toBe(true);
    expect(device.scsi_wwn).toBe(wwnOf(await wwidOf(env, IQN, 1)));
    const state = await env.sim.state();
    expect(state.sessions).toHaveLength(1);
    const session = state.sessions[0]!;
    expect(device.meta).toEqual({ iqn: IQN, portal: PORTAL, lun: 1, sid: session.sid, hctl: `${session.host}:0:0:1` });
    // Targeted scan: only LUN 1 has a device (scan=manual kept the login from scanning the rest).
    // Its node exists (checked above); udev's links may still be on their way, as on a real host,
    // so `present` (node + links) is not asserted here.
    expect(state.devices.map((d) => ({ name: `/dev/${d.name}`, lun: d.lun }))).toEqual([{ name: device.path, lun: 1 }]);

    const record = await env.nodeRecord(IQN, PORTAL);
    expect(record?.['node.session.scan']).toBe('manual');
    expect(record?.['node.startup']).toBe('automatic');
    expect(record?.['iface.iscsi_ifacename']).toBe('default');

    const saved = JSON.parse((await env.stateFile(volumeId)) ?? '{}') as Record<string, unknown>;
    expect(saved).toMatchObject({ volumeId, device: device.path, target_iqn: IQN, target_portal: PORTAL, target_lun: 1, sid: session.sid, scsi_wwn: device.scsi_wwn });

    await env.driver.disconnect(connectionFor(IQN, 1), device, { force: false, ...call(20_000, volumeId) });
    await expectNothingLeft(env);
    expect(await existsUnder(env.host, device.path)).toBe(false);
    expect(await env.stateFile(volumeId)).toBeUndefined();
  });

  it('sets node.startup to what the options say', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)], driver: { startup: 'manual' } });
    await env.driver.connect(connectionFor(IQN, 1), call());
    expect((await env.nodeRecord(IQN, PORTAL))?.['node.startup']).toBe('manual');
  });

  it('is idempotent: a second connect returns the same device without a login or a scan', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const first = await env.driver.connect(connectionFor(IQN, 1), call());
    const runsBefore = env.runs.length;
    const second = await env.driver.connect(connectionFor(IQN, 1), call());
    expect(second).toEqual(first);
    expect(env.runs.length).toBe(runsBefore);
    expect((await env.sim.state()).devices).toHaveLength(1);
  });

  it('reuses the session of a target: one login for N LUNs', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 3)] });
    const devices: Device[] = [];
    for (const lun of [1, 2, 3]) devices.push(await env.driver.connect(connectionFor(IQN, lun), call()));
    const state = await env.sim.state();
    expect(state.sessions).toHaveLength(1);
    expect(env.logins()).toBe(1);
    expect(new Set(devices.map((d) => d.path)).size).toBe(3);
    expect(devices.map((d) => d.meta?.['sid'])).toEqual([1, 1, 1]);
    expect(state.devices.map((d) => d.lun)).toEqual([1, 2, 3]);
  });

  it('keeps the session while another LUN uses it, and logs out after the last', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 2)] });
    const one = await env.driver.connect(connectionFor(IQN, 1), call());
    const two = await env.driver.connect(connectionFor(IQN, 2), call());

    await env.driver.disconnect(connectionFor(IQN, 1), one, { force: false, ...call() });
    let state = await env.sim.state();
    expect(state.sessions).toHaveLength(1);
    expect(state.devices.map((d) => `/dev/${d.name}`)).toEqual([two.path]);
    expect(await existsUnder(env.host, one.path)).toBe(false);
    expect(await existsUnder(env.host, two.path)).toBe(true);
    expect(await env.nodeRecords()).toHaveLength(1);

    await env.driver.disconnect(connectionFor(IQN, 2), two, { force: false, ...call() });
    state = await env.sim.state();
    await expectNothingLeft(env);
  });

  it('disconnect of something never connected succeeds, with and without force', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    await env.driver.disconnect(connectionFor(IQN, 1), undefined, { force: false, ...call() });
    await env.driver.disconnect(connectionFor(IQN, 1), undefined, { force: true, ...call() });
    await expectNothingLeft(env);
  });

  it('refuses a connection_info with missing keys before touching the host', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const error = await failureOf(env.driver.connect({ driver_volume_type: 'iscsi', data: { target_portal: PORTAL, target_lun: 1 } }, call()));
    expect(error.code).toBe('VALIDATION');
    expect(error.message).toContain('data.target_iqn is missing');
    expect(env.runs).toEqual([]);
  });
});

describe('CHAP', () => {
  const CHAP = { username: 'chapuser', password: 'Chap-Secret-12' };
  const MUTUAL = { username: 'chaptarget', password: 'Mutual-Secret-34' };

  it('logs in with session CHAP; the password is stored only in open-iscsi\'s record, masked in its output', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1, { chap: CHAP })] });
    const volumeId = randomUUID();
    const connection = connectionFor(IQN, 1, { auth_method: 'CHAP', auth_username: CHAP.username, auth_password: CHAP.password });
    const device = await env.driver.connect(connection, call(20_000, volumeId));
    expect(await existsUnder(env.host, device.path)).toBe(true);
    const record = await env.nodeRecord(IQN, PORTAL);
    expect(record?.['node.session.auth.authmethod']).toBe('CHAP');
    expect(record?.['node.session.auth.username']).toBe(CHAP.username);
    expect(record?.['node.session.auth.password']).toBe('********');
    expect(await env.stateFile(volumeId)).not.toContain(CHAP.password);
    expect(JSON.stringify(device)).not.toContain(CHAP.password);
    // Detach gets the connection_info berth stored: without its passwords.
    await env.driver.disconnect(redactConnectionInfo(connection), device, { force: false, ...call(20_000, volumeId) });
    await expectNothingLeft(env);
  });

  it('logs in with mutual CHAP', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1, { chap: CHAP, mutualChap: MUTUAL })] });
    const connection = connectionFor(IQN, 1, {
      auth_method: 'CHAP',
      auth_username: CHAP.username,
      auth_password: CHAP.password,
      auth_username_in: MUTUAL.username,
      auth_password_in: MUTUAL.password,
    });
    const device = await env.driver.connect(connection, call());
    expect(await existsUnder(env.host, device.path)).toBe(true);
    const record = await env.nodeRecord(IQN, PORTAL);
    expect(record?.['node.session.auth.username_in']).toBe(MUTUAL.username);
    expect(record?.['node.session.auth.password_in']).toBe('********');
  });

  it('a wrong password fails with AUTH_FAILED after one login, leaving no node record and no session', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1, { chap: CHAP })] });
    const connection = connectionFor(IQN, 1, { auth_method: 'CHAP', auth_username: CHAP.username, auth_password: 'Wrong-Secret-99' });
    const error = await failureOf(env.driver.connect(connection, call()));
    expect(error.code).toBe('AUTH_FAILED');
    expect(error.message).toContain(`connecting LUN 1 of ${IQN} at ${PORTAL}`);
    expect(error.hint).toMatch(/CHAP/);
    expect(JSON.stringify({ message: error.message, details: error.details, hint: error.hint })).not.toContain('Wrong-Secret-99');
    expect(env.logins()).toBe(1);
    await expectNothingLeft(env);
  });

  it('a target answering mutual CHAP with the wrong secret fails with AUTH_FAILED and leaves nothing', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1, { chap: CHAP, mutualChap: { username: MUTUAL.username, password: 'Other-Secret-56' } })] });
    const connection = connectionFor(IQN, 1, {
      auth_method: 'CHAP',
      auth_username: CHAP.username,
      auth_password: CHAP.password,
      auth_username_in: MUTUAL.username,
      auth_password_in: MUTUAL.password,
    });
    expect((await failureOf(env.driver.connect(connection, call()))).code).toBe('AUTH_FAILED');
    expect(env.logins()).toBe(1);
    await expectNothingLeft(env);
  });

  it('a record that was there before survives a failed login (it was not this connect\'s)', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1, { chap: CHAP })] });
    await env.host.runner.run('iscsiadm', ['-m', 'node', '-T', IQN, '-p', PORTAL, '--interface', 'default', '--op', 'new'], { timeoutMs: 10_000 });
    const connection = connectionFor(IQN, 1, { auth_method: 'CHAP', auth_username: CHAP.username, auth_password: 'Wrong-Secret-99' });
    expect((await failureOf(env.driver.connect(connection, call()))).code).toBe('AUTH_FAILED');
    expect(await env.nodeRecords()).toHaveLength(1);
    expect((await env.sim.state()).sessions).toEqual([]);
  });

  describe('discovery CHAP', () => {
    const DISCOVERY = { username: 'discoverer', password: 'Disc-Secret-78' };

    it('checks the target is offered through SendTargets with discovery CHAP, then logs in; no discovery record stays', async () => {
      env = await startSimEnv({ targets: [targetSpec(IQN, 1), targetSpec('iqn.2026-01.test.berth:other', 1)] });
      await env.sim.san.setDiscoveryChap(DISCOVERY);
      const connection = connectionFor(IQN, 1, {
        discovery_auth_method: 'CHAP',
        discovery_auth_username: DISCOVERY.username,
        discovery_auth_password: DISCOVERY.password,
      });
      const device = await env.driver.connect(connection, call());
      expect(await existsUnder(env.host, device.path)).toBe(true);
      // nonpersistent discovery: only this target's static record, no record for the other target.
      // (a record made with --op new has no tag: iscsiadm prints -1 as 4294967295)
      expect(await env.nodeRecords()).toEqual([`${PORTAL},4294967295 ${IQN}`]);
      const discoverydb = await env.host.runner.run('iscsiadm', ['-m', 'discoverydb'], { reject: false, timeoutMs: 10_000 });
      expect(discoverydb.stdout).not.toContain('127.0.0.1,3260');
    });

    it('a wrong discovery password fails with AUTH_FAILED and leaves nothing', async () => {
      env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
      await env.sim.san.setDiscoveryChap(DISCOVERY);
      const connection = connectionFor(IQN, 1, {
        discovery_auth_method: 'CHAP',
        discovery_auth_username: DISCOVERY.username,
        discovery_auth_password: 'Wrong-Disc-00',
      });
      const error = await failureOf(env.driver.connect(connection, call()));
      expect(error.code).toBe('AUTH_FAILED');
      expect(error.message).not.toContain('Wrong-Disc-00');
      expect(env.logins()).toBe(0);
      await expectNothingLeft(env);
    });

    it('a target the portal does not offer fails with NOT_FOUND before any login', async () => {
      env = await startSimEnv({ targets: [targetSpec('iqn.2026-01.test.berth:other', 1)] });
      await env.sim.san.setDiscoveryChap(DISCOVERY);
      const connection = connectionFor(IQN, 1, {
        discovery_auth_method: 'CHAP',
        discovery_auth_username: DISCOVERY.username,
        discovery_auth_password: DISCOVERY.password,
      });
      const error = await failureOf(env.driver.connect(connection, call()));
      expect(error.code).toBe('NOT_FOUND');
      expect(error.message).toContain(`does not offer ${IQN}`);
      expect(env.logins()).toBe(0);
      await expectNothingLeft(env);
    });
  });
});

describe('failures and deadlines', () => {
  it('an unreachable portal is retried by iscsid (the record\'s bound), not by more iscsiadm runs, then fails within the deadline, leaving nothing', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)], driver: { loginRetries: 2 } });
    await env.sim.faults.unreachablePortal(PORTAL, 200);
    const started = Date.now();
    const error = await failureOf(env.driver.connect(connectionFor(IQN, 1), call(10_000)));
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(error.code).toBe('TIMEOUT');
    expect(error.message).toMatch(/exit 8/);
    // iscsid tried initial_login_retry_max (2) times itself: a network failure is not run again.
    expect(env.logins()).toBe(1);
    await expectNothingLeft(env);
  });

  it('the operation\'s deadline cuts the login short: the error comes at the deadline; the record stays while iscsid may still log in, then nothing is left', async () => {
    // iscsid's bound: 1 s × 2 attempts, each running its whole timer on the dead portal.
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)], driver: { loginRetries: 20, loginTimeoutSeconds: 1, loginRetryMax: 2 } });
    await env.sim.faults.unreachablePortal(PORTAL, 1_000);
    const started = Date.now();
    const error = await failureOf(env.driver.connect(connectionFor(IQN, 1), call(800)));
    expect(error.code).toBe('TIMEOUT');
    // The deadline, plus the undo (one logout, which finds no session yet).
    expect(Date.now() - started).toBeLessThan(800 + 2_000);
    expect(env.logins()).toBe(1);
    // Once iscsid's bound passed, this process deletes the record it kept.
    await vi.waitFor(() => expectNothingLeft(env!), { timeout: 10_000 });
  });

  it('a target that refuses this initiator (rc 19) is not retried', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1, { acl: ['iqn.2026-01.test.berth:someone-else'] })] });
    const error = await failureOf(env.driver.connect(connectionFor(IQN, 1), call()));
    expect(error.code).toBe('UNPROCESSABLE');
    expect(env.logins()).toBe(1);
    await expectNothingLeft(env);
  });

  it('a device slow to appear is still found within the device timeout, after rescans, once', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)], driver: { deviceTimeoutMs: 6_000, scanAttempts: 3 } });
    await env.sim.faults.slowDevice({ iqn: IQN, lun: 1, extraDelayMs: 1_200 });
    const started = Date.now();
    const device = await env.driver.connect(connectionFor(IQN, 1), call());
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_200);
    expect(await existsUnder(env.host, device.path)).toBe(true);
    expect((await env.sim.state()).devices).toHaveLength(1);
  });

  it('a device that never comes fails at the device timeout and is cleaned up (device, session, record)', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)], driver: { deviceTimeoutMs: 700, scanAttempts: 2 } });
    await env.sim.faults.deviceNeverAppears({ iqn: IQN, lun: 1 });
    const started = Date.now();
    const error = await failureOf(env.driver.connect(connectionFor(IQN, 1), call()));
    expect(error.code).toBe('TIMEOUT');
    expect(error.message).toMatch(/did not appear as a block device within 700 ms/);
    expect(Date.now() - started).toBeLessThan(700 + 2_500);
    await expectNothingLeft(env);
  });

  it('a device slower than the operation\'s deadline fails at the deadline, and nothing stays', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    await env.sim.faults.slowDevice({ iqn: IQN, lun: 1, extraDelayMs: 2_000 });
    const error = await failureOf(env.driver.connect(connectionFor(IQN, 1), call(600)));
    expect(error.code).toBe('TIMEOUT');
    await expectNothingLeft(env);
  });

  it('a failed LUN keeps the session another LUN of the target uses', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 2)], driver: { deviceTimeoutMs: 500, scanAttempts: 1 } });
    const one = await env.driver.connect(connectionFor(IQN, 1), call());
    await env.sim.faults.deviceNeverAppears({ iqn: IQN, lun: 2 });
    expect((await failureOf(env.driver.connect(connectionFor(IQN, 2), call()))).code).toBe('TIMEOUT');
    const state = await env.sim.state();
    expect(state.sessions).toHaveLength(1);
    expect(state.devices.map((d) => `/dev/${d.name}`)).toEqual([one.path]);
  });
});

describe('concurrency', () => {
  it('20 concurrent attaches of LUNs of one target: one login, 20 distinct devices with the right LUNs and WWNs', async () => {
    const count = 20;
    env = await startSimEnv({ targets: [targetSpec(IQN, count)] });
    const current = env;
    const luns = Array.from({ length: count }, (_, i) => i + 1);
    const devices = await Promise.all(luns.map((lun) => current.driver.connect(connectionFor(IQN, lun), call(30_000))));

    expect(current.logins()).toBe(1);
    const state = await current.sim.state();
    expect(state.sessions).toHaveLength(1);
    expect(new Set(devices.map((d) => d.path)).size).toBe(count);
    const lunOfDevice = new Map(state.devices.map((d) => [`/dev/${d.name}`, d.lun]));
    for (const [index, device] of devices.entries()) {
      const lun = luns[index]!;
      expect(lunOfDevice.get(device.path)).toBe(lun);
      expect(device.meta?.['lun']).toBe(lun);
      expect(device.scsi_wwn).toBe(wwnOf(await wwidOf(current, IQN, lun)));
    }

    await Promise.all(devices.map((device, index) => current.driver.disconnect(connectionFor(IQN, luns[index]!), device, { force: false, ...call(30_000) })));
    await expectNothingLeft(current);
  });

  it('a connect and a disconnect of two LUNs racing never log out under the connect', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 2)], sim: { deviceDelayMs: 150 } });
    const current = env;
    const one = await current.driver.connect(connectionFor(IQN, 1), call());
    const [two] = await Promise.all([
      current.driver.connect(connectionFor(IQN, 2), call()),
      current.driver.disconnect(connectionFor(IQN, 1), one, { force: false, ...call() }),
    ]);
    const state = await current.sim.state();
    // What ran and what the driver said, when it fails (a CI run under load met LUN 2's disk gone).
    const story = (): string => JSON.stringify({ two: two.path, state, runs: current.runs.map((r) => r.join(' ')), logs: current.logs }, null, 1);
    expect(await existsUnder(current.host, two.path), story()).toBe(true);
    expect(state.sessions).toHaveLength(1);
    expect(state.devices.map((d) => `/dev/${d.name}`)).toEqual([two.path]);
  });
});

describe('restart and forced disconnect', () => {
  it('detaches after a driver restart from the persisted state alone', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const volumeId = randomUUID();
    const device = await env.driver.connect(connectionFor(IQN, 1), call(20_000, volumeId));
    const restarted = env.restart();
    await restarted.disconnect(connectionFor(IQN, 1), undefined, { force: false, ...call(20_000, volumeId) });
    expect(await existsUnder(env.host, device.path)).toBe(false);
    expect(await env.stateFile(volumeId)).toBeUndefined();
    await expectNothingLeft(env);
  });

  it('never deletes another LUN\'s disk when a recorded device name now belongs to it', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 2)] });
    const volumeA = randomUUID();
    const volumeB = randomUUID();
    const a = await env.driver.connect(connectionFor(IQN, 1), call(20_000, volumeA));
    const b = await env.driver.connect(connectionFor(IQN, 2), call(20_000, volumeB));
    const restarted = env.restart();
    // A stale record (or a caller's old device) names B's disk for volume A.
    await restarted.disconnect(connectionFor(IQN, 1), b, { force: false, ...call(20_000, volumeA) });
    expect(await existsUnder(env.host, a.path)).toBe(false);
    expect(await existsUnder(env.host, b.path)).toBe(true);
    const state = await env.sim.state();
    expect(state.sessions).toHaveLength(1);
    expect(state.devices.map((d) => `/dev/${d.name}`)).toEqual([b.path]);
    expect(await env.stateFile(volumeB)).toContain(b.path);
  });

  it('without force a failed flush stops the disconnect and leaves the device', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const device = await env.driver.connect(connectionFor(IQN, 1), call());
    env.fault = (file) => (file === 'blockdev' ? { exitCode: 1, stderr: 'blockdev: cannot flush: Input/output error\n' } : undefined);
    const error = await failureOf(env.driver.disconnect(connectionFor(IQN, 1), device, { force: false, ...call() }));
    expect(error.message).toContain(`flush ${device.path}`);
    expect(await existsUnder(env.host, device.path)).toBe(true);
    expect((await env.sim.state()).sessions).toHaveLength(1);
  });

  it('force goes on through errors, removes what it can and lists every error; a retry finishes the job', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const volumeId = randomUUID();
    const device = await env.driver.connect(connectionFor(IQN, 1), call(20_000, volumeId));
    env.fault = (file, args) => {
      if (file === 'blockdev') return { exitCode: 1, stderr: 'blockdev: cannot flush: Input/output error\n' };
      if (file === 'iscsiadm' && args.includes('--logout')) return { exitCode: 10, stderr: 'iscsiadm: Could not logout of [sid: 1]\n' };
      return undefined;
    };
    const error = await failureOf(env.driver.disconnect(connectionFor(IQN, 1), device, { force: true, ...call(20_000, volumeId) }));
    expect(error.message).toMatch(/finished with 2 error\(s\)/);
    expect(error.message).toContain(`flush ${device.path}`);
    expect(error.message).toContain('log out');
    expect(error.details['errors']).toHaveLength(2);
    // The device is gone despite the flush error; the session stays because the logout failed.
    expect(await existsUnder(env.host, device.path)).toBe(false);
    expect((await env.sim.state()).sessions).toHaveLength(1);
    expect(await env.stateFile(volumeId)).toBeDefined();

    env.fault = undefined;
    await env.driver.disconnect(connectionFor(IQN, 1), undefined, { force: false, ...call(20_000, volumeId) });
    await expectNothingLeft(env);
    expect(await env.stateFile(volumeId)).toBeUndefined();
  });
});

describe('host facts, paths and extend', () => {
  it('connectorProperties() gives the initiator name; check() says the host can use iSCSI', async () => {
    env = await startSimEnv({ sim: { initiatorName: 'iqn.2026-01.test.berth:initiator-a' } });
    expect(await env.driver.connectorProperties()).toEqual({ initiator: 'iqn.2026-01.test.berth:initiator-a' });
    const result = await env.driver.check();
    expect(result.ok).toBe(true);
    expect(result.summary).toMatch(/^iscsi: open-iscsi 2\.1\.8, iscsid running, initiator iqn\.2026-01\.test\.berth:initiator-a$/);
  });

  it('without an initiator name or iscsid, check() says what is missing and how to fix it', async () => {
    env = await startSimEnv();
    await env.host.fs.unlink('/etc/iscsi/initiatorname.iscsi');
    env.fault = (file, args) => (file === 'iscsiadm' && args.join(' ') === '-m session' ? { exitCode: 20, stderr: 'iscsiadm: can not connect to iSCSI daemon (111)!\n' } : undefined);
    expect(await env.driver.connectorProperties()).toEqual({});
    const result = await env.driver.check();
    expect(result.ok).toBe(false);
    expect(result.summary).toContain('iscsid running');
    expect(result.summary).toContain('initiator name set');
    expect(result.summary).not.toContain('\n');
    expect(result.fix).toContain('systemctl start iscsid');
    expect(result.fix).toContain('InitiatorName=');
  });

  it('without iscsiadm, check() says to install open-iscsi', async () => {
    env = await startSimEnv();
    env.fault = (file) => (file === 'iscsiadm' ? { exitCode: -1, notFound: true } : undefined);
    const result = await env.driver.check();
    expect(result.ok).toBe(false);
    expect(result.fix).toContain('apt-get install -y open-iscsi');
  });

  it('paths() shows the one path; extend() rescans the session and returns the new size', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const device = await env.driver.connect(connectionFor(IQN, 1), call());
    expect(await env.driver.paths?.(connectionFor(IQN, 1), device)).toEqual([{ portal: PORTAL, device: device.path, state: 'active' }]);
    await env.sim.san.growLun(IQN, 1, 16 * 1024 * 1024);
    expect(await env.driver.extend?.(connectionFor(IQN, 1), device, call())).toBe(16 * 1024 * 1024);
  });

  it('connected() and paths() say when the disk\'s session is down (blocked: I/O waits) or expired (transport-offline: I/O fails)', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const device = await env.driver.connect(connectionFor(IQN, 1), call());
    const listed = async () => (await env!.driver.connected?.())?.map((c) => c.device.paths);
    expect(await listed()).toEqual([[{ portal: PORTAL, device: device.path, state: 'active' }]]);
    const sid = (await env.sim.state()).sessions[0]!.sid;
    await env.sim.faults.loseSession(sid);
    const down = { portal: PORTAL, device: device.path, state: 'failed', detail: 'session FAILED, disk blocked: its I/O waits for the target' };
    expect(await listed()).toEqual([[down]]);
    expect(await env.driver.paths?.(connectionFor(IQN, 1), device)).toEqual([down]);
    await env.sim.faults.expireSession(sid);
    expect(await listed()).toEqual([[{ ...down, detail: 'session FREE, disk transport-offline: its I/O fails' }]]);
  });

  it('connected() lists the device with the connection\'s own keys', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    const volumeId = randomUUID();
    const device = await env.driver.connect(connectionFor(IQN, 1), call(20_000, volumeId));
    const restarted = env.restart();
    expect(await restarted.connected?.()).toEqual([
      {
        device: expect.objectContaining({ path: device.path, scsi_wwn: device.scsi_wwn }),
        source: { target_iqn: IQN, target_portal: PORTAL, target_lun: 1 },
      },
    ]);
  });
});
