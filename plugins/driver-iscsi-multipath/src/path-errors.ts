import { BerthError, toBerthError } from '@berth/core';
import type { MultipathVolume, PathTarget } from './multipath-connection.js';
import type { PathOutcome } from './multipath-context.js';

/** A path's failure as a BerthError naming the portal. */
export function pathError(target: PathTarget, error: unknown): BerthError {
  const base = toBerthError(error, 'DRIVER_ERROR');
  const prefix = `${target.portalText} (${target.iqn} LUN ${target.lun})`;
  return new BerthError(base.code, base.message.startsWith(target.portalText) ? base.message : `${prefix}: ${base.message}`, {
    cause: error,
    ...(base.hint === undefined ? {} : { hint: base.hint }),
    details: { ...base.details, portal: target.portalText, iqn: target.iqn, lun: target.lun },
  });
}

/** The error when no path came up: every portal's reason, the code they share (or the first's). */
export function noPathError(volume: MultipathVolume, outcomes: PathOutcome[], signal: AbortSignal): BerthError {
  const failed = outcomes.filter((o) => o.error !== undefined);
  if (signal.aborted && failed.every((o) => o.error?.code === 'TIMEOUT' || o.error?.code === 'CANCELLED')) {
    return toBerthError(signal.reason ?? failed[0]?.error, 'CANCELLED');
  }
  const code = failed[0]?.error?.code ?? 'DRIVER_ERROR';
  const reasons = failed.map((o) => o.error?.message ?? o.target.portalText).join('; ');
  const hint =
    failed.find((o) => o.error?.hint !== undefined)?.error?.hint ??
    'check that the portals are reachable from this host and that the backend exports the volume to this initiator';
  return new BerthError(code, `none of the ${outcomes.length} path(s) of ${volume.primary.iqn} LUN ${volume.primary.lun} could be connected: ${reasons}`, {
    hint,
    details: { paths: outcomes.map((o) => ({ portal: o.target.portalText, iqn: o.target.iqn, lun: o.target.lun, status: o.status, ...(o.error === undefined ? {} : { error: o.error.toJSON() }) })) },
  });
}
