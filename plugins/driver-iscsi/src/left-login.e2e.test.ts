import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { callContext as call, failureOf } from '@berth/iscsi/testing';
import { connectionFor, PORTAL, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// A single-path login whose `iscsiadm --login` was killed (the operation's deadline, the command
// timeout): iscsid carries the login on without it (the simulated host's `heldLogins` keeps it
// alive in its daemon, as iscsid does, and gives it up at `login_timeout × initial_login_retry_max`
// as written on the record). A session that comes up after the connect failed must not stay
// behind, owned by nobody; and iscsid's own bound must end a login before berth kills it.

const IQN = 'iqn.2026-01.test.berth:left';

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

/** The sessions of `IQN` and whether its node record is there. */
async function leftOnHost(current: SimEnv): Promise<{ sessions: number; record: boolean }> {
  const sessions = (await current.sim.state()).sessions.filter((s) => s.iqn === IQN).length;
  return { sessions, record: (await current.nodeRecord(IQN, PORTAL)) !== undefined };
}

/** How many logins of `IQN` made a session. */
async function succeeded(current: SimEnv): Promise<number> {
  return (await current.sim.state()).logins.find((l) => l.iqn === IQN)?.succeeded ?? 0;
}

describe('a single-path login killed while iscsid still carries it on', { timeout: 60_000 }, () => {
  it('the session iscsid brings up after the connect failed is logged out and its record deleted, with no other call', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    await env.sim.faults.holdLogins({ portal: PORTAL, iqn: IQN });
    const error = await failureOf(env.driver.connect(connectionFor(IQN, 1), call(1_500, randomUUID())));
    expect(error.code).toBe('TIMEOUT');
    // iscsiadm was killed; iscsid was not.
    expect((await env.sim.state()).heldLogins).toBe(1);

    // The target answers at last: the session comes up (no disk), and must not stay.
    await env.sim.faults.releaseLogins();
    await vi.waitFor(async () => expect(await succeeded(env!)).toBe(1), { timeout: 20_000 });
    await vi.waitFor(async () => expect(await leftOnHost(env!)).toEqual({ sessions: 0, record: false }), { timeout: 20_000 });
    expect((await env.sim.state()).devices).toEqual([]);
  });

  it('the rollback\'s disconnect, in another process, waits for the left login: the session that comes during it is logged out, the record deleted, the state forgotten', async () => {
    // iscsid's bound 5 s × 2: should this process's own watcher log the session out first, the
    // rollback sees no session and waits out that bound, not the default 20 s.
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)], driver: { loginTimeoutSeconds: 5, loginRetryMax: 2 } });
    await env.sim.faults.holdLogins({ portal: PORTAL, iqn: IQN });
    const volumeId = randomUUID();
    const error = await failureOf(env.driver.connect(connectionFor(IQN, 1), call(1_500, volumeId)));
    expect(error.code).toBe('TIMEOUT');
    // What the rollback (or a recovery after a crash) needs: the record kept, and the left login
    // persisted with iscsid's bound.
    expect(await env.nodeRecord(IQN, PORTAL)).toBeDefined();
    expect(JSON.parse((await env.stateFile(volumeId)) ?? '{}')).toMatchObject({ volumeId, left_logins: [{ target_iqn: IQN, target_portal: PORTAL, target_lun: 1 }] });

    // The rollback runs in a restarted berth while iscsid is still logging in; the login ends during it.
    // (This process's watcher waits too: the restarted driver's wait is the second.)
    let settled = false;
    const rollback = env.restart().disconnect(connectionFor(IQN, 1), undefined, { force: true, ...call(30_000, volumeId) });
    void rollback.finally(() => (settled = true)).catch(() => undefined);
    await vi.waitFor(() => expect(env!.logs.filter((l) => l.msg?.startsWith('waiting for a given-up login') === true)).toHaveLength(2), { timeout: 20_000 });
    expect(settled).toBe(false);
    expect(await env.nodeRecord(IQN, PORTAL)).toBeDefined();
    await env.sim.faults.releaseLogins();
    await rollback;
    expect(await succeeded(env)).toBe(1);
    expect(await leftOnHost(env)).toEqual({ sessions: 0, record: false });
    expect(await env.stateFile(volumeId)).toBeUndefined();
  });

  it('iscsid\'s bound is written on the record and ends a login that never answers before berth kills it: one login, iscsid\'s rc 8, nothing left', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)], driver: { loginTimeoutSeconds: 1, loginRetryMax: 2 } });
    await env.sim.faults.holdLogins({ portal: PORTAL, iqn: IQN });
    const started = Date.now();
    const error = await failureOf(env.driver.connect(connectionFor(IQN, 1), call(20_000, randomUUID())));
    // iscsid gave up at 1 s × 2 and said so: the login was not killed, nothing is carried on.
    expect(error.message).toMatch(/exit 8/);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(env.logins()).toBe(1);
    expect((await env.sim.state()).heldLogins).toBe(0);
    expect(await leftOnHost(env)).toEqual({ sessions: 0, record: false });
  });
});

describe('iscsid\'s login keys on the record', { timeout: 60_000 }, () => {
  it('by default 10 s × 2 attempts: a target slow to answer a login (a busy array, CHAP under load) gets 10 s per attempt, and the 20 s bound stays under the 30 s command timeout', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)] });
    await env.driver.connect(connectionFor(IQN, 1), call(20_000, randomUUID()));
    const record = await env.nodeRecord(IQN, PORTAL);
    expect(record?.['node.conn[0].timeo.login_timeout']).toBe('10');
    expect(record?.['node.session.initial_login_retry_max']).toBe('2');
  });

  it('a config with a command timeout shorter than the default bound still starts after the upgrade: the keys are derived to fit under it', async () => {
    // 12 s: 7 s left for iscsid after the 5 s margin, 3 s × 2 attempts. It was refused (below 25 s).
    env = await startSimEnv({ targets: [targetSpec(IQN, 1)], driver: { commandTimeoutMs: 12_000 } });
    await env.driver.connect(connectionFor(IQN, 1), call(20_000, randomUUID()));
    const record = await env.nodeRecord(IQN, PORTAL);
    expect(record?.['node.conn[0].timeo.login_timeout']).toBe('3');
    expect(record?.['node.session.initial_login_retry_max']).toBe('2');
  });
});

describe('a reconcile finishing the left logins of a state', { timeout: 60_000 }, () => {
  it('takes each login\'s own target lock: a login at a target whose connect is in flight is finished once that connect is done, not skipped as busy under another target\'s lock', async () => {
    const IQN_A = 'iqn.2026-01.test.berth:left-a';
    const IQN_B = 'iqn.2026-01.test.berth:left-b';
    // B's disk never comes: a connect of B holds B's LUN queue (and its in-flight mark) from its
    // login until its device wait ends (1.5 s) and its undo is done.
    env = await startSimEnv({ targets: [targetSpec(IQN_A, 1), targetSpec(IQN_B, 1)], driver: { deviceTimeoutMs: 1_500 } });
    await env.sim.faults.deviceNeverAppears({ iqn: IQN_B, lun: 1 });
    const now = Date.now();
    const entry = (iqn: string, until: number): Record<string, unknown> => ({
      target_iqn: iqn,
      target_portal: PORTAL,
      target_lun: 1,
      kernel_lun: 1,
      started_at: new Date(now - 60_000).toISOString(),
      until: new Date(until).toISOString(),
    });
    // A volume whose attaches left a login at A (iscsid may still log in: not finished yet) and one
    // at B (its bound passed), A first: the old code took A's lock for both.
    const volumeId = randomUUID();
    const dir = path.join(env.dataDir, 'driver-iscsi', 'attachments');
    await mkdir(dir, { recursive: true });
    const state = { version: 1, volumeId, target_iqn: IQN_B, target_portal: PORTAL, target_lun: 1, kernel_lun: 1, iface: 'default', left_logins: [entry(IQN_A, now + 60_000), entry(IQN_B, now - 1_000)] };
    await writeFile(path.join(dir, `${volumeId}.json`), JSON.stringify(state));

    // Another attach of B's LUN is past its login, waiting for the disk.
    let settled = false;
    const connecting = failureOf(env.driver.connect(connectionFor(IQN_B, 1), call(20_000, randomUUID()))).finally(() => (settled = true));
    await vi.waitFor(async () => expect((await env!.sim.state()).sessions.filter((s) => s.iqn === IQN_B)).toHaveLength(1), { timeout: 10_000 });
    expect(settled).toBe(false);
    await env.driver.connected?.();
    expect((await connecting).code).toBe('TIMEOUT');

    // B's login was finished after the connect (its session and record gone, its entry forgotten);
    // A's is still pending.
    const left = (JSON.parse((await env.stateFile(volumeId)) ?? '{}') as { left_logins?: Array<{ target_iqn: string }> }).left_logins;
    expect(left?.map((l) => l.target_iqn)).toEqual([IQN_A]);
    expect((await env.sim.state()).sessions.filter((s) => s.iqn === IQN_B)).toHaveLength(0);
    expect(await env.nodeRecord(IQN_B, PORTAL)).toBeUndefined();
  });
});
