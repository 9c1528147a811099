import { BerthError } from '@berth/core';
import { devPath, messageOf, targetKey, type ChapCredentials, type LeftLogin, leftPathOf, type LeftPath } from '@berth/iscsi';
import type { PathTarget } from './multipath-connection.js';
import { emptyProgress, type MultipathContext, type PathOutcome } from './multipath-context.js';
import { pathError } from './path-errors.js';

/** A login still running this share of the first healthy login's time after it would have ended is a straggler... */
export const GRACE_SHARE = 0.5;

/** ...and the grace is at least this long, in ms (a healthy login is never cut for scheduling noise). */
export const GRACE_MIN_MS = 250;

/** What `connectPaths` hands back: every path's outcome, and the undo of the given-up ones still running. */
export interface ConnectedPaths {
  outcomes: PathOutcome[];
  /** Resolves when every path given up has been undone (await before returning). */
  stragglersUndone: Promise<void>;
  /** The grace used, in ms, when some path was given up. */
  graceMs?: number;
  /**
   * Logins given up that iscsid may still carry on (their records kept), complete once
   * `stragglersUndone` resolved: the caller persists and finishes them.
   */
  left: LeftPath[];
}

/**
 * Connect every path, in parallel (`degraded`: one after the other, the first up wins, as os-brick
 * falls back to one device). Each `--login` may take as long as the first login that succeeded,
 * plus a grace (`stragglerGraceMs`; by default that login's time again for each other login that
 * ran beside it, plus half, at least 250 ms — or, when shorter, what two or more logins that ended say:
 * the slowest of them plus one turn of the host's logins per path still open, plus half, at least
 * 250 ms), counted from its own start: a login still running then — or a session still awaited after rc 15 — is
 * given up (killed, its record undone in the background while the map is built) and reported
 * `failed`. A dead portal thus costs an attach about one healthy login, not its login timeout,
 * and a path still making its node record or past its login is never cut. Never throws.
 */
export async function connectPaths(
  ctx: MultipathContext,
  targets: readonly PathTarget[],
  auth: ChapCredentials | undefined,
  options: { signal: AbortSignal; degraded: boolean; byDiscovery: ReadonlySet<string> },
): Promise<ConnectedPaths> {
  const { signal, byDiscovery } = options;
  const left: LeftPath[] = [];
  const onLoginLeft = (target: PathTarget) => (login: LeftLogin): void => {
    left.push(leftPathOf(target, login));
  };
  if (options.degraded) {
    // One path, in the order given: the first that comes up is the device.
    const outcomes: PathOutcome[] = [];
    for (const target of targets) {
      if (outcomes.some((o) => o.status === 'up')) outcomes.push({ target, status: 'unused', progress: emptyProgress() });
      else outcomes.push(await connectPath(ctx, target, auth, { signal, createdRecord: byDiscovery.has(targetKey(target)), onLoginLeft: onLoginLeft(target) }));
    }
    return { outcomes, stragglersUndone: Promise.resolve(), left };
  }

  const settled: Array<PathOutcome | undefined> = targets.map(() => undefined);
  let allowedMs: number | undefined;
  // The first login's forecast of `allowedMs`, before what the other logins took is known.
  let forecastMs: number | undefined;
  let inLogin = 0;
  let graceMs: number | undefined;
  let cutAny = false;
  const cuts = targets.map(() => new AbortController());
  const loginStarts: Array<number | undefined> = targets.map(() => undefined);
  const timers: Array<NodeJS.Timeout | undefined> = targets.map(() => undefined);
  const inSession = targets.map(() => false);
  // The logins that ended with a session: how many, and the slowest of them (from its own start).
  let loggedIn = 0;
  let slowestLoginMs = 0;
  const early: Array<unknown> = targets.map(() => undefined);
  const done: Array<() => void> = [];
  const doneOrFailed = targets.map(
    (_, i) =>
      new Promise<void>((resolve) => {
        done[i] = resolve;
      }),
  );
  /** Give path `i` up at its login's start + the allowed time (once that time is known). */
  const schedule = (i: number): void => {
    const startedAt = loginStarts[i];
    if (allowedMs === undefined || startedAt === undefined || inSession[i] === true || timers[i] !== undefined) return;
    const cut = cuts[i]!;
    const fire = (): void => {
      if (inSession[i] === true) return;
      cutAny = true;
      cut.abort(
        new BerthError('TIMEOUT', `did not log in within ${Math.round(allowedMs ?? 0)} ms, the healthy logins' time plus the grace (stragglerGraceMs ${graceMs} ms)`, {
          hint: 'check that the portal is reachable from this host and its target service runs; the other paths carry the volume, and the next attach (or `berth reconcile`) adds this one',
        }),
      );
    };
    const timer = setTimeout(fire, Math.max(0, startedAt + allowedMs - performance.now()));
    timer.unref();
    timers[i] = timer;
  };
  /**
   * What the logins that ended say, once two have: with `loggedIn` of them done by
   * `slowestLoginMs`, each path still open needs about one more of their turns
   * (`slowestLoginMs / loggedIn`) on the same host; the open paths may take the slowest login
   * plus those turns and half again, at least `GRACE_MIN_MS`. The bound is the shorter of this and
   * the first login's forecast (which allows for every login queueing), recomputed as paths end:
   * a dead portal then costs the attach about one healthy turn past the slowest healthy login, not
   * the forecast for a host where all of them queue. A configured `stragglerGraceMs` is kept as it is.
   */
  const tighten = (): void => {
    // One login says no more than the forecast made from it already did.
    if (ctx.options.stragglerGraceMs !== undefined || loggedIn < 2 || forecastMs === undefined) return;
    const open = targets.map((_, i) => i).filter((i) => !inSession[i] && early[i] === undefined);
    if (open.length === 0) return;
    const turnsMs = (slowestLoginMs / loggedIn) * open.length;
    const bound = Math.min(forecastMs, slowestLoginMs + Math.max(GRACE_MIN_MS, turnsMs * (1 + GRACE_SHARE)));
    if (bound === allowedMs) return;
    allowedMs = bound;
    graceMs = Math.round(bound - slowestLoginMs);
    for (const i of open) {
      clearTimeout(timers[i]);
      timers[i] = undefined;
      schedule(i);
    }
  };
  const running = targets.map(async (target, i) => {
    const outcome = await connectPath(ctx, target, auth, {
      signal,
      cut: cuts[i]!.signal,
      createdRecord: byDiscovery.has(targetKey(target)),
      onLoginLeft: onLoginLeft(target),
      onLogin: () => {
        loginStarts[i] = performance.now();
        inLogin += 1;
        schedule(i);
      },
      onSession: (loginMs) => {
        inSession[i] = true;
        clearTimeout(timers[i]);
        if (loginStarts[i] !== undefined) inLogin -= 1;
        if (loginMs !== undefined) {
          loggedIn += 1;
          slowestLoginMs = Math.max(slowestLoginMs, loginMs);
        }
        // The first real login says how long a healthy one takes (a reused session took none).
        // Logins that ran beside it shared the host with it: on a loaded host they end one after
        // another, so each of them may take that long again.
        if (loginMs !== undefined && allowedMs === undefined) {
          const alongside = inLogin + 1;
          graceMs = Math.round(ctx.options.stragglerGraceMs ?? Math.max(GRACE_MIN_MS, loginMs * (alongside * (1 + GRACE_SHARE) - 1)));
          allowedMs = Math.min(ctx.options.portalTimeoutMs, loginMs + graceMs);
          forecastMs = allowedMs;
          targets.forEach((_, j) => schedule(j));
        }
        tighten();
      },
      onFailed: (error) => {
        if (early[i] === undefined && loginStarts[i] !== undefined && !inSession[i]) inLogin -= 1;
        early[i] ??= error;
        if (cuts[i]!.signal.aborted) done[i]?.();
        else tighten();
      },
    });
    settled[i] = outcome;
    done[i]?.();
    return outcome;
  });
  // Every path has come up, failed, or been given up (its undo may still run).
  await Promise.all(doneOrFailed);
  for (const t of timers) clearTimeout(t);
  if (!cutAny) {
    const outcomes = await Promise.all(running);
    return { outcomes, stragglersUndone: Promise.resolve(), left };
  }
  const result: PathOutcome[] = targets.map(
    (target, i) => settled[i] ?? { target, status: 'failed', error: pathError(target, cutError(target, early[i], cuts[i]!.signal.reason)), progress: emptyProgress() },
  );
  const stragglersUndone = Promise.all(
    running.map(async (promise, i) => {
      if (settled[i] !== undefined && result[i] === settled[i]) return;
      const late = await promise;
      // Up just as it was given up: too late for this map; it is undone like the others.
      if (late.status === 'up') await ctx.lifecycle.release(late.target, late.progress);
      ctx.logger.warn({ portal: late.target.portalText, graceMs }, 'path given up; the next attach or `berth reconcile` can add it');
    }),
  ).then(() => undefined);
  return { outcomes: result, stragglersUndone, left, ...(graceMs === undefined ? {} : { graceMs }) };
}

/** A given-up path's error: its own when it names the portal's timeout (the budget, "still logging in"), else the cut's. */
function cutError(target: PathTarget, own: unknown, cut: unknown): unknown {
  const named = BerthError.is(own) && own.code === 'TIMEOUT' && own.message.includes(target.portalText);
  return named ? own : cut;
}

/**
 * One path: the LUN lifecycle's connect (session, its login within `portalTimeoutMs` or until
 * `cut`, targeted scan, device, WWN). Never throws: a failed path is undone and reported.
 */
export async function connectPath(
  ctx: MultipathContext,
  target: PathTarget,
  auth: ChapCredentials | undefined,
  options: {
    signal: AbortSignal;
    cut?: AbortSignal;
    createdRecord: boolean;
    onLogin?: () => void;
    onSession?: (loginMs: number | undefined) => void;
    onFailed?: (error: unknown) => void;
    onLoginLeft?: (left: LeftLogin) => void;
  },
): Promise<PathOutcome> {
  const { signal, cut } = options;
  try {
    const lun = await ctx.lifecycle.connect(
      { ...target, ...(auth === undefined ? {} : { auth }) },
      {
        signal,
        createdRecord: options.createdRecord,
        namePortal: true,
        ...(cut === undefined ? {} : { cut }),
        ...(options.onLogin === undefined ? {} : { onLogin: options.onLogin }),
        ...(options.onSession === undefined ? {} : { onSession: options.onSession }),
        ...(options.onFailed === undefined ? {} : { onFailed: options.onFailed }),
        ...(options.onLoginLeft === undefined ? {} : { onLoginLeft: options.onLoginLeft }),
      },
    );
    ctx.logger.info({ iqn: target.iqn, portal: target.portalText, lun: target.lun, device: devPath(lun.device.name), wwn: lun.wwn }, 'path up');
    return { target, status: 'up', device: lun.device, ...(lun.wwn === undefined ? {} : { wwn: lun.wwn }), progress: lun.progress };
  } catch (error) {
    const failure = pathError(target, cut?.aborted === true && !signal.aborted ? cutError(target, error, cut.reason) : error);
    ctx.logger.warn({ iqn: target.iqn, portal: target.portalText, lun: target.lun, error: messageOf(failure) }, 'path failed');
    return { target, status: 'failed', error: failure, progress: emptyProgress() };
  }
}
