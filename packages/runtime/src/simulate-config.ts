import path from 'node:path';
import { configProblems, invalidConfigError, lazySchema } from '@berth/core';
import { z } from '@berth/core/zod';

/**
 * The `simulate` section of the config file: which plugins run on berth's simulated host instead
 * of the machine, and where that host lives. Runtime's own section (core's config does not know
 * the simulator); `--simulate` and `BERTH_SIMULATE=1` switch it on.
 */
export const zSimulateConfig = lazySchema(() => z.strictObject({
  /** Run the listed plugins on the simulated host (`--simulate`, `BERTH_SIMULATE=1`). */
  enabled: z.boolean().default(false),
  /**
   * The plugins whose transports need what the simulated host plays (iSCSI login, SCSI disks,
   * dm-multipath, udev); every other plugin (loop devices, tgtd, the stable links) stays on the
   * machine.
   */
  plugins: z.array(z.string().min(1)).default(['@berth/driver-iscsi', '@berth/driver-iscsi-multipath']),
  /** The simulated host's root: its `/sys`, `/dev`, `/etc/iscsi` and fake tools (default `<dataDir>/simhost`). */
  root: z.string().min(1).optional(),
  /** Work files of the real-backed disks (default `<dataDir>/simhost-work`). */
  workDir: z.string().min(1).optional(),
  /** udev's lag: how long after a disk appears its `/dev/disk/by-*` links do, ms (the host's default when unset). */
  deviceDelayMs: z.number().int().min(0).max(60_000).optional(),
  /** The package that provides the simulated host; loaded only when enabled. */
  module: z.string().min(1).default('@berth/simhost'),
}));
/** The resolved `simulate` section, with its paths made absolute. */
export type SimulateConfig = Omit<z.output<typeof zSimulateConfig>, 'root' | 'workDir'> & { root: string; workDir: string };

/** The config file without its `simulate` section (what core's config validates), and that section. */
export function splitSimulateSection(file: unknown): { rest: unknown; section: unknown } {
  if (file === null || typeof file !== 'object' || Array.isArray(file) || !('simulate' in file)) return { rest: file, section: undefined };
  const { simulate: section, ...rest } = file as Record<string, unknown>;
  return { rest, section };
}

/**
 * Resolve the `simulate` section: the file's values, `BERTH_SIMULATE` over `enabled`, then the
 * caller's explicit switch; throws CONFIG naming every problem (and `file`, the config file it is in).
 */
export function resolveSimulateConfig(
  section: unknown,
  env: Record<string, string | undefined>,
  dataDir: string,
  enabled?: boolean,
  file?: string,
): SimulateConfig {
  const result = zSimulateConfig.safeParse(section ?? {});
  if (!result.success) {
    throw invalidConfigError(configProblems(result.error.issues, () => ({ kind: 'file', ...(file === undefined ? {} : { file }) }), ['simulate']));
  }
  const parsed = result.data;
  const fromEnv = env.BERTH_SIMULATE === undefined || env.BERTH_SIMULATE === '' ? undefined : ['1', 'true', 'yes'].includes(env.BERTH_SIMULATE);
  return {
    ...parsed,
    enabled: enabled ?? fromEnv ?? parsed.enabled,
    root: path.resolve(dataDir, parsed.root ?? 'simhost'),
    workDir: path.resolve(dataDir, parsed.workDir ?? 'simhost-work'),
  };
}
