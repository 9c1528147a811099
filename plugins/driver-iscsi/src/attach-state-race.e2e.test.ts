import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { callContext as call, failureOf } from '@berth/iscsi/testing';
import { connectionFor, PORTAL, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// One volume's attach state written by two operations of the transport that hold different LUN
// locks: a connect at target B (a retry whose connection_info names another target than an
// earlier, failed attach at target A) and what happens at A meanwhile — a failed connect keeping
// a login iscsid carries on, the watcher forgetting one it finished. Each read-modify-write of the
// state file must see the other's: the connect used to write back the state it read before its
// login, and the last writer won.
//
// B's connect is stopped between its login and its disk deterministically: its scan is held (the
// simulated kernel parks it before anything shows in sysfs) until a `delete` is written to a disk
// of another session — the disconnect of a third volume, at target C.

const IQN_A = 'iqn.2026-01.test.berth:race-a';
const IQN_B = 'iqn.2026-01.test.berth:race-b';
const IQN_C = 'iqn.2026-01.test.berth:race-c';

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.sim.faults.clear();
  await env?.dispose();
  env = undefined;
});

interface StateFile {
  device?: string;
  target_iqn?: string;
  left_logins?: Array<{ target_iqn: string }>;
}

async function stateOf(current: SimEnv, volumeId: string): Promise<StateFile | undefined> {
  const text = await current.stateFile(volumeId);
  return text === undefined ? undefined : (JSON.parse(text) as StateFile);
}

/**
 * The volume of `volumeId` connecting at B, parked in its scan (past its login); and volume `other`
 * attached at C, whose disconnect releases that scan.
 */
async function parkConnectAtB(current: SimEnv, volumeId: string): Promise<{ connecting: Promise<unknown>; releaseScan: () => Promise<void> }> {
  const other = randomUUID();
  const disk = await current.driver.connect(connectionFor(IQN_C, 1), call(20_000, other));
  await current.sim.faults.holdScans({ iqn: IQN_B, lun: 1 });
  const connecting = current.driver.connect(connectionFor(IQN_B, 1), call(40_000, volumeId));
  connecting.catch(() => undefined);
  await vi.waitFor(async () => expect((await current.sim.state()).heldScans).toBe(1), { timeout: 15_000 });
  return {
    connecting,
    releaseScan: () => current.driver.disconnect(connectionFor(IQN_C, 1), disk, { force: false, ...call(20_000, other) }),
  };
}

describe('one volume\'s state written under two targets\' locks at once', { timeout: 90_000 }, () => {
  it('a login a failed connect at A kept while a connect at B was past its login stays in the state B\'s connect writes', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN_A, 1), targetSpec(IQN_B, 1), targetSpec(IQN_C, 1)], driver: { deviceTimeoutMs: 30_000 } });
    const volumeId = randomUUID();
    const b = await parkConnectAtB(env, volumeId);

    // Meanwhile an attach of the same volume at A fails with its login given up to iscsid (held:
    // it stays pending, so no watcher forgets it during the test).
    await env.sim.faults.holdLogins({ portal: PORTAL, iqn: IQN_A });
    expect((await failureOf(env.driver.connect(connectionFor(IQN_A, 1), call(1_500, volumeId)))).code).toBe('TIMEOUT');
    expect((await stateOf(env, volumeId))?.left_logins?.map((l) => l.target_iqn)).toEqual([IQN_A]);

    await b.releaseScan();
    await b.connecting;
    // B's connect wrote its device on the state as it is now: A's left login is still there for a
    // detach or reconcile to finish. (It wrote the state it had read before its login, with no left
    // login: A's was lost, and a session iscsid brings up at A would have been owned by nobody.)
    const state = await stateOf(env, volumeId);
    expect(state).toMatchObject({ target_iqn: IQN_B, device: expect.stringMatching(/^\/dev\/sd/) as unknown });
    expect(state?.left_logins?.map((l) => l.target_iqn)).toEqual([IQN_A]);
  });

  it('a login at A the watcher finished while a connect at B was past its login is not written back by B\'s connect', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN_A, 1), targetSpec(IQN_B, 1), targetSpec(IQN_C, 1)], driver: { deviceTimeoutMs: 30_000 } });
    const volumeId = randomUUID();
    // An attach at A failed with its login given up to iscsid: the state holds only that login.
    await env.sim.faults.holdLogins({ portal: PORTAL, iqn: IQN_A });
    expect((await failureOf(env.driver.connect(connectionFor(IQN_A, 1), call(1_500, volumeId)))).code).toBe('TIMEOUT');
    expect((await stateOf(env, volumeId))?.left_logins?.map((l) => l.target_iqn)).toEqual([IQN_A]);

    // The retry at B is past its login; then A's login comes up and this process's watcher
    // finishes it (logged out, record deleted) and forgets it: the state, with nothing else, goes.
    const b = await parkConnectAtB(env, volumeId);
    await env.sim.faults.releaseLogins();
    await vi.waitFor(async () => expect(await env!.stateFile(volumeId)).toBeUndefined(), { timeout: 30_000 });
    expect((await env.sim.state()).sessions.filter((s) => s.iqn === IQN_A)).toHaveLength(0);

    await b.releaseScan();
    await b.connecting;
    // The state is B's device alone. (B's connect wrote back the login at A it had read before its
    // login: a finished login named again, for a later detach to "finish" at a target it no
    // longer owns — logging out a session of A another attach may have made since.)
    const state = await stateOf(env, volumeId);
    expect(state).toMatchObject({ target_iqn: IQN_B, device: expect.stringMatching(/^\/dev\/sd/) as unknown });
    expect(state?.left_logins).toBeUndefined();
  });

  it('a detach at A that finished A\'s left login while a connect at B recorded its device keeps B\'s device record', async () => {
    // iscsid's bound 5 s × 2 on the record: the detach's wait for A's login is bounded by it.
    env = await startSimEnv({ targets: [targetSpec(IQN_A, 1), targetSpec(IQN_B, 1)], driver: { loginTimeoutSeconds: 5, loginRetryMax: 2 } });
    const volumeId = randomUUID();
    await env.sim.faults.holdLogins({ portal: PORTAL, iqn: IQN_A });
    expect((await failureOf(env.driver.connect(connectionFor(IQN_A, 1), call(1_500, volumeId)))).code).toBe('TIMEOUT');

    // The rollback's detach at A waits (under A's lock) for the login iscsid still carries on.
    const detaching = env.driver.disconnect(connectionFor(IQN_A, 1), undefined, { force: true, ...call(30_000, volumeId) });
    detaching.catch(() => undefined);
    // Two waits: this process's watcher, and the detach.
    await vi.waitFor(() => expect(env!.logs.filter((l) => l.msg?.startsWith('waiting for a given-up login') === true)).toHaveLength(2), { timeout: 20_000 });

    // Meanwhile the volume is attached at B (under B's lock): its device is recorded.
    const device = await env.driver.connect(connectionFor(IQN_B, 1), call(20_000, volumeId));
    expect((await stateOf(env, volumeId))?.device).toBe(device.path);

    // A's login comes up; the detach logs it out and is done with what it read: the left login.
    await env.sim.faults.releaseLogins();
    await detaching;
    expect((await env.sim.state()).sessions.map((s) => s.iqn)).toEqual([IQN_B]);
    // B's device record stays, for B's detach after a restart. (The detach removed the state file:
    // the volume's disk at B was then recorded nowhere.)
    const state = await stateOf(env, volumeId);
    expect(state).toMatchObject({ target_iqn: IQN_B, device: device.path });
    expect(state?.left_logins).toBeUndefined();
  });
});
