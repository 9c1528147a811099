import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { SimulatedHost } from './simulated-host.js';
import { PORTAL, PORTAL2, VOL1 } from './test-helpers.js';

// An unmodified os-brick (Debian's python3-os-brick 6.1.0) runs its ISCSIConnector against the
// simulated host. It uses absolute paths (/sys, /dev, /etc/iscsi), so the harness runs in its own
// mount namespace (`unshare --mount`) where the simulated root's directories are bound over them:
// the machine's own /sys, /dev and /etc/iscsi are never touched.
const HARNESS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'os-brick-harness.py');
const PYTHON = '/usr/bin/python3';
// README's test command installs python3-os-brick (scripts/install-system-deps.sh): a missing
// os-brick is a failure here, not a skip.
const OS_BRICK = '/usr/lib/python3/dist-packages/os_brick/initiator/connectors/iscsi.py';

let sim: SimulatedHost | undefined;

/** Run the harness in its own mount namespace with `props`; returns what os-brick saw. */
async function runHarness(sim: SimulatedHost, props: Record<string, unknown>): Promise<Record<string, unknown>> {
  // Mount points for the real character devices the harness binds into the simulated /dev.
  for (const name of ['null', 'zero', 'random', 'urandom']) await fsp.writeFile(path.join(sim.root, 'dev', name), '');
  const lockDir = path.join(sim.root, 'run/os-brick-locks');
  await fsp.mkdir(lockDir, { recursive: true });
  const { runner } = sim.hostServices();
  const r = await runner.run('unshare', ['--mount', '--', PYTHON, HARNESS, sim.root, JSON.stringify(props), lockDir], {
    reject: false,
    timeoutMs: 100_000,
    env: { PATH: `${sim.binDir}:${process.env.PATH ?? '/usr/bin:/bin'}` },
  });
  expect(r.exitCode, r.stderr.slice(-3000)).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Record<string, unknown>;
}

afterEach(async () => {
  await sim?.stop();
  sim = undefined;
});

describe('os-brick on the simulated host', { timeout: 120_000 }, () => {
  it('connects and disconnects a volume with an unmodified os-brick ISCSIConnector', async () => {
    expect(existsSync(PYTHON) && existsSync('/usr/bin/unshare') && existsSync(OS_BRICK), `needs ${PYTHON}, unshare and python3-os-brick`).toBe(true);
    sim = await SimulatedHost.start();
    const target = await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: 8 << 20 } } });
    const seen = await runHarness(sim, { target_portal: PORTAL, target_iqn: VOL1, target_lun: 1 });
    expect(seen).toEqual({
      device: { type: 'block', scsi_wwn: '360000000000000000e00000000010001', path: '/dev/sda' },
      exists: true,
      sessions: [['tcp:', '1', '127.0.0.1:3260', '1', VOL1]],
      volume_paths: [`/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${VOL1}-lun-1`],
      after_disconnect_exists: false,
      sessions_after: [],
    });
    // What os-brick wrote through /dev/sda is in the LUN's file; nothing is left on the host.
    const file = target.luns[0]!.file;
    expect((await fsp.readFile(file)).subarray(0, 19).toString()).toBe('written by os-brick');
    // One login; os-brick asked the running multipathd to drop the path (`del path`), no map formed.
    expect(await sim.state()).toEqual({
      sessions: [],
      devices: [],
      logins: [{ iqn: VOL1, portal: PORTAL, attempts: 1, succeeded: 1 }],
      heldScans: 0,
      heldLogins: 0,
      maps: [],
      multipathd: { running: true, paths: [] },
    });
    expect(await fsp.readdir(path.join(sim.root, 'etc/iscsi/nodes'))).toEqual([]);
  });

  it('connects and disconnects a multipath volume over two portals with an unmodified os-brick (use_multipath)', async () => {
    expect(existsSync(PYTHON) && existsSync('/usr/bin/unshare') && existsSync(OS_BRICK), `needs ${PYTHON}, unshare and python3-os-brick`).toBe(true);
    sim = await SimulatedHost.start();
    const target = await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL, PORTAL2], luns: { 1: { sizeBytes: 8 << 20 } } });
    const wwn = '360000000000000000e00000000010001';
    // os-brick logs in to both portals in parallel, runs `multipath -a` and `multipathd add path`,
    // finds the map through sysfs holders and returns /dev/dm-0.
    const seen = await runHarness(sim, {
      target_portals: [PORTAL, PORTAL2],
      target_iqns: [VOL1, VOL1],
      target_luns: [1, 1],
      target_portal: PORTAL,
      target_iqn: VOL1,
      target_lun: 1,
    });
    const sessions = (seen['sessions'] as string[][]).map((s) => [s[2], s[4]]).sort();
    expect({ ...seen, sessions }).toEqual({
      device: { type: 'block', scsi_wwn: wwn, path: '/dev/dm-0', multipath_id: wwn },
      exists: true,
      sessions: [
        [PORTAL, VOL1],
        [PORTAL2, VOL1],
      ],
      volume_paths: [`/dev/disk/by-path/ip-${PORTAL}-iscsi-${VOL1}-lun-1`, `/dev/disk/by-path/ip-${PORTAL2}-iscsi-${VOL1}-lun-1`],
      dm_name: wwn,
      slaves: ['sda', 'sdb'],
      // Disconnect: `multipath -f`, `multipathd del path` and delete per path, logouts.
      after_disconnect_exists: false,
      paths_after: [],
      sessions_after: [],
    });
    expect((await fsp.readFile(target.luns[0]!.file)).subarray(0, 19).toString()).toBe('written by os-brick');
    const state = await sim.state();
    expect([state.sessions, state.devices, state.maps, state.multipathd.paths]).toEqual([[], [], [], []]);
    expect(state.logins.map((l) => [l.portal, l.attempts, l.succeeded])).toEqual([
      [PORTAL, 1, 1],
      [PORTAL2, 1, 1],
    ]);
    expect(await fsp.readFile(path.join(sim.root, 'etc/multipath/wwids'), 'utf8')).toContain(`/${wwn}/\n`);
  });
});
