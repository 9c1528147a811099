import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { silentLogger, type ConnectionInfo } from '@berth/core';
import { createHostServices } from '@berth/host';
import { describeTransportConformance } from '@berth/testkit';
import { LoopBackedTargetAccess, SimulatedHost } from '@berth/simhost';
import { createIscsiDriver } from './iscsi-driver.js';

const IQN = 'iqn.2026-01.test.berth:conformance';
const PORTAL = '127.0.0.1:3260';

// The iscsi transport on the simulated host, each LUN a real loop device under /dev/sdX, so the
// suite's "is it a block device" checks hold as they would on a real host.
describeTransportConformance('iscsi (simulated host, loop-backed LUNs)', async () => {
  const workDir = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-conformance-'));
  const access = new LoopBackedTargetAccess(path.join(workDir, 'san'), createHostServices().runner);
  let sim: SimulatedHost | undefined;
  try {
    sim = await SimulatedHost.start({ targetAccess: access, deviceDelayMs: 20 });
    await access.model.addTarget({ iqn: IQN, portals: [PORTAL] });
  } catch (error) {
    await sim?.stop();
    await rm(workDir, { recursive: true, force: true });
    throw error;
  }
  const running = sim;
  const host = running.hostServices();
  const driver = createIscsiDriver({ host, dataDir: path.join(workDir, 'data'), options: {}, logger: silentLogger });
  let nextLun = 1;
  return {
    driver,
    fs: host.fs,
    async makeConnection(): Promise<ConnectionInfo> {
      const lun = nextLun++;
      await access.model.addLun(IQN, lun, { sizeBytes: 4 * 1024 * 1024 });
      return { driver_volume_type: 'iscsi', data: { target_portal: PORTAL, target_iqn: IQN, target_lun: lun } };
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
});
