import { fileURLToPath } from 'node:url';
import { BerthError, type Logger } from '@berth/core';
import type { HostServices } from '@berth/host';
import { resolveSimulateConfig, type SimulateConfig } from './simulate-config.js';

type SimhostModule = typeof import('@berth/simhost');

/** The user-space iSCSI transport's plugin: real devices, so it stays on the real machine. */
export const USER_ISCSI_PLUGIN = '@berth/driver-iscsi-user';

/** Where `--simulate` keeps its simulated host and the real-backed disks' work files (the config's defaults). */
export function simulatedHostPaths(dataDir: string, simulate?: SimulateConfig): { root: string; workDir: string } {
  const { root, workDir } = simulate ?? resolveSimulateConfig(undefined, {}, dataDir);
  return { root, workDir };
}

/**
 * Load the simulated host's package, only when asked for: production berth does not ship it, so a
 * missing package is a CONFIG error that says how to get it, not a crash at start.
 */
async function importSimhost(specifier: string): Promise<SimhostModule> {
  try {
    return (await import(specifier)) as SimhostModule;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') {
      throw new BerthError('CONFIG', `--simulate needs the simulated host package ${specifier}, which is not installed here`, {
        cause: error,
        hint: `install it beside berth (npm install ${specifier}) or run without --simulate (BERTH_SIMULATE, config "simulate.enabled")`,
      });
    }
    throw error;
  }
}

/**
 * `berth --simulate`: the simulated host in real-backed mode (a login reaches the real tgtd; a
 * disk is a real loop device over a qemu-storage-daemon FUSE export of the LUN), as a detached
 * daemon under `simulate.root` so that sessions outlive one CLI invocation. Only the plugins the
 * config's `simulate.plugins` names see it; loop devices and tgtd stay on the real machine.
 */
export async function simulatedHostServices(
  simulate: SimulateConfig,
  options: { commandTimeoutMs: number; logger: Logger },
): Promise<HostServices> {
  const { SimulatedHost } = await importSimhost(simulate.module);
  const sim = await SimulatedHost.ensureRunning(simulate.root, {
    ...(simulate.deviceDelayMs === undefined ? {} : { deviceDelayMs: simulate.deviceDelayMs }),
    targetAccessFactory: {
      module: fileURLToPath(import.meta.resolve(`${simulate.module}/real`)),
      exportName: 'RealTargetAccess',
      options: { workDir: simulate.workDir },
    },
  });
  return sim.hostServices({ defaultTimeoutMs: options.commandTimeoutMs, logger: options.logger.child({ component: 'simhost' }) });
}

/** Stop `--simulate`'s daemon (logs every session out, closes every disk). Idempotent. */
export async function stopSimulatedHost(dataDir: string, simulate?: SimulateConfig): Promise<void> {
  const resolved = simulate ?? resolveSimulateConfig(undefined, {}, dataDir);
  const { SimulatedHost } = await importSimhost(resolved.module);
  const sim = await SimulatedHost.connect(resolved.root).catch(() => undefined);
  await sim?.stop();
}
