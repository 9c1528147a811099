import type { Device } from '@berth/core';
import { deviceIsTargetLun, holdersOf, identityAt, inUseBy, messageOf, scsiWwnOf, type FailureList } from '@berth/iscsi';
import type { PathTarget } from './multipath-connection.js';
import type { MultipathContext } from './multipath-context.js';
import { readMap, removeMap } from './multipath-map.js';

/**
 * The WWN a late disk of the volume must have: the known one, else the one every located own path
 * shows. `null` when the own paths disagree (then no late disk is claimed); `undefined` when
 * nothing tells (then any WWN passes, as `locatePaths` accepts any when it knows none).
 */
export async function expectedWwn(ctx: Pick<MultipathContext, 'fs'>, wwn: string | undefined, ownDevices: readonly string[]): Promise<string | null | undefined> {
  if (wwn !== undefined) return wwn;
  const seen = new Set<string | undefined>();
  for (const d of ownDevices) seen.add(await scsiWwnOf(ctx.fs, d));
  if (seen.size > 1) return null;
  return [...seen][0];
}

/**
 * Whether a disk at `target`'s LUN that the disconnect did not list (it appeared afterwards: a
 * scan an interrupted connect wrote) is the volume's own, by `locatePaths`' rule: sysfs confirms
 * it is this target's LUN, no other attachment uses it, it has the expected WWN (when known), and
 * every map holding it is the volume's — such a map (multipathd built it on the late disk) is
 * removed first, once per dm however many targets ask. Anything else: not the volume's.
 */
export function latePathOwner(
  ctx: Pick<MultipathContext, 'fs' | 'logger' | 'options' | 'mapHost'>,
  target: PathTarget,
  expected: string | null | undefined,
  opts: { inUse: readonly Device[] | undefined; signal: AbortSignal | undefined; failures: FailureList },
  removals: Map<string, Promise<boolean>>,
): (device: string) => Promise<boolean> {
  const { fs, logger, options } = ctx;
  return async (device) => {
    if (expected === null) return false;
    if ((await deviceIsTargetLun(fs, device, target)) === undefined) return false;
    if (inUseBy(opts.inUse, device, await identityAt(fs, device))) return false;
    if (expected !== undefined && (await scsiWwnOf(fs, device)) !== expected) return false;
    for (const dm of await holdersOf(fs, device).catch(() => [] as string[])) {
      let removal = removals.get(dm);
      if (removal === undefined) {
        removal = (async () => {
          const map = await readMap(fs, dm);
          if (map === undefined || expected === undefined || map.multipathId !== expected) return false;
          if (inUseBy(opts.inUse, dm, await identityAt(fs, dm))) return false;
          const outcome = await opts.failures.attempt(`remove multipath map ${map.name} (${dm}) over a late path`, () =>
            removeMap(ctx.mapHost, map, { signal: opts.signal, timeoutMs: options.deviceTimeoutMs, attempts: options.flushAttempts, retryDelayMs: options.flushRetryDelayMs }),
          );
          return outcome !== undefined;
        })().catch((error: unknown) => {
          logger.warn({ dm, error: messageOf(error) }, 'could not remove the map over a late path');
          return false;
        });
        removals.set(dm, removal);
      }
      if (!(await removal)) {
        logger.warn({ device: `/dev/${device}`, dm }, 'a late disk of this LUN is held by a map that is not this volume’s: its session stays (`berth reconcile` reports it)');
        return false;
      }
    }
    return true;
  };
}
