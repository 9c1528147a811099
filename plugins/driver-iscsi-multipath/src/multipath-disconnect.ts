import { BerthError, type Device, type DisconnectOptions } from '@berth/core';
import { checkIdentity, devPath, FailureList, holdersOf, identityAt, inUseBy, messageOf, slavesOf, targetKey, withRetry, finishLeftLoginForDetach, forgetDetached, leftPathsOf, refuseIfHeld, type LeftPath } from '@berth/iscsi';
import { devicelessState, type AttachState } from './attach-state.js';
import type { MultipathVolume, PathTarget } from './multipath-connection.js';
import type { MultipathContext } from './multipath-context.js';
import { expectedWwn, latePathOwner } from './late-path.js';
import { mapStillThere, readMap, removeMap, type MultipathMap } from './multipath-map.js';
import { locatePaths, pathsOfDevice, pathsOfState } from './path-locate.js';

/**
 * Disconnect a multipath volume, os-brick's order: flush and remove the map (without `force` a
 * map that will not flush stops everything, nothing removed), delete every path's disk each on its
 * own, wait until multipathd forgot them, log out per portal where nothing else uses the session,
 * forget the state. The device's identity is checked first: a path now naming another map or disk
 * touches nothing (CONFLICT). Devices in `inUse` (other attachments') are never touched. Without
 * `force`, a map or path something holds (a mount, a process, a stacked device) is refused busy,
 * untouched (`refuseIfHeld`), after `holderGraceMs`.
 */
export async function disconnectVolume(
  ctx: MultipathContext,
  volume: MultipathVolume,
  device: Device | undefined,
  opts: DisconnectOptions,
  volumeId: string | undefined,
  what: string,
): Promise<void> {
  const { fs, multipath, options, logger, lifecycle } = ctx;
  const { signal, force } = opts;
  if (device !== undefined) await checkIdentity(fs, device, what);
  const state = volumeId === undefined ? undefined : await ctx.states.load(volumeId).catch(() => undefined);
  const fromDevice = pathsOfDevice(device);
  const known = [...pathsOfState(state), ...fromDevice.map((p) => p.target)];
  const wwn = state?.scsi_wwn || device?.scsi_wwn || device?.multipath_id || undefined;
  const marks = new Map<string, number>();
  for (const t of [...known, ...(volume.listed ?? []), volume.primary]) marks.set(targetKey(t), lifecycle.closeMark(t));
  const located = await locatePaths(fs, volume, known, wwn, logger);
  const map = await locateMap(ctx, device, state, located.flatMap((p) => (p.device === undefined ? [] : [p.device.name])), wwn);
  if (map !== undefined && inUseBy(opts.inUse, map.dm, await identityAt(fs, map.dm))) {
    logger.info({ dm: map.dm }, 'another attachment uses this multipath device: it stays, with its paths and sessions');
    return;
  }
  // Disks another attachment uses stay, and so do their sessions.
  const keep: string[] = [];
  for (const p of located) if (p.device !== undefined && inUseBy(opts.inUse, p.device.name, await identityAt(fs, p.device.name))) keep.push(p.device.name);
  const ownDevices = located.flatMap((p) => (p.device === undefined || keep.includes(p.device.name) ? [] : [p.device.name]));
  // Nothing changes while something holds the map or one of its paths (a mount, a process, a
  // device stacked on it — the map on its own paths aside, it is flushed here): `multipath -f`
  // refuses an open map, but a path's disk is deleted under its user all the same.
  if (!force) {
    const held = [
      ...(map === undefined ? [] : [{ node: `/dev/${map.dm}`, sysName: map.dm }]),
      ...ownDevices.map((name) => ({ node: devPath(name), sysName: name })),
    ];
    await refuseIfHeld(ctx, held, { graceMs: options.holderGraceMs, timeoutMs: options.commandTimeoutMs, signal, ...(map === undefined ? {} : { ignoreStacked: [map.dm] }) });
  }
  const failures = new FailureList(true);
  // Before the own disks go: a disk that appears later must show the WWN they showed.
  const lateWwn = await expectedWwn(ctx, wwn, ownDevices);

  if (map !== undefined) {
    const node = `/dev/${map.dm}`;
    if (await fs.exists(node)) {
      await failures.attempt(`flush ${node}`, () => lifecycle.flusher.flush(node, signal));
    }
    if (failures.size === 0 || force) {
      await failures.attempt(`remove multipath map ${map.name} (${map.dm})`, () =>
        removeMap(ctx.mapHost, map, { signal, timeoutMs: options.deviceTimeoutMs, attempts: options.flushAttempts, retryDelayMs: options.flushRetryDelayMs }),
      );
    }
    // A map that will not flush may still hold writes: its paths stay, so nothing is lost.
    if (failures.size > 0 && !force) failures.throwIfAny(`${what}: nothing was removed`);
  } else if (state?.mode === 'single' || device?.meta?.['mode'] === 'single') {
    const single = located.find((p) => p.device !== undefined && devPath(p.device.name) === (state?.device ?? device?.path));
    if (single?.device !== undefined && !keep.includes(single.device.name) && (await fs.exists(devPath(single.device.name)))) {
      const node = devPath(single.device.name);
      await failures.attempt(`flush ${node}`, () => lifecycle.flusher.flush(node, signal));
      if (failures.size > 0 && !force) failures.throwIfAny(`${what}: nothing was removed`);
    }
  }

  // The map is gone (or force): every path's device goes, each on its own, so one dead path
  // does not keep the others.
  await Promise.all(
    located.map(async (p) => {
      if (p.device === undefined || keep.includes(p.device.name)) return;
      // At the SCSI device the listing confirmed: the name may be another disk's by now (the map's
      // flush and removal take seconds, and other connects run meanwhile).
      await lifecycle.removeDisk(p.device.name, { signal, failures, flush: false, label: p.target.portalText, ...(p.device.sdevDir === undefined ? {} : { sdevDir: p.device.sdevDir }) });
    }),
  );

  // os-brick waits until multipathd forgot the deleted disks, so that a new disk taking one of
  // their names is not mistaken for the old path. Best effort: it only warns.
  if (map !== undefined && ownDevices.length > 0) await waitUntilForgotten(ctx, ownDevices, signal);

  // A map whose flush failed under force: multipathd's own removal, os-brick's last resort.
  if (map !== undefined && (await mapStillThere(fs, map))) {
    const outcome = await failures.attempt(`ask multipathd to delete map ${map.name}`, () => multipath.delMap(map.name, { signal, timeoutMs: options.commandTimeoutMs }));
    if (outcome === 'failed') {
      failures.add(
        `delete map ${map.name}`,
        new BerthError('DRIVER_ERROR', `multipathd could not delete map ${map.name}: it is still open`, {
          hint: `close whatever holds ${map.name} (\`dmsetup info ${map.name}\`), then \`multipath -f ${map.name}\``,
        }),
      );
    }
  }

  // One logout per portal, and only where no other LUN uses the session. A disk of the volume's
  // LUN that appeared since the listing (a scan an interrupted connect wrote) goes with it.
  // A portal with a login an attach gave up is not decided here: with no session yet the plain
  // decision would delete the record iscsid still logs in with (the session then comes up owned by
  // nobody). Its left login is finished below instead, once its session is there or its bound passed.
  const lefts = leftPathsOf(state);
  const leftAt = new Set(lefts.map((l) => targetKey(l.target)));
  const byTarget = new Map<string, PathTarget>();
  for (const p of located) if (!byTarget.has(targetKey(p.target)) && !leftAt.has(targetKey(p.target))) byTarget.set(targetKey(p.target), p.target);
  const removals = new Map<string, Promise<boolean>>();
  await Promise.all(
    [...byTarget.values()].map((target) =>
      lifecycle
        .closeSessionIfUnused(target, ownDevices, {
          signal,
          failures,
          mark: marks.get(targetKey(target)) ?? 0,
          keep,
          faultPoints: true,
          namePortal: true,
          lateOwn: latePathOwner(ctx, target, lateWwn, { inUse: opts.inUse, signal, failures }, removals),
        })
        .catch((error: unknown) => failures.add(`close the session to ${target.portalText}`, error)),
    ),
  );

  // Logins an attach gave up that iscsid may have carried on: a session that came has no disk, and
  // its record was kept. Each goes once its session is there or iscsid's bound passed (waited
  // for, within the signal), unless the session serves another LUN or attachment.
  await Promise.all(lefts.map((left) => finishLeftLoginForDetach(ctx, left, { signal, failures, keep })));

  if (failures.size === 0 && keep.length === 0) await forgetStates(ctx, volume, volumeId, state, lefts);
  failures.throwIfAny(what);
  logger.info({ iqn: volume.primary.iqn, lun: volume.primary.lun, dm: map?.dm, paths: located.length }, 'volume disconnected');
}

/** multipathd still lists a deleted disk (retried until it does not). */
class StillListed extends Error {}

/** Wait (bounded, backing off) until `multipathd show paths` lists none of `devices`; warns when it still does. */
async function waitUntilForgotten(ctx: MultipathContext, devices: readonly string[], signal: AbortSignal): Promise<void> {
  const budget = AbortSignal.any([signal, AbortSignal.timeout(Math.min(ctx.options.deviceTimeoutMs, 5_000))]);
  let listed: string[] = [];
  try {
    await withRetry(
      async () => {
        listed = (await ctx.multipath.pathDevices({ signal: budget, timeoutMs: ctx.options.commandTimeoutMs })).filter((d) => devices.includes(d));
        if (listed.length > 0) throw new StillListed();
      },
      { attempts: 20, baseDelayMs: 50, maxDelayMs: 500, signal: budget, isRetryable: (error) => error instanceof StillListed },
    );
  } catch (error) {
    // multipathd not answering, or still listing them: neither keeps the detach from finishing.
    ctx.logger.warn({ devices: listed.length > 0 ? listed : devices, error: messageOf(error) }, 'multipathd may still list the deleted paths');
  }
}

/**
 * The volume's multipath map now: the one the caller's device names, the persisted one, the one
 * holding one of its paths, or `/dev/mapper/<wwid>`; each only when its uuid is the volume's wwid
 * (when known) or it holds one of the volume's paths.
 */
async function locateMap(ctx: MultipathContext, device: Device | undefined, state: AttachState | undefined, ownDevices: readonly string[], wwn: string | undefined): Promise<MultipathMap | undefined> {
  const { fs } = ctx;
  const candidates: string[] = [];
  if (device?.path !== undefined && /^\/dev\/dm-\d+$/.test(device.path)) candidates.push(device.path.slice('/dev/'.length));
  if (state?.dm !== undefined) candidates.push(state.dm);
  for (const d of ownDevices) candidates.push(...(await holdersOf(fs, d)));
  if (wwn !== undefined) {
    try {
      const real = await fs.realpath(`/dev/mapper/${wwn}`);
      const name = real.split('/').pop();
      if (name !== undefined && /^dm-\d+$/.test(name)) candidates.push(name);
    } catch {
      // No map under that name.
    }
  }
  for (const dm of new Set(candidates)) {
    const map = await readMap(fs, dm);
    if (map === undefined) continue;
    if (wwn !== undefined ? map.multipathId === wwn : (await slavesOf(fs, dm)).some((s) => ownDevices.includes(s))) return map;
  }
  return undefined;
}

/**
 * The disconnect is done: out of the volume's state (`seen`, read before the host work) go the
 * device it removed and the left logins it finished, from the state as it is now; the file goes
 * when nothing else is in it. What a connect, a repair or another process wrote since stays
 * (removing the file, as before, dropped it). Without a volume id: every state of the primary
 * path, each as it is now (nothing was read of them before).
 */
async function forgetStates(ctx: MultipathContext, volume: MultipathVolume, volumeId: string | undefined, seen: AttachState | undefined, finished: readonly LeftPath[]): Promise<void> {
  if (volumeId !== undefined) {
    await forgetDetached(ctx.states, volumeId, seen, finished, devicelessState);
    return;
  }
  for (const state of await ctx.states.list()) {
    if (state.target_iqn === volume.primary.iqn && state.target_lun === volume.primary.lun && state.target_portal === volume.primary.portalText) {
      await forgetDetached(ctx.states, state.volumeId, state, finished, devicelessState);
    }
  }
}
