import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HostServices } from '@berth/host';
import type { Logger } from '@berth/core';

/** The transports that need what this kernel may lack (iSCSI login, SCSI disks, dm-multipath). */
export const SIMULATED_PLUGINS = ['@berth/driver-iscsi', '@berth/driver-iscsi-multipath'];

/** The user-space iSCSI transport's plugin: real devices, so it stays on the real machine. */
export const USER_ISCSI_PLUGIN = '@berth/driver-iscsi-user';

/** Where `--simulate` keeps its simulated host and the real-backed disks' work files. */
export function simulatedHostPaths(dataDir: string): { root: string; workDir: string } {
  return { root: path.join(dataDir, 'simhost'), workDir: path.join(dataDir, 'simhost-work') };
}

/**
 * `berth --simulate`: the simulated host in real-backed mode (a login reaches the real tgtd; a
 * disk is a real loop device over a qemu-storage-daemon FUSE export of the LUN), as a detached
 * daemon under the data dir so that sessions outlive one CLI invocation. Only the transports in
 * SIMULATED_PLUGINS see it; loop devices and tgtd stay on the real machine.
 */
export async function simulatedHostServices(
  dataDir: string,
  options: { deviceDelayMs?: number; commandTimeoutMs: number; logger: Logger },
): Promise<HostServices> {
  // Loaded only when asked for: production berth does not load the simulator.
  const { SimulatedHost } = await import('@berth/testkit/simhost');
  const { root, workDir } = simulatedHostPaths(dataDir);
  const sim = await SimulatedHost.ensureRunning(root, {
    ...(options.deviceDelayMs === undefined ? {} : { deviceDelayMs: options.deviceDelayMs }),
    targetAccessFactory: {
      module: fileURLToPath(import.meta.resolve('@berth/testkit/simhost/real')),
      exportName: 'RealTargetAccess',
      options: { workDir },
    },
  });
  return sim.hostServices({ defaultTimeoutMs: options.commandTimeoutMs, logger: options.logger.child({ component: 'simhost' }) });
}

/** Stop `--simulate`'s daemon (logs every session out, closes every disk). Idempotent. */
export async function stopSimulatedHost(dataDir: string): Promise<void> {
  const { SimulatedHost } = await import('@berth/testkit/simhost');
  const { root } = simulatedHostPaths(dataDir);
  const sim = await SimulatedHost.connect(root).catch(() => undefined);
  await sim?.stop();
}
