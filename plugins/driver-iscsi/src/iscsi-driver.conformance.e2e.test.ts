import { silentLogger } from '@berth/core';
import { createHostServices } from '@berth/host';
import { loopBackedConformanceSetup } from '@berth/iscsi/testing';
import { describeTransportConformance } from '@berth/testkit';
import { LoopBackedTargetAccess, SimulatedHost } from '@berth/simhost';
import { createIscsiDriver } from './iscsi-driver.js';

const IQN = 'iqn.2026-01.test.berth:conformance';
const PORTAL = '127.0.0.1:3260';

// The iscsi transport on the simulated host, each LUN a real loop device under /dev/sdX, so the
// suite's "is it a block device" checks hold as they would on a real host.
describeTransportConformance('iscsi (simulated host, loop-backed LUNs)', () =>
  loopBackedConformanceSetup({
    workDirPrefix: 'berth-iscsi-conformance-',
    iqn: IQN,
    portals: [PORTAL],
    san: (dir) => new LoopBackedTargetAccess(dir, createHostServices().runner),
    startSim: (san) => SimulatedHost.start({ targetAccess: san, deviceDelayMs: 20 }),
    make: (host, dataDir) => createIscsiDriver({ host, dataDir, options: {}, logger: silentLogger }),
    connection: (lun) => ({ driver_volume_type: 'iscsi', data: { target_portal: PORTAL, target_iqn: IQN, target_lun: lun } }),
  }),
  { identity: true },
);
