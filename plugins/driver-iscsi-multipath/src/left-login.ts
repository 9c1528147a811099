import { setTimeout as delay } from 'node:timers/promises';
import { FailureList, findIscsiSession, formatPortal, messageOf, targetKey, toPortal, type LeftLogin } from '@berth/iscsi';
import type { AttachState, LeftLoginEntry } from './attach-state.js';
import type { PathTarget } from './multipath-connection.js';
import type { MultipathContext } from './multipath-context.js';

/** A path given up while iscsid may still be logging in to it, until when it may. */
export interface LeftPath {
  target: PathTarget;
  startedAt: number;
  /** iscsid's bound (epoch ms): no session can come after it. */
  until: number;
}

/** How often the session of a left login is looked for: sysfs has no events (doubling up to the last). */
const LOOK_MS = [100, 200, 400, 800, 1_000] as const;

/** A left login as `LunLifecycle` reported it. */
export function leftPathOf(target: PathTarget, left: LeftLogin): LeftPath {
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
export function leftPathsOf(state: AttachState | undefined): LeftPath[] {
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

/**
 * Finish a left login: with `wait`, first wait (bounded by iscsid's bound and `signal`) for its
 * session; then, once the session is there or the bound has passed, log it out and delete the
 * record unless its session serves a LUN or attachment (`LunLifecycle.finishLeftLogin`). `pending`
 * when it cannot be finished yet (the login may still come up, or a connect of the target is in
 * flight); `done` otherwise. Failures go to `failures`.
 */
export async function finishLeftLogin(
  ctx: Pick<MultipathContext, 'fs' | 'lifecycle' | 'logger'>,
  left: LeftPath,
  options: { signal: AbortSignal | undefined; failures: FailureList; keep?: readonly string[]; wait: boolean },
): Promise<'done' | 'pending'> {
  const { fs, lifecycle, logger } = ctx;
  const { target } = left;
  let session = await findIscsiSession(fs, target);
  for (let look = 0; options.wait && session === undefined && Date.now() < left.until; look++) {
    // Unref'd: a CLI that is done exits; the state keeps what is left for the next call.
    await delay(Math.min(LOOK_MS[Math.min(look, LOOK_MS.length - 1)]!, Math.max(0, left.until - Date.now())), undefined, { ref: false, ...(options.signal === undefined ? {} : { signal: options.signal }) });
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
export function watchLeftLogins(ctx: Pick<MultipathContext, 'fs' | 'lifecycle' | 'logger'>, lefts: readonly LeftPath[], forget: (done: LeftPath) => Promise<void>): void {
  for (const left of lefts) {
    void (async () => {
      const failures = new FailureList(true);
      for (let look = 0; ; look++) {
        const outcome = await finishLeftLogin(ctx, left, { signal: undefined, failures, wait: true });
        if (outcome === 'done') break;
        // A connect of the target in flight: ask again after it (bounded: the next call finishes it).
        if (look >= LOOK_MS.length) return;
        await delay(LOOK_MS[look]!, undefined, { ref: false });
      }
      if (failures.size === 0) await forget(left);
      else ctx.logger.warn({ portal: left.target.portalText, errors: failures.size }, 'a given-up login could not be finished; the next attach, detach or reconcile tries again');
    })().catch((error: unknown) => {
      ctx.logger.warn({ portal: left.target.portalText, error: messageOf(error) }, 'watching a given-up login failed; the next attach, detach or reconcile finishes it');
    });
  }
}
