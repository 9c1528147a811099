import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { SimulatedHost } from './simulated-host.js';
import { PORTAL, VOL1 } from './test-helpers.js';

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

afterEach(async () => {
  await sim?.stop();
  sim = undefined;
});

describe('os-brick on the simulated host', { timeout: 120_000 }, () => {
  it('connects and disconnects a volume with an unmodified os-brick ISCSIConnector', async () => {
    expect(existsSync(PYTHON) && existsSync('/usr/bin/unshare') && existsSync(OS_BRICK), `needs ${PYTHON}, unshare and python3-os-brick`).toBe(true);
    sim = await SimulatedHost.start();
    const target = await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: 8 << 20 } } });
    // Mount points for the real character devices the harness binds into the simulated /dev.
    for (const name of ['null', 'zero', 'random', 'urandom']) await fsp.writeFile(path.join(sim.root, 'dev', name), '');
    const lockDir = path.join(sim.root, 'run/os-brick-locks');
    await fsp.mkdir(lockDir);
    const props = { target_portal: PORTAL, target_iqn: VOL1, target_lun: 1 };
    const { runner } = sim.hostServices();
    const r = await runner.run('unshare', ['--mount', '--', PYTHON, HARNESS, sim.root, JSON.stringify(props), lockDir], {
      reject: false,
      timeoutMs: 100_000,
      env: { PATH: `${sim.binDir}:${process.env.PATH ?? '/usr/bin:/bin'}` },
    });
    expect(r.exitCode, r.stderr.slice(-3000)).toBe(0);
    const seen = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Record<string, unknown>;
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
    expect(await sim.state()).toEqual({ sessions: [], devices: [] });
    expect(await fsp.readdir(path.join(sim.root, 'etc/iscsi/nodes'))).toEqual([]);
  });
});
