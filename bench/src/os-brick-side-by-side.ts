import { existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { silentLogger, type ConnectionInfo, type TransportDriver } from '@berth/core';
import { createIscsiDriver } from '@berth/driver-iscsi';
import { createMultipathDriver } from '@berth/driver-iscsi-multipath';
import { SimulatedHost } from '@berth/simhost';
import { printTable, summarize } from './stats.js';

const IQN = 'iqn.2026-01.bench.berth:side-by-side';
const PORTALS = ['127.0.0.1:3260', '127.0.0.2:3260', '127.0.0.3:3260', '127.0.0.4:3260'];
const PYTHON = '/usr/bin/python3';
// The harness lives with the simulated host's os-brick test (it shares its namespace set-up).
const HARNESS = path.resolve(path.dirname(fileURLToPath(import.meta.resolve('@berth/simhost'))), '../src/os-brick-cycle.py');
const OS_BRICK = '/usr/lib/python3/dist-packages/os_brick/initiator/connectors/iscsi.py';

/** One side-by-side case: how many LUNs of the one target, over how many portals, one of them dead. */
interface Case {
  name: string;
  luns: number;
  portals: number;
  multipath: boolean;
  /** The last portal answers no connection: each attempt there fails after 2 s. */
  deadPortal?: boolean;
}

const CASES: Case[] = [
  { name: 'single LUN', luns: 1, portals: 1, multipath: false },
  { name: '8 LUNs of one target, at once', luns: 8, portals: 1, multipath: false },
  { name: 'multipath, 2 portals', luns: 1, portals: 2, multipath: true },
  { name: 'multipath, 4 portals', luns: 1, portals: 4, multipath: true },
  { name: 'multipath, 4 portals, one dead', luns: 1, portals: 4, multipath: true, deadPortal: true },
];

/**
 * berth's iSCSI transports against an unmodified os-brick 6.1 `ISCSIConnector` (Debian's
 * python3-os-brick), alternating on the same simulated host (same model SAN, same 20 ms udev
 * delay, the same compiled fake tools): connect every volume at once, then disconnect them all,
 * each side timed inside its own process. Prints both medians and os-brick / berth.
 */
export async function benchOsBrickSideBySide(iterations = 3, only?: readonly string[]): Promise<void> {
  if (!existsSync(PYTHON) || !existsSync(OS_BRICK)) {
    throw new Error(`the os-brick side-by-side needs ${PYTHON} and python3-os-brick: run scripts/install-system-deps.sh`);
  }
  const rows: Array<Array<string | number>> = [];
  const cases = only === undefined ? CASES : CASES.filter((c, i) => only.includes(String(i + 1)));
  if (cases.length === 0) throw new Error(`BENCH_OSBRICK_CASES names no case: 1..${CASES.length} (${CASES.map((c) => c.name).join(', ')})`);
  for (const c of cases) rows.push(...(await runCase(c, iterations)));
  printTable(`berth vs unmodified os-brick on one simulated host, ${iterations} alternating cycles each (ms, medians)`, ['case', 'berth', 'os-brick', 'os-brick / berth'], rows);
}

async function runCase(c: Case, iterations: number): Promise<Array<Array<string | number>>> {
  // The simulated root on a tmpfs when the machine has /dev/shm (as attach-iscsi-sim does):
  // sysfs and devtmpfs are in memory on a real host, and on disk every login's ~80 sysfs files
  // cost ~28 ms (both sides pay it). os-brick's namespace binds the root's dev/ over /dev, so its
  // harness binds /dev/shm back in first (os_brick_root.py).
  const dataDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-bench-osbrick-'));
  const rootParent = process.env.BERTH_SIMHOST_TMPDIR ?? (existsSync('/dev/shm') ? '/dev/shm' : dataDir);
  const root = rootParent === dataDir ? path.join(dataDir, 'root') : await fsp.mkdtemp(path.join(rootParent, 'berth-bench-osbrick-root-'));
  const sim = await SimulatedHost.start({ deviceDelayMs: 20, root }).catch(async (error: unknown) => {
    await fsp.rm(dataDir, { recursive: true, force: true });
    if (root !== path.join(dataDir, 'root')) await fsp.rm(root, { recursive: true, force: true });
    throw error;
  });
  try {
    const portals = PORTALS.slice(0, c.portals);
    const luns = Object.fromEntries(Array.from({ length: c.luns }, (_, i) => [i + 1, { sizeBytes: 16 << 20 }]));
    await sim.san.addTarget({ iqn: IQN, portals, luns });
    if (c.deadPortal) await sim.faults.unreachablePortal(portals[portals.length - 1]!, 2_000);
    const host = sim.hostServices();
    const driver: TransportDriver = c.multipath
      ? createMultipathDriver({ host, dataDir, options: {}, logger: silentLogger })
      : createIscsiDriver({ host, dataDir, options: {}, logger: silentLogger });
    const volumes = Array.from({ length: c.luns }, (_, i) => {
      const lun = i + 1;
      return c.multipath
        ? { target_portal: portals[0], target_iqn: IQN, target_lun: lun, target_portals: portals, target_iqns: portals.map(() => IQN), target_luns: portals.map(() => lun) }
        : { target_portal: portals[0], target_iqn: IQN, target_lun: lun };
    });
    const connections: ConnectionInfo[] = volumes.map((data) => ({ driver_volume_type: 'iscsi', data }));
    for (const name of ['null', 'zero', 'random', 'urandom']) await fsp.writeFile(path.join(sim.root, 'dev', name), '');
    const lockDir = path.join(sim.root, 'run/os-brick-locks');
    await fsp.mkdir(lockDir, { recursive: true });

    const berth = { connect: [] as number[], disconnect: [] as number[] };
    const osBrick = { connect: [] as number[], disconnect: [] as number[] };
    for (let i = 0; i < iterations; i++) {
      let t = performance.now();
      const devices = await Promise.all(connections.map((connection) => driver.connect(connection, { signal: AbortSignal.timeout(120_000) })));
      berth.connect.push(performance.now() - t);
      t = performance.now();
      await Promise.all(connections.map((connection, n) => driver.disconnect(connection, devices[n]!, { force: false, signal: AbortSignal.timeout(120_000) })));
      berth.disconnect.push(performance.now() - t);

      const r = await host.runner.run('unshare', ['--mount', '--', PYTHON, HARNESS, sim.root, JSON.stringify(volumes), c.multipath ? '1' : '0', lockDir], {
        reject: false,
        timeoutMs: 600_000,
      });
      if (r.exitCode !== 0) throw new Error(`os-brick failed (${c.name}): ${r.stderr.slice(-2_000)}`);
      const seen = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { connect_ms: number; disconnect_ms: number };
      osBrick.connect.push(seen.connect_ms);
      osBrick.disconnect.push(seen.disconnect_ms);
    }
    const state = await sim.state();
    if (state.sessions.length > 0 || state.devices.length > 0) throw new Error(`${c.name}: something was left on the simulated host`);
    const row = (what: string, b: number[], o: number[]): Array<string | number> => {
      const bm = summarize(b).p50;
      const om = summarize(o).p50;
      return [`${c.name}: ${what}`, bm, om, om / bm];
    };
    return [row('connect', berth.connect, osBrick.connect), row('disconnect', berth.disconnect, osBrick.disconnect)];
  } finally {
    await sim.stop();
    await fsp.rm(dataDir, { recursive: true, force: true });
    await fsp.rm(root, { recursive: true, force: true });
  }
}
