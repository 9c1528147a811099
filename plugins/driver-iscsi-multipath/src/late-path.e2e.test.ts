import { afterEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '@berth/core';
import { FailureList, MultipathClient, toPortal } from '@berth/iscsi';
import { callContext as call, wwnOf } from '@berth/iscsi/testing';
import { expectedWwn, latePathOwner } from './late-path.js';
import type { PathTarget } from './multipath-connection.js';
import { zMultipathDriverOptions } from './options.js';
import { listConnection, PORTALS, startSimEnv, targetSpec, type SimEnv } from './test-sim-env.js';

// A disk of the volume's LUN that appears after a disconnect listed its paths (a scan an
// interrupted connect wrote) goes with its session when it passes locatePaths' identity rule;
// anything else keeps the session.

const IQN = 'iqn.2026-01.test.berth:mp-late';
const portals: [string, string] = [PORTALS[0], PORTALS[1]];

let env: SimEnv | undefined;

afterEach(async () => {
  await env?.dispose();
  env = undefined;
});

function pathTarget(portal: string, kernelLun = 1): PathTarget {
  return { iqn: IQN, portal: toPortal(portal), portalText: portal, lun: 1, kernelLun };
}

/** A record with scan=manual and a login through `portal`, as a connect makes; returns the SCSI host. */
async function login(current: SimEnv, portal: string): Promise<number> {
  const node = ['-m', 'node', '-T', IQN, '-p', portal];
  for (const args of [[...node, '--interface', 'default', '--op', 'new'], [...node, '--op', 'update', '-n', 'node.session.scan', '-v', 'manual'], [...node, '--login']]) {
    const r = await current.host.runner.run('iscsiadm', args, { reject: false, timeoutMs: 30_000 });
    expect([args.join(' '), r.exitCode]).toEqual([args.join(' '), 0]);
  }
  const session = (await current.sim.state()).sessions.find((s) => s.portal === portal);
  return session!.host;
}

describe('a late path of the volume', { timeout: 120_000 }, () => {
  // `sysfs`: the late disk is in sysfs at the decision, multipathd misses it (no map can form).
  // `udev`: its uevent is handled before the decision, and its wwid is listed: multipathd builds a
  // map on it, which goes first.
  it.each(['sysfs', 'udev'] as const)('a scan the interrupted connect wrote lands while the disconnect deletes the other path (%s): its disk goes with its session', async (settle) => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    await env.sim.faults.load({ heldScans: [{ portal: portals[1], iqn: IQN, settle }], multipathdMissesNewPaths: settle === 'sysfs' });
    const [first, second] = [await login(env, portals[0]), await login(env, portals[1])];
    await env.host.fs.writeFile(`/sys/class/scsi_host/host${first}/scan`, '- - 1');
    await env.host.waiter.waitForPath(`/dev/disk/by-path/ip-${portals[0]}-iscsi-${IQN}-lun-1`, { timeoutMs: 20_000 });
    // A wwid an earlier attach listed (multipath -a): multipathd may build a map on a path of it.
    const wwn = wwnOf((await env.host.fs.readFile('/sys/block/sda/device/wwid')).trim());
    expect((await env.host.runner.run('multipath', ['-a', wwn], { timeoutMs: 20_000 })).exitCode).toBe(0);
    await env.host.fs.writeFile(`/sys/class/scsi_host/host${second}/scan`, '- - 1');
    await vi.waitFor(async () => expect((await env!.sim.state()).heldScans).toBe(1), { timeout: 20_000 });

    // Recovery's undo: no device, no state; the delete of sda lets sdb land before it returns.
    await env.driver.disconnect(listConnection(IQN, 1, portals), undefined, { force: true, ...call(60_000) });
    const state = await env.sim.state();
    expect(state.sessions).toEqual([]);
    expect(state.maps).toEqual([]);
    expect(state.heldScans).toBe(0);
    expect(await env.nodeRecords()).toEqual([]);
    // Only in the udev case was there a map (on the late disk) to remove.
    expect(env.runs.some((r) => r[0] === 'multipath' && r.includes('-f'))).toBe(settle === 'udev');
  });

  it('is the volume\'s only at this LUN, with the expected WWN, unused, under no map but the volume\'s (which goes first)', async () => {
    env = await startSimEnv({ targets: [targetSpec(IQN, portals, 1)] });
    const device = await env.driver.connect(listConnection(IQN, 1, portals), call(60_000));
    const sdb = device.paths!.find((p) => p.portal === portals[1])!.device!.slice('/dev/'.length);
    const options = zMultipathDriverOptions.parse({});
    const ctx = {
      fs: env.host.fs,
      logger: silentLogger,
      options,
      mapHost: { fs: env.host.fs, waiter: env.host.waiter, multipath: new MultipathClient({ runner: env.host.runner }), logger: silentLogger, commandTimeoutMs: options.commandTimeoutMs },
    };
    const failures = new FailureList(true);
    const owner = (target: PathTarget, expected: string | null | undefined, inUse: typeof device[] = []) =>
      latePathOwner(ctx, target, expected, { inUse, signal: undefined, failures }, new Map());
    const wwn = device.scsi_wwn!;
    expect(await expectedWwn(ctx, undefined, [sdb])).toBe(wwn);
    expect(await owner(pathTarget(portals[1]), 'naa.60000000000000000e00000000099999')(sdb)).toBe(false);
    expect(await owner(pathTarget(portals[1]), null)(sdb)).toBe(false);
    expect(await owner(pathTarget(portals[1], 2), wwn)(sdb)).toBe(false);
    expect(await owner(pathTarget(portals[0]), wwn)(sdb)).toBe(false);
    expect(await owner(pathTarget(portals[1]), wwn, [{ ...device, path: `/dev/${sdb}` }])(sdb)).toBe(false);
    // A map whose wwid nothing confirms is not removed.
    expect(await owner(pathTarget(portals[1]), undefined)(sdb)).toBe(false);
    expect((await env.sim.state()).maps).toHaveLength(1);
    expect(await owner(pathTarget(portals[1]), wwn)(sdb)).toBe(true);
    expect((await env.sim.state()).maps).toEqual([]);
    expect(failures.size).toBe(0);
    await env.driver.disconnect(listConnection(IQN, 1, portals), device, { force: true, ...call(60_000) });
    expect((await env.sim.state()).sessions).toEqual([]);
  });
});
