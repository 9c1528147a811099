import path from 'node:path';
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

/** An attachment as `simulate stop` looks at it (the fields of core's `Attachment` it reads). */
export interface SimulatedAttachment {
  id: string;
  volumeId: string;
  status: string;
  transport: string | null;
  hostRoot?: string | null | undefined;
}

/**
 * The attachments whose device is on the simulated host at `root` (their recorded `hostRoot`):
 * stopping it logs their sessions out and closes their disks, so their devices and `/dev/berth`
 * links vanish while the records still read `attached`. One line each, naming the volume.
 */
export function attachmentsOnSimulatedHost(
  attachments: readonly SimulatedAttachment[],
  volumes: ReadonlyArray<{ id: string; name: string }>,
  root: string,
): string[] {
  const at = path.resolve(root);
  const named = new Map(volumes.map((v) => [v.id, v.name]));
  return attachments
    .filter((a) => a.status !== 'detached' && typeof a.hostRoot === 'string' && path.resolve(a.hostRoot) === at)
    .map((a) => `volume ${named.get(a.volumeId) ?? a.volumeId} (attachment ${a.id}, ${a.status}${a.transport ? `, transport ${a.transport}` : ''})`);
}

/** `simulate stop` refused while attachments go through the simulated host (CONFLICT). */
export function simulatedHostInUseError(uses: readonly string[], root: string): BerthError {
  const listed = uses.slice(0, 10).concat(uses.length > 10 ? [`and ${uses.length - 10} more`] : []);
  return new BerthError('CONFLICT', `not stopping the simulated host at ${root}: ${uses.length === 1 ? 'an attachment goes' : `${uses.length} attachments go`} through it —\n  ${listed.join('\n  ')}`, {
    hint: 'detach them first (`berth detach VOLUME --simulate`), or stop it anyway with `berth simulate stop --force` (their devices and links go; the records stay until a forced detach or `berth reconcile`)',
    details: { root, attachments: uses.length },
  });
}
