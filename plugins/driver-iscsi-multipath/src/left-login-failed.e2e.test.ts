import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { callContext as call, failureOf } from '@berth/iscsi/testing';
import { listConnection, PORTALS, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// A multipath connect that fails outright (no path up) while iscsid still carries one path's
// login on: the process that gave it up may exit (a CLI) or be killed before iscsid's bound, so
// its in-memory watcher never finishes it. What it left must be in the volume's attach state, for
// the rollback's disconnect or reconcile's `connected()` in another process to finish.

// The process that connects exits at once: its watcher of the given-up logins never runs.
vi.mock('@berth/iscsi', async (importOriginal) => ({ ...(await importOriginal<typeof import('@berth/iscsi')>()), watchLeftLogins: () => undefined }));

const IQN = 'iqn.2026-01.test.berth:mp-left-failed';
const portals: [string, string] = [PORTALS[0], PORTALS[1]];

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.sim.faults.releaseLogins().catch(() => undefined);
  await env?.dispose();
  env = undefined;
});

/** The sessions and node record of `IQN` at `portal`. */
async function leftAt(current: SimEnv, portal: string): Promise<{ sessions: number; record: boolean }> {
  const sessions = (await current.sim.state()).sessions.filter((s) => s.iqn === IQN && s.portal === portal).length;
  return { sessions, record: (await current.nodeRecord(IQN, portal)) !== undefined };
}

/** How many logins to `portal` made a session. */
async function succeededAt(current: SimEnv, portal: string): Promise<number> {
  return (await current.sim.state()).logins.find((l) => l.iqn === IQN && l.portal === portal)?.succeeded ?? 0;
}

/** A connect of LUN 1 over both portals that fails: the first refuses its login, the second's is held past the call's deadline. */
async function failedConnect(current: SimEnv, volumeId: string): Promise<void> {
  await current.sim.faults.failLogin({ portal: portals[0], exitCode: 19 });
  await current.sim.faults.holdLogins({ portal: portals[1], iqn: IQN });
  // No path came up: the connect fails (the held one cut at the call's deadline).
  await failureOf(current.driver.connect(listConnection(IQN, 1, portals), call(2_000, volumeId)));
  // iscsiadm was killed; iscsid was not: its record stays, and the state says what is left.
  expect((await current.sim.state()).heldLogins).toBe(1);
  expect(await current.nodeRecord(IQN, portals[1])).toBeDefined();
  expect(await current.stateFile(volumeId)).toMatchObject({ volumeId, left_logins: [{ target_iqn: IQN, target_portal: portals[1], target_lun: 1 }] });
  expect((await current.stateFile(volumeId))?.['device']).toBeUndefined();
}

describe('a multipath connect that failed while a login was still alive', { timeout: 120_000 }, () => {
  it('reconcile\'s look (connected()) in a restarted berth finishes the login once its session is up: logged out, record deleted, state gone', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    const volumeId = randomUUID();
    await failedConnect(env, volumeId);

    // A restarted berth looks while iscsid is still logging in: nothing to finish yet, the record stays.
    const restarted = env.restart();
    expect(await restarted.connected!()).toEqual([]);
    expect(await leftAt(env, portals[1])).toEqual({ sessions: 0, record: true });
    expect(await env.stateFile(volumeId)).toMatchObject({ left_logins: [{ target_portal: portals[1] }] });

    // The target answers at last: a session with no disk, owned by nobody until reconcile looks.
    await env.sim.faults.releaseLogins();
    await vi.waitFor(async () => expect(await succeededAt(env!, portals[1])).toBe(1), { timeout: 20_000 });
    expect(await restarted.connected!()).toEqual([]);
    expect(await leftAt(env, portals[1])).toEqual({ sessions: 0, record: false });
    expect(await env.stateFile(volumeId)).toBeUndefined();
    const after = await env.sim.state();
    expect([after.sessions, after.devices, after.maps]).toEqual([[], [], []]);
    expect(await env.nodeRecords()).toEqual([]);
  });

  it('the rollback\'s disconnect in a restarted berth waits for the login without deleting its record; the session that comes during it is logged out, the state forgotten', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    const volumeId = randomUUID();
    await failedConnect(env, volumeId);

    let settled = false;
    const rollback = env.restart().disconnect(listConnection(IQN, 1, portals), undefined, { force: true, ...call(60_000, volumeId) });
    void rollback.finally(() => (settled = true)).catch(() => undefined);
    await vi.waitFor(() => expect(env!.logs.filter((l) => l.msg?.startsWith('waiting for a given-up login') === true)).toHaveLength(1), { timeout: 20_000 });
    // iscsid still logs in with the record: it stays until the login ends.
    expect(settled).toBe(false);
    expect(await leftAt(env, portals[1])).toEqual({ sessions: 0, record: true });

    await env.sim.faults.releaseLogins();
    await rollback;
    expect(await succeededAt(env, portals[1])).toBe(1);
    expect(await leftAt(env, portals[1])).toEqual({ sessions: 0, record: false });
    expect(await env.stateFile(volumeId)).toBeUndefined();
    const after = await env.sim.state();
    expect([after.sessions, after.devices, after.maps]).toEqual([[], [], []]);
    expect(await env.nodeRecords()).toEqual([]);
  });
});
