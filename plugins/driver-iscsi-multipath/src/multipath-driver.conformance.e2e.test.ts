import { silentLogger } from '@berth/core';
import { createHostServices } from '@berth/host';
import { loopBackedConformanceSetup } from '@berth/iscsi/testing';
import { describeTransportConformance } from '@berth/testkit';
import { LoopBackedTargetAccess, SimulatedHost } from '@berth/simhost';
import { createMultipathDriver } from './multipath-driver.js';

const IQN = 'iqn.2026-01.test.berth:mp-conformance';
const PORTALS = ['127.0.0.1:3260', '127.0.0.2:3260'];

// The multipath transport on the simulated host: a target on two portals, each LUN a real loop
// device under its /dev/sdX, so /dev/dm-N (made from the path dm sends I/O to) is a real block
// device node, as the suite requires.
describeTransportConformance(
  'iscsi-multipath (simulated host, two portals, loop-backed LUNs)',
  () =>
    loopBackedConformanceSetup({
      workDirPrefix: 'berth-iscsi-mp-conformance-',
      iqn: IQN,
      portals: PORTALS,
      san: (dir) => new LoopBackedTargetAccess(dir, createHostServices().runner),
      startSim: (san) => SimulatedHost.start({ targetAccess: san, deviceDelayMs: 20 }),
      make: (host, dataDir) => createMultipathDriver({ host, dataDir, options: {}, logger: silentLogger }),
      connection: (lun) => ({
        driver_volume_type: 'iscsi',
        data: { target_portal: PORTALS[0], target_iqn: IQN, target_lun: lun, target_portals: PORTALS, target_iqns: [IQN, IQN], target_luns: [lun, lun] },
      }),
    }),
  { timeoutMs: 60_000, identity: true },
);
