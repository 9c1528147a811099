import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { silentLogger, type ConnectionInfo } from '@berth/core';
import { createHostServices } from '@berth/host';
import { describeTransportConformance } from '@berth/testkit';
import { LoopBackedTargetAccess, SimulatedHost } from '@berth/simhost';
import { createMultipathDriver } from './multipath-driver.js';

const IQN = 'iqn.2026-01.test.berth:mp-conformance';
const PORTALS = ['127.0.0.1:3260', '127.0.0.2:3260'];

// The multipath transport on the simulated host: a target on two portals, each LUN a real loop
// device under its /dev/sdX, so /dev/dm-N (made from the path dm sends I/O to) is a real block
// device node, as the suite requires.
describeTransportConformance('iscsi-multipath (simulated host, two portals, loop-backed LUNs)', async () => {
  const workDir = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-mp-conformance-'));
  const access = new LoopBackedTargetAccess(path.join(workDir, 'san'), createHostServices().runner);
  let sim: SimulatedHost | undefined;
  try {
    sim = await SimulatedHost.start({ targetAccess: access, deviceDelayMs: 20 });
    await access.model.addTarget({ iqn: IQN, portals: PORTALS });
  } catch (error) {
    await sim?.stop();
    await access.sweep();
    await rm(workDir, { recursive: true, force: true });
    throw error;
  }
  const running = sim;
  const host = running.hostServices();
  const driver = createMultipathDriver({ host, dataDir: path.join(workDir, 'data'), options: {}, logger: silentLogger });
  let nextLun = 1;
  return {
    driver,
    fs: host.fs,
    async makeConnection(): Promise<ConnectionInfo> {
      const lun = nextLun++;
      await access.model.addLun(IQN, lun, { sizeBytes: 4 * 1024 * 1024 });
      return {
        driver_volume_type: 'iscsi',
        data: { target_portal: PORTALS[0], target_iqn: IQN, target_lun: lun, target_portals: PORTALS, target_iqns: [IQN, IQN], target_luns: [lun, lun] },
      };
    },
    async cleanup() {
      try {
        await running.stop();
      } finally {
        await access.sweep();
        await rm(workDir, { recursive: true, force: true });
      }
    },
  };
}, { timeoutMs: 60_000 });
