import { toBerthError } from '@berth/core';
import { devPath, messageOf } from '@berth/iscsi';
import type { MultipathContext, PathOutcome } from './multipath-context.js';
import { ensureMap, removeMap, waitForSlaves, waitUntilUsable, type MultipathMap } from './multipath-map.js';

/** The map a connect built, and the paths that have not joined it. */
export interface MapOutcome {
  map?: MultipathMap;
  /**
   * This connect's own map (every path's disk is one its scan made): its undo may remove it. A
   * map over disks that were there before is another attachment's of the volume (a repeat
   * connect finds it): removing it would free its dm name for the next volume's map while that
   * attachment still records it.
   */
  made: boolean;
  /** Disks up but not (yet) slaves of the map. */
  notInMap: Set<string>;
}

/**
 * Build the dm-multipath map over the paths that came up (`good`, every one with `wwn`): found or
 * made (`multipath -a`, `multipathd add path`), every path waited for as a slave, then usable
 * (`multipath -C`), all within `mapTimeoutMs`. Without a usable map: with `enforce` (or when the
 * signal fired) the error is thrown; otherwise the connect degrades to the first path, as os-brick
 * falls back to a single device, and the others are released. `lap` times the steps.
 */
export async function buildMap(
  ctx: MultipathContext,
  good: PathOutcome[],
  wwn: string,
  options: { signal: AbortSignal; enforce: boolean; warnings: string[]; lap: (step: string) => void },
): Promise<MapOutcome> {
  const { signal, warnings, lap } = options;
  const { mapTimeoutMs } = ctx.options;
  const notInMap = new Set<string>();
  const devices = good.map((o) => o.device?.name ?? '');
  // A disk this connect did not scan was there before it, and so may be a map's another
  // attachment of the volume uses: such a map is never removed here (`MapOutcome.made`).
  const made = good.every((o) => o.progress.scanned);
  const drop = async (map: MultipathMap, warning: string): Promise<void> => {
    if (made) await dropMap(ctx, map, warning);
    else ctx.logger.warn({ dm: map.dm, wwn }, 'leaving the multipath map: it was there before this connect (another attachment of the volume uses it)');
  };
  const mapBudget = AbortSignal.any([signal, AbortSignal.timeout(mapTimeoutMs)]);
  let map: MultipathMap | undefined;
  try {
    map = await ensureMap(ctx.mapHost, devices, wwn, { timeoutMs: mapTimeoutMs, signal });
    lap('map');
    const notIn = await waitForSlaves(ctx.mapHost, map, devices, { timeoutMs: mapTimeoutMs, signal: mapBudget });
    for (const o of good) {
      if (o.device !== undefined && notIn.includes(o.device.name)) {
        notInMap.add(o.device.name);
        warnings.push(`${devPath(o.device.name)} (${o.target.portalText}) has not joined ${map.dm}`);
      }
    }
    const readiness = await waitUntilUsable(ctx.mapHost, map, { timeoutMs: mapTimeoutMs, signal });
    lap('ready');
    ctx.logger.debug({ dm: map.dm, readiness }, 'multipath map usable');
    return { map, made, notInMap };
  } catch (error) {
    if (signal.aborted || options.enforce) {
      if (map !== undefined) await drop(map, 'undo: could not remove the map');
      throw error;
    }
    // No map within its budget (blacklisted, a policy that will not map it): one path, as
    // os-brick falls back to a single device.
    const why = toBerthError(error, 'DRIVER_ERROR').message;
    warnings.push(`no usable multipath map (${why}): connected through one path only`);
    ctx.logger.warn({ wwn, error: why }, 'no usable multipath map: degrading to one path');
    if (map !== undefined) await drop(map, 'could not remove the half-made map');
    await keepFirstPathOnly(ctx, good);
    lap('map');
    return { made: false, notInMap };
  }
}

/** Keep the first path (in the order given) that is up; release the others (they become `unused`). */
export async function keepFirstPathOnly(ctx: MultipathContext, up: PathOutcome[]): Promise<void> {
  for (const o of up.slice(1)) {
    o.status = 'unused';
    await ctx.lifecycle.release(o.target, o.progress);
    delete o.device;
  }
}

/** Remove a map this connect made (`MapOutcome.made`; bounded, never throws). */
export async function dropMap(ctx: MultipathContext, map: MultipathMap, warning: string): Promise<void> {
  await removeMap(ctx.mapHost, map, { signal: ctx.lifecycle.cleanupSignal(), timeoutMs: ctx.options.deviceTimeoutMs, attempts: 2, retryDelayMs: ctx.options.flushRetryDelayMs }).catch(
    (error: unknown) => ctx.logger.warn({ dm: map.dm, error: messageOf(error) }, warning),
  );
}
