import { setTimeout as delay } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';
import { z } from '@berth/core/zod';
import { BerthError, lazySchema, type Logger } from '@berth/core';
import type { HostFs } from '@berth/host';
import { FailureList } from './failure-list.js';
import { findIscsiSession } from './iscsi-sysfs.js';
import { targetKey } from './lun-connection.js';
import type { LunTarget } from './lun-device.js';
import type { LunLifecycle } from './lun-lifecycle.js';
import { messageOf, type LeftLogin } from './node-session.js';
import { formatPortal } from './portal.js';
import { toPortal } from './target.js';

/**
 * A login given up while it was still running, as a transport persists it in its attach state:
 * iscsid carries the login on (killing `iscsiadm --login` does not stop it), and a session that
 * comes has no disk. Its node record is kept until that session is logged out or iscsid's own
 * bound has passed; then both go.
 */
export const zLeftLogin = lazySchema(() => z.object({
  target_iqn: z.string(),
  target_portal: z.string(),
  target_lun: z.number().int().nonnegative(),
  kernel_lun: z.number().int().nonnegative(),
  /** When the login started (ISO time). */
  started_at: z.string(),
  /** When iscsid gives it up at the latest (ISO time): its start + `login_timeout` × `initial_login_retry_max` as written on the record. */
  until: z.string(),
}));

/** A left login as an attach state stores it. */
export type LeftLoginEntry = z.output<typeof zLeftLogin>;

/** A login given up while iscsid may still be logging in to its portal, until when it may. */
export interface LeftPath {
  target: LunTarget;
  startedAt: number;
  /** iscsid's bound (epoch ms): no session can come after it. */
  until: number;
}

/** What finishing a left login reaches the host through. */
export interface LeftLoginHost {
  fs: HostFs;
  lifecycle: LunLifecycle;
  logger: Logger;
}

/** How often the session of a left login is looked for: sysfs has no events (doubling up to the last). */
const LOOK_MS = [100, 200, 400, 800, 1_000] as const;

/** A left login as `LunLifecycle` reported it (`LunConnectOptions.onLoginLeft`). */
export function leftPathOf(target: LunTarget, left: LeftLogin): LeftPath {
  return { target, startedAt: left.startedAt, until: left.startedAt + left.boundMs };
}

/** The state's entry of a left login. */
export function leftEntryOf(left: LeftPath): LeftLoginEntry {
  const { target } = left;
  return {
    target_iqn: target.iqn,
    target_portal: target.portalText,
    target_lun: target.lun,
    kernel_lun: target.kernelLun,
    started_at: new Date(left.startedAt).toISOString(),
    until: new Date(left.until).toISOString(),
  };
}

/** The left logins a persisted state names (none in a state written before they were kept). */
export function leftPathsOf(state: { left_logins?: readonly LeftLoginEntry[] | undefined } | undefined): LeftPath[] {
  return (state?.left_logins ?? []).flatMap((e) => {
    const startedAt = Date.parse(e.started_at);
    const until = Date.parse(e.until);
    if (Number.isNaN(startedAt) || Number.isNaN(until)) return [];
    try {
      const portal = toPortal(e.target_portal);
      return [{ target: { iqn: e.target_iqn, portal, portalText: formatPortal(portal), lun: e.target_lun, kernelLun: e.kernel_lun }, startedAt, until }];
    } catch {
      return [];
    }
  });
}

/** One entry per portal: the later login wins (an attach gave the portal up again). */
export function mergeLeft(...lists: ReadonlyArray<readonly LeftPath[]>): LeftPath[] {
  const byTarget = new Map<string, LeftPath>();
  for (const left of lists.flat()) {
    const key = targetKey(left.target);
    const had = byTarget.get(key);
    if (had === undefined || had.startedAt < left.startedAt) byTarget.set(key, left);
  }
  return [...byTarget.values()];
}

/** `entries` without those of `done` (compared as stored). */
export function withoutLeft(entries: readonly LeftLoginEntry[], done: readonly LeftPath[]): LeftLoginEntry[] {
  const gone = new Set(done.map((d) => JSON.stringify(leftEntryOf(d))));
  return entries.filter((e) => !gone.has(JSON.stringify(e)));
}

/** The slice of a transport's attach state the left logins need: a state with no `device` holds only them. */
export interface LeftLoginState {
  volumeId: string;
  device?: string | undefined;
  left_logins?: LeftLoginEntry[] | undefined;
}

/**
 * The attach state store call the left logins need (`AttachStateFileStore.update`): every change
 * of a volume's state here is a read-modify-write of what the file holds *now*, atomic against
 * every other one of that volume, in this process and in others. A transport's locks are per
 * target (or per volume queue) and per process: a watcher forgetting a login at one target, a
 * connect at another, a reconcile in a CLI each wrote back what it read before, and the last
 * writer dropped the others' left logins or device record.
 */
export interface LeftLoginStates<S extends LeftLoginState> {
  update(volumeId: string, change: (current: S | undefined) => S | null | undefined, signal?: AbortSignal): Promise<S | undefined>;
}

/**
 * Keep in the volume's state what a failed connect left to iscsid, with any already there (one
 * per portal): on the state as it is now (device and all, whatever connect or process wrote it),
 * or else `fresh` (a state with no device, only the logins), so the rollback's disconnect, a
 * reconcile or a later connect finishes them in any process. A save that fails only warns: the
 * caller's watcher still finishes them here.
 */
export async function saveLeftLogins<S extends LeftLoginState>(
  states: LeftLoginStates<S>,
  volumeId: string,
  fresh: () => S,
  left: readonly LeftPath[],
  logger: Logger,
): Promise<void> {
  await states
    .update(volumeId, (current) => {
      const base = current ?? fresh();
      return { ...base, left_logins: mergeLeft(leftPathsOf(current), left).map(leftEntryOf) };
    })
    .catch((error: unknown) => {
      logger.warn({ volumeId, portals: left.map((l) => l.target.portalText), error: messageOf(error) }, 'could not save the given-up login in the attach state: only this process finishes it');
    });
}

/** Take `done` out of the volume's state (as it is now); a state left with neither a device nor a login goes. */
export async function forgetLeftLogins<S extends LeftLoginState>(states: LeftLoginStates<S>, volumeId: string, done: readonly LeftPath[]): Promise<void> {
  await states.update(volumeId, (state) => {
    if (state?.left_logins === undefined) return undefined;
    const rest = withoutLeft(state.left_logins, done);
    if (rest.length === state.left_logins.length) return undefined;
    if (rest.length === 0 && state.device === undefined) return null;
    const kept: S = { ...state, left_logins: rest };
    if (rest.length === 0) delete kept.left_logins;
    return kept;
  });
}

/**
 * A disconnect is done with what it read of the volume's state (`seen`, before its host work):
 * take out of the state as it is *now* the device it removed and the left logins it finished,
 * and nothing else. The file goes when nothing is left; what another connect, repair or process
 * wrote meanwhile stays (a device of a connect at another target, a login a failed connect gave
 * up since) — removing the file, as a disconnect did, dropped it. The device counts as removed
 * while the state still records it as `seen` did (all but the left logins equal); `deviceless`
 * makes a state with it taken out (no device, only what the left logins need).
 */
export async function forgetDetached<S extends LeftLoginState>(
  states: LeftLoginStates<S>,
  volumeId: string,
  seen: S | undefined,
  finished: readonly LeftPath[],
  deviceless: (state: S) => S,
): Promise<void> {
  await states.update(volumeId, (current) => {
    // None, or a file that is not a state: nothing in it to keep.
    if (current === undefined) return null;
    const had = current.left_logins ?? [];
    const rest = withoutLeft(had, finished);
    const deviceDone = seen !== undefined && sameApartFromLeft(current, seen);
    if (rest.length === 0 && (deviceDone || current.device === undefined)) return null;
    if (!deviceDone && rest.length === had.length) return undefined;
    const kept: S = deviceDone ? deviceless(current) : { ...current };
    if (rest.length === 0) delete kept.left_logins;
    else kept.left_logins = rest;
    return kept;
  });
}

/** Whether two states are one record but for their left logins (keys in any order). */
function sameApartFromLeft(a: LeftLoginState, b: LeftLoginState): boolean {
  const { left_logins: _a, ...restA } = a;
  const { left_logins: _b, ...restB } = b;
  return isDeepStrictEqual(restA, restB);
}

/**
 * Finish a left login for a disconnect, waiting for it (within `signal`); a connect of the target
 * in flight is a failure in `failures` (the state stays for a retry), as is any error.
 */
export async function finishLeftLoginForDetach(
  host: LeftLoginHost,
  left: LeftPath,
  options: { signal: AbortSignal; failures: FailureList; keep: readonly string[] },
): Promise<void> {
  const step = `finish the login given up at ${left.target.portalText}`;
  const outcome = await finishLeftLogin(host, left, { ...options, wait: true }).catch((error: unknown) => {
    options.failures.add(step, error);
    return 'failed' as const;
  });
  if (outcome === 'pending') {
    options.failures.add(step, new BerthError('TIMEOUT', `a connect of ${left.target.iqn} at ${left.target.portalText} is in flight: the login an earlier attach gave up there is left to it`, {
      hint: 'detach again once the other attach is done',
    }));
  }
}

/**
 * Finish a left login: with `wait`, first wait (bounded by iscsid's bound and `signal`) for its
 * session; then, once the session is there or the bound has passed, log it out and delete the
 * record unless its session serves a LUN or attachment (`LunLifecycle.finishLeftLogin`). `pending`
 * when it cannot be finished yet (the login may still come up, or a connect of the target is in
 * flight); `done` otherwise. Failures go to `failures`.
 */
export async function finishLeftLogin(
  host: LeftLoginHost,
  left: LeftPath,
  options: {
    signal: AbortSignal | undefined;
    failures: FailureList;
    keep?: readonly string[];
    wait: boolean;
    /**
     * The wait's timers do not keep the process alive (`watchLeftLogins`: a CLI that is done
     * exits, and the state keeps what is left). Without it a caller awaits the finish, so its
     * timers are ref'd: a CLI whose other timers are all unref'd (a rollback's disconnect waiting
     * for a login) would otherwise exit mid-wait, with the operation still running.
     */
    background?: boolean;
  },
): Promise<'done' | 'pending'> {
  const { fs, lifecycle, logger } = host;
  const { target } = left;
  let session = await findIscsiSession(fs, target);
  if (options.wait && session === undefined && Date.now() < left.until) {
    logger.info({ iqn: target.iqn, portal: target.portalText, until: new Date(left.until).toISOString() }, 'waiting for a given-up login: iscsid may still bring its session up until its bound');
  }
  for (let look = 0; options.wait && session === undefined && Date.now() < left.until; look++) {
    // Ref'd while a caller waits on it; unref'd in the background watcher only.
    const ms = Math.min(LOOK_MS[Math.min(look, LOOK_MS.length - 1)]!, Math.max(0, left.until - Date.now()));
    await delay(ms, undefined, { ref: options.background !== true, ...(options.signal === undefined ? {} : { signal: options.signal }) });
    session = await findIscsiSession(fs, target);
  }
  if (session === undefined && Date.now() < left.until) return 'pending';
  const outcome = await lifecycle.finishLeftLogin(target, { signal: options.signal, failures: options.failures, ...(options.keep === undefined ? {} : { keep: options.keep }) });
  if (outcome === 'busy') return 'pending';
  logger.info(
    { iqn: target.iqn, portal: target.portalText, session: session?.sid, outcome },
    outcome === 'closed' ? 'a given-up login is finished: its session (if any) logged out, its record deleted' : 'a given-up login came up and serves a LUN now: it stays',
  );
  return 'done';
}

/**
 * Finish `lefts` in this process while it stays alive (a long-running agent or API): each is
 * watched until its session comes or iscsid's bound passes, then finished; `forget` is told each
 * one that is done (to take it out of the volume's state). Never throws, never keeps the process
 * alive; what it could not finish stays in the state for the next connect, disconnect or reconcile.
 */
export function watchLeftLogins(host: LeftLoginHost, lefts: readonly LeftPath[], forget: (done: LeftPath) => Promise<void>): void {
  for (const left of lefts) {
    void (async () => {
      const failures = new FailureList(true);
      for (let look = 0; ; look++) {
        const outcome = await finishLeftLogin(host, left, { signal: undefined, failures, wait: true, background: true });
        if (outcome === 'done') break;
        // A connect of the target in flight: ask again after it (bounded: the next call finishes it).
        if (look >= LOOK_MS.length) return;
        await delay(LOOK_MS[look]!, undefined, { ref: false });
      }
      if (failures.size === 0) await forget(left);
      else host.logger.warn({ portal: left.target.portalText, errors: failures.size }, 'a given-up login could not be finished; the next attach, detach or reconcile tries again');
    })().catch((error: unknown) => {
      host.logger.warn({ portal: left.target.portalText, error: messageOf(error) }, 'watching a given-up login failed; the next attach, detach or reconcile finishes it');
    });
  }
}
