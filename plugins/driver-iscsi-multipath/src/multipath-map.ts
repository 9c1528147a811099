import { BerthError, type Logger } from '@berth/core';
import type { DeviceWaiter, HostFs } from '@berth/host';
import { blockName, dmName, dmUuid, findHoldingDm, multipathIdOf, slavesOf, withRetry, type MultipathClient } from '@berth/iscsi';
import { messageOf } from '@berth/iscsi';

/** What the map helpers reach the host through. */
export interface MapHost {
  fs: HostFs;
  waiter: DeviceWaiter;
  multipath: MultipathClient;
  logger: Logger;
  commandTimeoutMs: number;
}

/** A multipath map as sysfs shows it. */
export interface MultipathMap {
  /** `dm-N`. */
  dm: string;
  /** `dm/name`: the wwid unless `user_friendly_names` (then `mpathN`). */
  name: string;
  /** `dm/uuid` without `mpath-`: the wwid. */
  multipathId: string;
}

// udev makes /dev/dm-N and /dev/mapper/NAME; devtmpfs reports them through inotify on /dev.
const DEV = '/dev';

function isWaitTimeout(error: unknown): boolean {
  return error instanceof Error && error.name === 'WaitTimeoutError';
}

/** The multipath map `dm` (`dm-N`), read from sysfs; `undefined` when it is gone or is no multipath map. */
export async function readMap(fs: HostFs, dm: string): Promise<MultipathMap | undefined> {
  const id = await multipathIdOf(fs, dm);
  if (id === undefined) return undefined;
  return { dm: blockName(dm), name: (await dmName(fs, dm)) ?? id, multipathId: id };
}

/** The multipath map holding any of `devices`, when there is one with its /dev node. */
async function holdingMap(fs: HostFs, devices: readonly string[]): Promise<MultipathMap | undefined> {
  const dm = await findHoldingDm(fs, devices);
  if (dm === undefined || !(await fs.exists(`/dev/${dm}`))) return undefined;
  return readMap(fs, dm);
}

/**
 * The multipath map over `devices` (every one with scsi_wwn `wwn`): the one multipathd made by
 * itself, else the one it makes after `multipath -a WWID` and `multipathd add path /dev/sdX` for
 * each device (os-brick's way under `find_multipaths strict`), waited for on /dev events until
 * `timeoutMs` or the signal. A map whose uuid is another wwid is an error, not this volume's map.
 */
export async function ensureMap(
  host: MapHost,
  devices: readonly string[],
  wwn: string,
  options: { timeoutMs: number; signal: AbortSignal },
): Promise<MultipathMap> {
  const { fs, waiter, multipath, logger } = host;
  const call = { signal: options.signal, timeoutMs: host.commandTimeoutMs };
  let map = await holdingMap(fs, devices);
  if (map === undefined) {
    await multipath.addWwid(wwn, call);
    const added = await Promise.all(devices.map(async (d) => ({ device: d, outcome: await multipath.addPath(d, call) })));
    const blacklisted = added.filter((a) => a.outcome === 'blacklisted').map((a) => a.device);
    if (blacklisted.length === devices.length) {
      throw new BerthError('HOST_UNSUPPORTED', `multipathd refuses the paths of ${wwn}: ${blacklisted.map((d) => `/dev/${d}`).join(', ')} are blacklisted`, {
        hint: 'remove the blacklist entry that matches these disks (vendor IET, product VIRTUAL-DISK for tgtd) from /etc/multipath.conf, then `systemctl reload multipathd`; `multipath -t` shows the configuration in effect',
        details: { wwn, blacklisted },
      });
    }
    if (blacklisted.length > 0) logger.warn({ wwn, blacklisted }, 'multipathd reports some paths as blacklisted');
    logger.info({ wwn, devices }, 'wwid listed and paths handed to multipathd; waiting for the map');
    try {
      map = await waiter.waitUntil(DEV, () => holdingMap(fs, devices), {
        timeoutMs: options.timeoutMs,
        signal: options.signal,
        what: `the multipath map of ${wwn}`,
      });
    } catch (error) {
      if (!isWaitTimeout(error)) throw error;
      throw new BerthError('TIMEOUT', `multipathd made no map for ${wwn} within ${options.timeoutMs} ms (paths ${devices.map((d) => `/dev/${d}`).join(', ')})`, {
        cause: error,
        hint: 'check `multipath -ll` and `multipath -v3` for why (blacklist, find_multipaths, a stale map); `journalctl -u multipathd` has multipathd\'s side',
        details: { wwn, devices },
      });
    }
  }
  if (map.multipathId !== wwn) {
    throw new BerthError('DRIVER_ERROR', `${map.dm} holds ${devices.join(', ')} but is the map of ${map.multipathId}, not of ${wwn}`, {
      hint: `another volume's map took these disks: look at \`multipath -ll\` and remove the stale map (\`multipath -f ${map.name}\`) once nothing uses it`,
      details: { dm: map.dm, multipathId: map.multipathId, wwn },
    });
  }
  return map;
}

/**
 * Wait (on /dev events, with the waiter's short poll for sysfs) until every device is a slave of
 * the map, at most `timeoutMs`; returns the devices that are not. A path multipathd has not taken
 * yet does not fail the attach: it is reported.
 */
export async function waitForSlaves(host: MapHost, map: MultipathMap, devices: readonly string[], options: { timeoutMs: number; signal: AbortSignal }): Promise<string[]> {
  const missing = async (): Promise<string[]> => {
    const slaves = new Set(await slavesOf(host.fs, map.dm));
    return devices.filter((d) => !slaves.has(d));
  };
  try {
    return await host.waiter.waitUntil(
      DEV,
      async () => {
        const left = await missing();
        return left.length === 0 ? left : undefined;
      },
      { timeoutMs: options.timeoutMs, signal: options.signal, what: `every path to join ${map.dm}` },
    );
  } catch (error) {
    if (!isWaitTimeout(error)) throw error;
    return missing();
  }
}

/**
 * Whether the map can take I/O: `multipath -C dm-N` (some path checker-up and dm-active),
 * retried with backoff while it says "no usable paths" (multipathd's checker has not run yet),
 * until `timeoutMs` or the signal. A multipath without `-C` falls back to sysfs: the map has a
 * slave. Throws when it never becomes usable.
 */
export async function waitUntilUsable(host: MapHost, map: MultipathMap, options: { timeoutMs: number; signal: AbortSignal }): Promise<'multipath -C' | 'sysfs'> {
  const budget = AbortSignal.any([options.signal, AbortSignal.timeout(options.timeoutMs)]);
  let last = '';
  try {
    return await withRetry(
      async () => {
        const usability = await host.multipath.mapUsability(map.dm, { signal: options.signal, timeoutMs: host.commandTimeoutMs });
        if (usability.usable === true) return 'multipath -C' as const;
        if (usability.usable === 'unknown') {
          if ((await slavesOf(host.fs, map.dm)).length > 0) return 'sysfs' as const;
          last = `${map.dm} has no path`;
        } else {
          last = usability.detail;
        }
        throw new NotYetUsable(last);
      },
      { attempts: 100, baseDelayMs: 50, maxDelayMs: 1_000, signal: budget, isRetryable: (error) => error instanceof NotYetUsable },
    );
  } catch (error) {
    if (options.signal.aborted) throw options.signal.reason instanceof Error ? options.signal.reason : error;
    if (!(error instanceof NotYetUsable) && !budget.aborted) throw error;
    throw new BerthError('DRIVER_ERROR', `multipath map ${map.dm} (${map.name}) has no usable path after ${options.timeoutMs} ms: ${last || messageOf(error)}`, {
      hint: `look at \`multipath -ll ${map.name}\` and \`multipathd show paths\`: every path may be failed or the checker may disagree with the target`,
      details: { dm: map.dm, name: map.name },
    });
  }
}

class NotYetUsable extends Error {}

/** Whether `map` (by its WWID, not its `dm-N` alone) is still in sysfs or `/dev`. */
export async function mapStillThere(fs: HostFs, map: MultipathMap): Promise<boolean> {
  if (await fs.exists(`/sys/block/${map.dm}`)) {
    // Another dm device's uuid at that minor: ours is gone. No uuid readable: ours, half removed.
    const uuid = await dmUuid(fs, map.dm);
    return uuid === undefined || uuid === `mpath-${map.multipathId}`;
  }
  return fs.exists(`/dev/${map.dm}`);
}

/**
 * Flush and remove the map (`multipath -f NAME` with the bounded retries a busy map needs), then
 * wait until `/sys/block/dm-N` and `/dev/dm-N` are gone. `absent` when there was no map.
 */
export async function removeMap(
  host: MapHost,
  map: MultipathMap,
  options: { signal: AbortSignal | undefined; timeoutMs: number; attempts: number; retryDelayMs: number },
): Promise<'removed' | 'absent'> {
  const outcome = await host.multipath.flushMap(map.name, {
    ...(options.signal === undefined ? {} : { signal: options.signal }),
    timeoutMs: host.commandTimeoutMs,
    retry: { attempts: options.attempts, baseDelayMs: options.retryDelayMs, maxDelayMs: 8_000 },
    onRetry: (event) => host.logger.warn({ map: map.name, attempt: event.attempt, delayMs: Math.round(event.delayMs), error: messageOf(event.error) }, 'multipath -f failed; retrying'),
  });
  await waitForMapGone(host, map, options.timeoutMs, options.signal);
  return outcome === 'absent' ? 'absent' : 'removed';
}

/**
 * Resolve once `/sys/block/dm-N` and `/dev/dm-N` are gone — or are another map's: device-mapper
 * gives a removed map's minor to the next map made (another volume's attach beside this detach),
 * so `dm-N` over another WWID means this one is gone. TIMEOUT error at the deadline.
 */
export async function waitForMapGone(host: MapHost, map: MultipathMap, timeoutMs: number, signal: AbortSignal | undefined): Promise<void> {
  try {
    await host.waiter.waitUntil(
      DEV,
      async () => ((await mapStillThere(host.fs, map)) ? undefined : true),
      { timeoutMs, ...(signal === undefined ? {} : { signal }), what: `${map.dm} to go away` },
    );
  } catch (error) {
    if (!isWaitTimeout(error)) throw error;
    throw new BerthError('TIMEOUT', `multipath map ${map.dm} (${map.name}) was flushed but is still there after ${timeoutMs} ms`, {
      cause: error,
      hint: `look at \`dmsetup info ${map.name}\` for its open count, and \`multipath -ll\``,
      details: { dm: map.dm, name: map.name },
    });
  }
}
