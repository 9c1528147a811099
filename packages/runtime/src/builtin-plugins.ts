import backendFile from '@berth/backend-file';
import backendTgt from '@berth/backend-tgt';
import { corePlugin, type BerthPlugin } from '@berth/core';
import driverIscsi from '@berth/driver-iscsi';
import driverIscsiMultipath from '@berth/driver-iscsi-multipath';
import driverIscsiUser from '@berth/driver-iscsi-user';
import driverLoop from '@berth/driver-loop';

/**
 * Plugins every berth has: the host consumer, the loop, user-space iSCSI, iSCSI and iSCSI multipath
 * transports, the file and tgt backends. iscsi-user comes before the kernel iSCSI transports: connector
 * properties merge in this order, so their initiator name (the simulated host's, with --simulate) wins.
 */
export const BUILTIN_PLUGINS: ReadonlyArray<{ packageName: string; plugin: BerthPlugin }> = [
  { packageName: '@berth/core', plugin: corePlugin as BerthPlugin },
  { packageName: '@berth/driver-loop', plugin: driverLoop as BerthPlugin },
  { packageName: '@berth/backend-file', plugin: backendFile as BerthPlugin },
  { packageName: '@berth/driver-iscsi-user', plugin: driverIscsiUser as BerthPlugin },
  { packageName: '@berth/driver-iscsi', plugin: driverIscsi as BerthPlugin },
  { packageName: '@berth/driver-iscsi-multipath', plugin: driverIscsiMultipath as BerthPlugin },
  { packageName: '@berth/backend-tgt', plugin: backendTgt as BerthPlugin },
];
