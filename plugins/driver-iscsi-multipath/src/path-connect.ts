import { BerthError } from '@berth/core';
import { devPath, messageOf, targetKey, type ChapCredentials } from '@berth/iscsi';
import type { PathTarget } from './multipath-connection.js';
import { emptyProgress, type MultipathContext, type PathOutcome } from './multipath-context.js';
import { pathError } from './path-errors.js';

/** The derived grace window is this share of how long the first `--login` took... */
export const GRACE_SHARE = 0.5;

/** ...and at least this long, in ms (a healthy path is never cut for scheduling noise). */
export const GRACE_MIN_MS = 250;

/** What `connectPaths` hands back: every path's outcome, and the undo of the given-up ones still running. */
export interface ConnectedPaths {
  outcomes: PathOutcome[];
  /** Resolves when every path given up at the grace window has been undone (await before returning). */
  stragglersUndone: Promise<void>;
  /** The grace window used, in ms, when one closed on stragglers. */
  graceMs?: number;
}

/**
 * Connect every path, in parallel (`degraded`: one after the other, the first up wins, as os-brick
 * falls back to one device). A parallel connect returns once every path has come up or failed,
 * or, when some are still trying to log in, once the grace window after the first login has
 * closed: `stragglerGraceMs`, by default a share of how long the first `--login` took (the paths'
 * logins start together and a healthy one takes about as long as another; a reused session starts
 * no window). A path still without a session then is given up (its login
 * killed, its record undone in the background) and reported `failed`; a path past its login is
 * waited for. A dead portal costs the attach the grace window, not its login timeout. Never throws.
 */
export async function connectPaths(
  ctx: MultipathContext,
  targets: readonly PathTarget[],
  auth: ChapCredentials | undefined,
  options: { signal: AbortSignal; degraded: boolean; byDiscovery: ReadonlySet<string> },
): Promise<ConnectedPaths> {
  const { signal, byDiscovery } = options;
  if (options.degraded) {
    // One path, in the order given: the first that comes up is the device.
    const outcomes: PathOutcome[] = [];
    for (const target of targets) {
      if (outcomes.some((o) => o.status === 'up')) outcomes.push({ target, status: 'unused', progress: emptyProgress() });
      else outcomes.push(await connectPath(ctx, target, auth, { signal, createdRecord: byDiscovery.has(targetKey(target)) }));
    }
    return { outcomes, stragglersUndone: Promise.resolve() };
  }

  const cut = new AbortController();
  const outcomes: Array<PathOutcome | undefined> = targets.map(() => undefined);
  let graceMs: number | undefined;
  let timer: NodeJS.Timeout | undefined;
  let closeGrace: () => void = () => undefined;
  const graceClosed = new Promise<void>((resolve) => {
    closeGrace = resolve;
  });
  const inSession = targets.map(() => false);
  const running = targets.map(async (target, i) => {
    const outcome = await connectPath(ctx, target, auth, {
      signal,
      cut: cut.signal,
      createdRecord: byDiscovery.has(targetKey(target)),
      onSession: (loginMs) => {
        inSession[i] = true;
        // Only a real login says how long a healthy one takes: a reused session took none. The
        // logins of all paths start at about the same time (after the same record commands).
        if (loginMs !== undefined && graceMs === undefined) startGrace(loginMs);
      },
    });
    outcomes[i] = outcome;
    return outcome;
  });
  function startGrace(tookMs: number): void {
    graceMs = Math.round(ctx.options.stragglerGraceMs ?? Math.min(ctx.options.portalTimeoutMs, Math.max(GRACE_MIN_MS, tookMs * GRACE_SHARE)));
    timer = setTimeout(() => {
      cut.abort(
        new BerthError('TIMEOUT', `had no session when the grace window closed (${graceMs} ms after the first login; stragglerGraceMs)`, {
          hint: 'check that the portal is reachable from this host and its target service runs; the other paths carry the volume, and the next attach (or `berth reconcile`) adds this one',
        }),
      );
      closeGrace();
    }, graceMs);
    timer.unref();
  }
  const allSettled = Promise.all(running).then(() => undefined);
  await Promise.race([allSettled, graceClosed]);
  if (timer !== undefined) clearTimeout(timer);
  if (!cut.signal.aborted) return { outcomes: outcomes.filter((o): o is PathOutcome => o !== undefined), stragglersUndone: Promise.resolve() };

  // The grace window closed: the paths still waiting for a session were cut (their undo goes on
  // meanwhile); those with a session are on their way to a disk and are waited for.
  await Promise.all(running.filter((_, i) => inSession[i]));
  const settledAtCut = outcomes.slice();
  const result: PathOutcome[] = targets.map((target, i) => settledAtCut[i] ?? { target, status: 'failed', error: pathError(target, cut.signal.reason), progress: emptyProgress() });
  const stragglersUndone = Promise.all(
    running.map(async (promise, i) => {
      if (settledAtCut[i] !== undefined) return;
      const late = await promise;
      // Up just as the window closed: too late for this map; it is undone like the others.
      if (late.status === 'up') await ctx.lifecycle.release(late.target, late.progress);
      ctx.logger.warn({ portal: late.target.portalText, graceMs }, 'path given up at the grace window; the next attach or `berth reconcile` can add it');
    }),
  ).then(() => undefined);
  return { outcomes: result, stragglersUndone, ...(graceMs === undefined ? {} : { graceMs }) };
}

/**
 * One path: the LUN lifecycle's connect (session, its login within `portalTimeoutMs` or until
 * `cut`, targeted scan, device, WWN). Never throws: a failed path is undone and reported.
 */
async function connectPath(
  ctx: MultipathContext,
  target: PathTarget,
  auth: ChapCredentials | undefined,
  options: { signal: AbortSignal; cut?: AbortSignal; createdRecord: boolean; onSession?: (loginMs: number | undefined) => void },
): Promise<PathOutcome> {
  const { signal, cut } = options;
  let hadSession = false;
  try {
    const lun = await ctx.lifecycle.connect(
      { ...target, ...(auth === undefined ? {} : { auth }) },
      {
        signal,
        createdRecord: options.createdRecord,
        namePortal: true,
        ...(cut === undefined ? {} : { cut }),
        onSession: (loginMs) => {
          hadSession = true;
          options.onSession?.(loginMs);
        },
      },
    );
    ctx.logger.info({ iqn: target.iqn, portal: target.portalText, lun: target.lun, device: devPath(lun.device.name), wwn: lun.wwn }, 'path up');
    return { target, status: 'up', device: lun.device, ...(lun.wwn === undefined ? {} : { wwn: lun.wwn }), progress: lun.progress };
  } catch (error) {
    // A path cut at the grace window (still without a session) says so, unless its own step
    // already named the portal's timeout; a path that failed on its own keeps its own error.
    const named = BerthError.is(error) && error.code === 'TIMEOUT' && error.message.includes(target.portalText);
    const wasCut = cut?.aborted === true && !signal.aborted && !hadSession && !named;
    const failure = pathError(target, wasCut ? cut.reason : error);
    ctx.logger.warn({ iqn: target.iqn, portal: target.portalText, lun: target.lun, error: messageOf(failure) }, 'path failed');
    return { target, status: 'failed', error: failure, progress: emptyProgress() };
  }
}
