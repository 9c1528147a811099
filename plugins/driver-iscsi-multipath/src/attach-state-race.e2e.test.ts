import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { callContext as call, failureOf } from '@berth/iscsi/testing';
import { listConnection, PORTALS, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// One volume's attach state written by two operations under different volume queues: the queue
// is named by the connection's primary path, so an attach whose connection_info names target B
// (a retry after an attach at target A failed) and what happens at A do not take turns — nor do
// two berth processes. Each read-modify-write of the state file must see the other's: the connect
// used to write back the state it read before its logins, and the last writer won.
//
// B's connect is stopped between its login and its disk deterministically: its scan is held (the
// simulated kernel parks it before anything shows in sysfs) until a `delete` is written to a disk
// of another session — the disconnect of a third volume, at target C.

const IQN_A = 'iqn.2026-01.test.berth:mp-race-a';
const IQN_B = 'iqn.2026-01.test.berth:mp-race-b';
const IQN_C = 'iqn.2026-01.test.berth:mp-race-c';
const portals = [PORTALS[0]];

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.sim.faults.clear();
  await env?.dispose();
  env = undefined;
});

describe('one volume\'s state written under two volume queues at once', { timeout: 120_000 }, () => {
  it('a login a failed attach at A kept while an attach at B was past its login stays in the state B\'s attach writes', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN_A, portals, 1), targetSpec(IQN_B, portals, 1), targetSpec(IQN_C, portals, 1)], driver: { deviceTimeoutMs: 30_000 } });
    const volumeId = randomUUID();
    const other = randomUUID();
    const disk = await env.driver.connect(listConnection(IQN_C, 1, portals), call(30_000, other));

    // The attach at B is past its login, its scan held.
    await env.sim.faults.holdScans({ iqn: IQN_B, lun: 1 });
    const connecting = env.driver.connect(listConnection(IQN_B, 1, portals), call(60_000, volumeId));
    connecting.catch(() => undefined);
    await vi.waitFor(async () => expect((await env!.sim.state()).heldScans).toBe(1), { timeout: 15_000 });

    // Meanwhile an attach of the same volume at A fails with its login given up to iscsid (held:
    // it stays pending, so no watcher forgets it during the test).
    await env.sim.faults.holdLogins({ portal: portals[0], iqn: IQN_A });
    await failureOf(env.driver.connect(listConnection(IQN_A, 1, portals), call(2_000, volumeId)));
    expect((await env.stateFile(volumeId))?.['left_logins']).toMatchObject([{ target_iqn: IQN_A }]);

    // C's detach writes a `delete`: B's scan goes on, its attach finishes.
    await env.driver.disconnect(listConnection(IQN_C, 1, portals), disk, { force: false, ...call(30_000, other) });
    const device = (await connecting) as { path: string };
    // B's attach wrote its device on the state as it is now: A's left login is still there for a
    // detach or reconcile to finish. (It wrote the state it had read before its logins: A's login
    // was lost, and a session iscsid brings up at A would have been owned by nobody.)
    const state = await env.stateFile(volumeId);
    expect(state).toMatchObject({ target_iqn: IQN_B, device: device.path });
    expect(state?.['left_logins']).toMatchObject([{ target_iqn: IQN_A }]);
  });
});
