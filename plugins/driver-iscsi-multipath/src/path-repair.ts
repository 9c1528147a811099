import { BerthError, type ConnectedDevice, type PathRepair } from '@berth/core';
import { checkIdentity, devPath, formatHctl, messageOf, type ChapCredentials, leftEntryOf, leftPathOf, leftPathsOf, mergeLeft, type LeftPath } from '@berth/iscsi';
import { devicelessState, type AttachPath, type AttachState } from './attach-state.js';
import { mapSlaves, missingPortals, type MapSlave } from './multipath-connected.js';
import { lunKey, type PathTarget } from './multipath-connection.js';
import type { MultipathContext } from './multipath-context.js';
import { ensureMap, readMap, type MultipathMap } from './multipath-map.js';
import { connectPath } from './path-connect.js';
import { pathsOfState } from './path-locate.js';

/** The queue of a state's volume, as its connects and disconnects name it (its primary path). */
export function stateLockKey(state: AttachState): string {
  const primary = pathsOfState(state).find((t) => t.iqn === state.target_iqn && t.lun === state.target_lun && t.portalText === state.target_portal);
  return primary === undefined ? `state|${state.volumeId}` : `volume|${lunKey(primary)}`;
}

/** What a repair needs from the driver: its volume queue, and the finish of logins it gave up. */
export interface RepairHooks {
  withVolumeLock<T>(key: string, fn: () => Promise<T>): Promise<T>;
  /** Logins iscsid may carry on after a repair's login was cut: the state keeps them; finish them in this process. */
  watchLeft(key: string, volumeId: string, left: readonly LeftPath[]): void;
}

/** What became of one missing portal. */
type PathAdd = { target: PathTarget; left: LeftPath[] } & ({ added: AttachPath; ms: number } | { failure: string });

/**
 * Add the portals a volume's map lacks (`missingPortals`: given up at attach, or failed and gone),
 * as `berth reconcile` and the agent's path check ask (`TransportDriver.repairPaths`). The listed
 * device's identity first: a map that is another device now, or gone, is left alone. Then, under
 * the volume's queue, each missing portal gets the attach's per-path connect (record, login within
 * the node timeouts, targeted scan, WWN equal to the volume's or refused) and is handed to
 * multipathd as the attach's map phase does (waiting until the map holds it); the state says the
 * path is active. A portal still dead is undone by that connect as at attach. Idempotent.
 */
export async function repairMissingPaths(ctx: MultipathContext, listed: ConnectedDevice, signal: AbortSignal, hooks: RepairHooks): Promise<PathRepair> {
  const { device } = listed;
  const volumeId = device.meta?.['volumeId'];
  if (device.meta?.['mode'] !== 'multipath' || typeof volumeId !== 'string') return { changed: false, detail: `${device.path}: no multipath attach of berth's names it; no path to add` };
  try {
    const identity = await checkIdentity(ctx.fs, device, `adding the missing paths of ${device.path}`);
    if (identity.status === 'gone') return { changed: false, detail: `${device.path} is gone: no map to add a path to` };
  } catch (error) {
    if (BerthError.is(error) && error.code === 'CONFLICT') return { changed: false, detail: error.message };
    throw error;
  }
  const before = await ctx.states.load(volumeId).catch(() => undefined);
  if (before === undefined) return { changed: false, detail: `${device.path}: volume ${volumeId} has no attach state here; no path to add` };
  const key = stateLockKey(before);
  return hooks.withVolumeLock(key, async () => {
    // Read again in the queue: a disconnect or connect may have run since.
    const state = await ctx.states.load(volumeId).catch(() => undefined);
    const map = state?.dm === undefined ? undefined : await readMap(ctx.fs, state.dm);
    if (state?.mode !== 'multipath' || state.device !== device.path || map === undefined || map.multipathId !== state.scsi_wwn) {
      return { changed: false, detail: `${device.path} is no longer the map of volume ${volumeId}` };
    }
    const slaves = await mapSlaves(ctx.fs, map.dm);
    const missing = missingPortals(state, slaves, Date.now());
    if (missing.length === 0) {
      // A failed path still in the map is iscsid's to recover (its session reconnects by itself).
      const down = slaves.filter((p) => p.state !== 'active').map((p) => `${p.portal ?? p.device} is ${p.state}`);
      return { changed: false, detail: `${device.path} (${map.name}): every path is in the map${down.length === 0 ? '' : `; ${down.join(', ')}: iscsid recovers its session`}` };
    }
    const auth = await chapOfPath(ctx, slaves.find((p) => p.state === 'active' && p.portal !== undefined), signal);
    const results = await Promise.all(missing.map((target) => addPath(ctx, target, auth, map, signal)));
    const left = results.flatMap((r) => r.left);
    const added = results.flatMap((r) => ('added' in r ? [r.added] : []));
    if (added.length > 0 || left.length > 0) {
      // On the state as it is now: the volume's queue is this process's only, and a reconcile or
      // a watcher (or another process) may have forgotten a left login since it was read above.
      // Paths are added only to the attach they were added for; the left logins are kept whatever.
      await ctx.states.update(volumeId, (current) => {
        if (current === undefined) {
          // Disconnected meanwhile: only the new left logins need a state (the earlier ones went with it).
          if (left.length === 0) return undefined;
          const { left_logins: _gone, ...base } = devicelessState(state);
          return withPaths(base, [], left);
        }
        return withPaths(current, current.device === state.device && current.dm === state.dm ? added : [], left);
      }, signal);
    }
    if (left.length > 0) hooks.watchLeft(key, volumeId, left);
    const lines = results.map((r) => ('added' in r ? `added path ${r.target.portalText} (${r.added.device?.slice('/dev/'.length) ?? '?'}) in ${Math.round(r.ms)} ms` : `${r.target.portalText} still down: ${r.failure}`));
    return { changed: added.length > 0, detail: lines.join('; ') };
  });
}

/** The attach's per-path connect for one missing portal, then the map phase for its disk; undone when it does not join. */
async function addPath(ctx: MultipathContext, target: PathTarget, auth: ChapCredentials | undefined, map: MultipathMap, signal: AbortSignal): Promise<PathAdd> {
  const started = performance.now();
  const left: LeftPath[] = [];
  const outcome = await connectPath(ctx, target, auth, { signal, createdRecord: false, onLoginLeft: (l) => left.push(leftPathOf(target, l)) });
  if (outcome.status !== 'up' || outcome.device === undefined) return { target, left, failure: oneLine(outcome.error?.message ?? 'no disk') };
  const disk = outcome.device;
  let failure: string;
  if (outcome.wwn !== map.multipathId) {
    failure = `its LUN is ${outcome.wwn === undefined ? 'of unknown WWN' : `WWN ${outcome.wwn}`}, not ${map.multipathId}: another LUN, refused`;
    ctx.logger.error({ portal: target.portalText, iqn: target.iqn, wwn: outcome.wwn, expected: map.multipathId }, 'path refused: its LUN has another WWN');
  } else {
    try {
      const joined = await ensureMap(ctx.mapHost, [disk.name], map.multipathId, { timeoutMs: ctx.options.mapTimeoutMs, signal });
      if (joined.dm === map.dm) {
        await ctx.lifecycle.keep(target, outcome.progress);
        const ms = performance.now() - started;
        ctx.logger.info({ dm: map.dm, portal: target.portalText, device: devPath(disk.name), ms: Math.round(ms) }, 'missing path added to the map');
        return {
          target,
          left,
          ms,
          added: { target_iqn: target.iqn, target_portal: target.portalText, target_lun: target.lun, kernel_lun: target.kernelLun, state: 'active', sid: disk.sid, hctl: formatHctl(disk.hctl), device: devPath(disk.name) },
        };
      }
      failure = `${devPath(disk.name)} went into ${joined.dm}, not ${map.dm}`;
    } catch (error) {
      failure = oneLine(messageOf(error));
    }
  }
  await ctx.lifecycle.release(target, outcome.progress);
  return { target, left, failure };
}

/**
 * The CHAP a path of the map logged in with, read from its node record (`--show`: the state keeps
 * no secret; the attach wrote the connection's CHAP on every path's record). None without CHAP.
 */
async function chapOfPath(ctx: MultipathContext, path: MapSlave | undefined, signal: AbortSignal): Promise<ChapCredentials | undefined> {
  if (path?.portal === undefined) return undefined;
  const record = await ctx.iscsiadm.nodeShow({ iqn: path.iqn, portal: path.portal }, { signal, timeoutMs: ctx.options.commandTimeoutMs, showSecrets: true });
  const value = (key: string): string | undefined => {
    const v = record?.[`node.session.auth.${key}`];
    return v === undefined || v === '' || v === '<empty>' ? undefined : v;
  };
  const username = value('username');
  const password = value('password');
  if (value('authmethod') !== 'CHAP' || username === undefined || password === undefined) return undefined;
  const usernameIn = value('username_in');
  const passwordIn = value('password_in');
  return { username, password, ...(usernameIn === undefined || passwordIn === undefined ? {} : { usernameIn, passwordIn }) };
}

/** `state` with `added` paths active and `left` logins kept (one entry per portal). */
function withPaths(state: AttachState, added: readonly AttachPath[], left: readonly LeftPath[]): AttachState {
  const byPortal = new Map(added.map((p) => [`${p.target_iqn}|${p.target_portal}`, p]));
  const paths = state.paths.map((p) => {
    const target = pathsOfState({ ...state, paths: [p] })[0];
    const now = target === undefined ? undefined : byPortal.get(`${target.iqn}|${target.portalText}`);
    // The connection's own spelling of the portal stays.
    return now === undefined ? p : { ...now, target_portal: p.target_portal };
  });
  const logins = mergeLeft(leftPathsOf(state), left).map(leftEntryOf);
  const out: AttachState = { ...state, paths };
  if (logins.length > 0) out.left_logins = logins;
  return out;
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}
