import { BerthError } from '@berth/core';
import { lunKey, type MultipathVolume } from './multipath-connection.js';
import type { MultipathContext, PathOutcome } from './multipath-context.js';

/**
 * The WWN of the volume among the paths that came up: the primary path's when it is up, else the
 * one most paths agree on (ties: the first in order). A path with another WWN is another LUN.
 */
export function chooseWwn(volume: MultipathVolume, up: readonly PathOutcome[]): string {
  const primary = up.find((o) => lunKey(o.target) === lunKey(volume.primary) && o.wwn !== undefined);
  if (primary?.wwn !== undefined) return primary.wwn;
  const counts = new Map<string, number>();
  for (const o of up) if (o.wwn !== undefined) counts.set(o.wwn, (counts.get(o.wwn) ?? 0) + 1);
  let best: string | undefined;
  for (const o of up) {
    if (o.wwn === undefined) continue;
    if (best === undefined || (counts.get(o.wwn) ?? 0) > (counts.get(best) ?? 0)) best = o.wwn;
  }
  if (best === undefined) {
    throw new BerthError('DRIVER_ERROR', `no path of ${volume.primary.iqn} LUN ${volume.primary.lun} has a readable WWN (/sys/block/sdX/device/wwid)`, {
      hint: 'multipath groups paths by WWN: check the target sets a device identification VPD page (0x83) for the LUN',
    });
  }
  return best;
}

/**
 * Refuse every path that came up with another WWN than `wwn`: it leads to another LUN, not to this
 * volume. Each is marked `refused`, undone (its disk when this connect scanned it, its session when
 * nothing else uses it), logged as an error and added to `warnings`.
 */
export async function refuseOtherLuns(ctx: MultipathContext, outcomes: PathOutcome[], wwn: string, warnings: string[]): Promise<void> {
  for (const o of outcomes) {
    if (o.status !== 'up' || o.wwn === wwn) continue;
    o.status = 'refused';
    o.error = new BerthError('CONFLICT', `the LUN at ${o.target.portalText} (${o.target.iqn} LUN ${o.target.lun}) is ${o.wwn === undefined ? 'of unknown WWN' : `WWN ${o.wwn}`}, not ${wwn}: it is another LUN, not a path of this volume`, {
      hint: 'the backend returned a portal, IQN or LUN that leads to another volume: check target_portals/target_iqns/target_luns',
      details: { portal: o.target.portalText, iqn: o.target.iqn, lun: o.target.lun, wwn: o.wwn, expected: wwn },
    });
    warnings.push(o.error.message);
    ctx.logger.error({ portal: o.target.portalText, iqn: o.target.iqn, wwn: o.wwn, expected: wwn }, 'path refused: its LUN has another WWN');
    await ctx.lifecycle.release(o.target, o.progress);
  }
}
