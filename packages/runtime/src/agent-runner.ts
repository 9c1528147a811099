import { randomUUID } from 'node:crypto';
import { commandsOutlive } from '@berth/host';
import {
  AGENT_PROTOCOL,
  BerthError,
  commandsEnded,
  DEAD_OWNER_KILL_MARGIN_MS,
  failedPaths,
  KeyedLock,
  runHostStep,
  startTransportUpkeep,
  workItemErrorOf,
  zHostStepName,
  type AgentOutcome,
  type AgentRegistration,
  type AgentSession,
  type ClaimedWork,
} from '@berth/core';
import type { AgentHost } from './open-agent.js';

/** The API side an agent talks to (`@berth/client`'s AgentClient; a fake in unit tests). */
export interface AgentApi {
  register(registration: AgentRegistration): Promise<AgentSession>;
  claim(worker: string, options: { waitMs: number; limit: number; signal?: AbortSignal }): Promise<ClaimedWork[]>;
  /** `limitMs`: how long a replica may stay silent before the renewal goes to the next one. */
  renew(worker: string, id: string, options?: { limitMs?: number }): Promise<{ leaseExpiresAt: string }>;
  report(worker: string, id: string, outcome: AgentOutcome): Promise<void>;
}

/** Options of `AgentRunner`. */
export interface AgentRunnerOptions {
  host: AgentHost;
  api: AgentApi;
  /** The API's URL (named in state lines). */
  apiUrl: string;
  /** berth's version, told to the API. */
  version: string;
  /** Items run at once (default 4); a claim asks for the free slots only. */
  concurrency?: number;
  /** One line per state change (registered, fenced, lost the API, ...): `berth agent` prints them on stderr. */
  onState?: (line: string) => void;
  /** Backoff between attempts to reach the API (default 0.5 s doubling to 10 s, with jitter). */
  backoff?: { firstMs: number; maxMs: number };
  random?: () => number;
  /**
   * How often to look for connected devices whose path in use failed and move them to a live
   * path (`TransportDriver.repairPaths`, e.g. iscsi-user's portal failover), in ms; 0: never.
   * Default 30 s. Only transports that repair paths are listed; nothing runs when there are none.
   */
  pathCheckMs?: number;
  /**
   * How often the transports' `upkeep` runs (iscsi-user: a killed dead-target watcher started
   * again), in ms; 0: never. Default: the config's `upkeep.intervalMs` (5 s), as in `berth serve`.
   */
  upkeepMs?: number;
}

/** Default of `AgentRunnerOptions.pathCheckMs`. */
export const DEFAULT_PATH_CHECK_MS = 30_000;

/**
 * A network or server hiccup: wait and try again. Anything else (a bad token: UNAUTHENTICATED,
 * FORBIDDEN; a refused registration) cannot get better by trying again.
 */
function transient(error: unknown): boolean {
  if (!BerthError.is(error)) return false;
  if (error.code === 'UNAVAILABLE' || error.code === 'TIMEOUT' || error.code === 'INTERNAL') return true;
  // A replica shutting down (a rolling restart) answers 503 CANCELLED with the seconds to retry after.
  if (error.code === 'CANCELLED' && typeof error.details.retryAfterSeconds === 'number') return true;
  // The client's "cannot reach the berth API" (connection refused, reset, DNS) is a CONFIG error
  // with a cause; a CONFIG error about the URL itself has none.
  return error.code === 'CONFIG' && error.cause !== undefined;
}

/**
 * Whether the API no longer knows this agent's host: NOT_FOUND for the host (`details.kind`
 * `host`), which an agent that registered can only get once its host was removed —
 * `berth host forget`, the one way a host and its agent's registration go (an older API sends no
 * `details.reason`; a newer one `unknown-host`, or `no-agent` when a server named the host again
 * since, which made a host row with no agent).
 */
function hostGone(error: unknown): boolean {
  return BerthError.is(error) && error.code === 'NOT_FOUND' && error.details.kind === 'host';
}

/**
 * The error an agent stops with when its host was forgotten while it ran. Forget dropped the
 * host's attachments without it (it was unreachable, or taken for dead), so what berth connected
 * here may still be here while the API calls those volumes free; restarting the agent would
 * register the host anew with none of that known.
 */
export function hostForgotten(hostName: string, apiUrl: string, cause?: unknown): BerthError {
  return new BerthError(
    'NOT_FOUND',
    `host ${hostName} was forgotten at the API (berth host forget) while this agent ran: its registration and berth's records of its attachments are gone, but devices berth connected on this host (loop devices, iSCSI sessions, /dev/berth links) may still be here, their volumes free to attach elsewhere`,
    {
      hint:
        `do not just restart the agent: first stop whatever uses berth's devices on this host (see ls -l /dev/berth; losetup -a; iscsiadm -m session). ` +
        `Then start the agent again (it registers ${hostName} anew) and run \`berth reconcile --host ${hostName} --dry-run --api ${apiUrl}\`: it lists the devices of berth volumes left here, ` +
        `and \`berth reconcile --host ${hostName} --yes --api ${apiUrl}\` disconnects them; one it only reports (its volume attached on another host through the same source now) or does not list (its volume deleted since) is yours to disconnect by hand (losetup -d, iscsiadm --logout), as is every one if this host's agent token was removed from api.tokens`,
      details: { kind: 'host', host: hostName, forgotten: true },
      ...(cause === undefined ? {} : { cause }),
    },
  );
}

/** The payload's `deadlineAt` on this host's clock (`local`); NaN when it carries none. */
function deadlineOf(payload: Record<string, unknown>, local: (apiTime: string) => number): number {
  return typeof payload.deadlineAt === 'string' ? local(payload.deadlineAt) : Number.NaN;
}

/**
 * Why a claimed item must not run now, if it must not: its operation's deadline passed (on this
 * host's clock, the API's times moved by the skew `local` knows — the same reading that aborts a
 * running step at the deadline). A step run after it is one the replica no longer waits for: it
 * has cancelled the item and rolled the operation back, or is about to. The error says the step
 * touched nothing (`untouched`), which is true: it was not run. (Not the lease: a passed lease
 * only hands the item out again, to this host's agent, and the steps are idempotent.)
 */
export function tooLate(step: string, payload: Record<string, unknown>, local: (apiTime: string) => number, now = Date.now()): BerthError | undefined {
  const deadlineAt = deadlineOf(payload, local);
  if (!Number.isFinite(deadlineAt) || now < deadlineAt) return undefined;
  return new BerthError('TIMEOUT', `the operation's deadline passed before this host's agent ran step ${step}; it was not run`, {
    hint: 'the agent was stopped or busy past it (SIGSTOP, a stalled VM, a long queue on the volume); the operation rolls back, retry it',
    details: { untouched: true },
  });
}

/**
 * `berth agent`'s loop: register the host (backing off while the API cannot be reached), claim its
 * work items with a long-poll, run each with `runHostStep` (one at a time per volume, at most
 * `concurrency` at once, aborted at its deadline), renew its lease every third of it and report the
 * outcome. A 409 on renew or report means another agent or a replica took the item over (fenced):
 * the agent drops it without reporting — it is re-run or undone elsewhere. `stop()` stops claiming,
 * lets running items finish and resolves `run()`.
 */
export class AgentRunner {
  private readonly stopping = new AbortController();
  /** Aborted when `run()` fails for good: the items still running are dropped (their outcome could not be reported). */
  private readonly failed = new AbortController();
  private readonly running = new Set<Promise<void>>();
  /**
   * The items this agent runs or has queued, by id: an item claimed again while its first copy
   * still waits here (its lease passed while the agent was frozen, and the next claim handed it
   * back to the same worker) is not run twice — the first copy runs and reports it.
   */
  private readonly held = new Set<string>();
  private readonly queue = new KeyedLock(); // a `release` queued behind its volume's `connect` waits
  private readonly concurrency: number;
  private readonly firstBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly random: () => number;
  private session: AgentSession | undefined;
  /** The instance registered with the API: a fresh one per process start. */
  readonly instance = randomUUID();

  constructor(private readonly options: AgentRunnerOptions) {
    this.concurrency = Math.max(1, options.concurrency ?? 4);
    this.firstBackoffMs = options.backoff?.firstMs ?? 500;
    this.maxBackoffMs = options.backoff?.maxMs ?? 10_000;
    this.random = options.random ?? Math.random;
  }

  /** The session of the last registration (undefined before the first). */
  get current(): AgentSession | undefined {
    return this.session;
  }

  /** Register, then claim and run work until `stop()`; rejects on a fatal error (bad token, fenced for good). */
  async run(): Promise<void> {
    const signal = this.stopping.signal;
    let pathCheck: Promise<void> | undefined;
    // This host's transports' upkeep, from the start until the agent stops: it is the process that
    // runs the host's steps (an embedded `berth serve` leaves it to the agent once one registered),
    // and what it keeps up lives on the host, so it does not wait for the API.
    const { host } = this.options;
    const stopUpkeep = startTransportUpkeep({ ...host, config: { upkeep: { intervalMs: this.options.upkeepMs ?? host.config.upkeep.intervalMs } } });
    try {
      await this.claimUntilStopped(signal, (started) => (pathCheck = started));
    } catch (error) {
      // Fatal (replaced by another agent, a bad token): stop everything this run started — the
      // path check's timer and the items' renewals would otherwise keep the process alive, and
      // the path check would go on running commands on the host for an agent that said it stops.
      this.failed.abort(error);
      this.stopping.abort();
      throw error;
    } finally {
      await Promise.allSettled([...this.running, ...(pathCheck ? [pathCheck] : []), stopUpkeep()]);
    }
  }

  private async claimUntilStopped(signal: AbortSignal, pathCheckStarted: (pathCheck: Promise<void>) => void): Promise<void> {
    await this.predecessorsEnded(signal);
    const session = await this.register(signal);
    if (session !== undefined) pathCheckStarted(this.checkPathsEvery(this.options.pathCheckMs ?? DEFAULT_PATH_CHECK_MS, signal));
    let failures = 0;
    while (session !== undefined && !signal.aborted) {
      const free = this.concurrency - this.running.size;
      if (free <= 0) {
        await Promise.race([...this.running, aborted(signal)]);
        continue;
      }
      let claimed: ClaimedWork[];
      try {
        claimed = await this.options.api.claim(session.worker, { waitMs: session.pollWaitMs, limit: free, signal });
        if (failures > 0) this.state(`reached the API at ${this.options.apiUrl} again`);
        failures = 0;
      } catch (error) {
        if (signal.aborted) break;
        if (BerthError.is(error) && error.code === 'CONFLICT') {
          // Another agent registered for this host since: this one is no longer its worker.
          throw new BerthError('CONFLICT', `another berth agent registered for host ${session.hostName}; this one stops`, {
            cause: error,
            hint: 'run one berth agent per host; restart this one only if the other is gone',
          });
        }
        // Its host is gone at the API after this agent registered it: forgotten (`berth host forget`).
        if (hostGone(error)) throw hostForgotten(session.hostName, this.options.apiUrl, error);
        if (!transient(error)) throw error;
        if (failures === 0) this.state(`lost the API (${(error as Error).message}); retrying`);
        await this.pause(failures++, signal);
        continue;
      }
      for (const work of claimed) {
        if (this.held.has(work.item.id)) continue;
        this.held.add(work.item.id);
        this.track(this.runItem(session, work).finally(() => this.held.delete(work.item.id)));
      }
    }
  }

  /**
   * Every `everyMs` until `signal`: list the devices of the transports that repair paths, and put
   * each whose path in use failed back on a live one. qemu 7.2 (iscsi-user) sends no event when a
   * path dies, so this is a probe; the transport checks the device's identity and takes its own
   * per-LUN lock, so a repair never races a connect or disconnect of the same LUN. Never rejects.
   */
  private async checkPathsEvery(everyMs: number, signal: AbortSignal): Promise<void> {
    const { catalog, logger } = this.options.host;
    const repairing = catalog.transportNames().filter((name) => catalog.transport(name).repairPaths !== undefined);
    if (everyMs <= 0 || repairing.length === 0) return;
    for (;;) {
      await sleepUnless(everyMs, signal);
      if (signal.aborted) return;
      for (const name of repairing) {
        try {
          const transport = catalog.transport(name);
          for (const listed of (await transport.connected?.()) ?? []) {
            if (failedPaths(listed).length === 0) continue;
            const repair = await transport.repairPaths!(listed, { signal: AbortSignal.any([signal, AbortSignal.timeout(Math.max(everyMs, 60_000))]) });
            if (repair.changed) this.state(`path check: ${repair.detail}`);
          }
        } catch (error) {
          if (signal.aborted) return;
          const message = BerthError.is(error) ? error.message : String(error);
          logger.warn({ transport: name, err: message }, 'path check: repair failed; trying again at the next check');
          this.state(`path check (${name}): ${message}`);
        }
      }
    }
  }

  /** Stop claiming; `run()` resolves once the items already running have finished and reported. */
  stop(): void {
    this.stopping.abort();
  }

  /**
   * Before registering: a berth process that died on this host (this agent's predecessor, SIGKILLed
   * mid-step) may have left a command running — its berth-spawner stays for it (`@berth/host`
   * `commandsOutlive`). Registering requeues the dead agent's items to this one, which would run
   * the step again beside it (a second `losetup` on the file, a disconnect under its detach). So
   * wait for them first, at most the command timeout and the 2 s to SIGKILL (the spawner ends them
   * then); past that (a command stuck in the kernel) go on, saying so.
   */
  private async predecessorsEnded(signal: AbortSignal): Promise<void> {
    if (!commandsOutlive()) return;
    this.state('a berth process that died on this host left commands running; waiting for them before taking work');
    const boundMs = (this.options.host.config.commandTimeoutMs ?? 30_000) + DEAD_OWNER_KILL_MARGIN_MS;
    if (!(await commandsEnded(undefined, boundMs, signal)) && !signal.aborted) this.state(`they still run after ${Math.round(boundMs / 1000)} s; taking work beside them`);
  }

  private async register(signal: AbortSignal): Promise<AgentSession | undefined> {
    const { host, api, version } = this.options;
    const wish = { multipath: host.config.connector.multipath, enforce_multipath: host.config.connector.enforce_multipath };
    const { connector } = await runHostStep(host, 'connector', wish, { operationId: this.instance, signal });
    const registration: AgentRegistration = {
      instance: this.instance,
      version,
      protocol: AGENT_PROTOCOL,
      connector,
      transports: host.catalog.transportNames(),
      // What each connects: the API can then pick one installed on this host only.
      transportInfo: host.catalog.transports().map((t) => ({ name: t.name, protocols: [...t.protocols], priority: t.priority ?? 0 })),
      consumers: host.catalog.consumerNames(),
    };
    for (let attempt = 0; !signal.aborted; attempt++) {
      try {
        this.session = await api.register(registration);
        this.state(`registered host ${this.session.hostName} with the API at ${this.options.apiUrl} as ${this.session.worker}`);
        const apiProtocol = this.session.protocol ?? 1;
        if (apiProtocol !== AGENT_PROTOCOL) {
          host.logger.warn(
            { agentProtocol: AGENT_PROTOCOL, apiProtocol },
            'the API speaks another agent protocol: fields one side does not know are dropped; upgrade both to the same berth version',
          );
        }
        return this.session;
      } catch (error) {
        if (!transient(error)) throw error;
        if (attempt === 0) this.state(`cannot reach the API (${(error as Error).message}); retrying`);
        await this.pause(attempt, signal);
      }
    }
    return undefined;
  }

  private track(promise: Promise<void>): void {
    this.running.add(promise);
    void promise.finally(() => this.running.delete(promise));
  }

  /** One item: run it under its volume's turn, keep its lease, report. Never rejects. */
  private async runItem(session: AgentSession, work: ClaimedWork): Promise<void> {
    const { item, payload } = work;
    // The API's times on this host's clock: how far the API's clock is ahead of this one's (the
    // claim answer's hand-out time against its receipt here). A host whose clock is behind the
    // controller's would otherwise run a step past its operation's deadline, while the replica
    // undoes it. Only that way: the answer's time between hand-out and receipt counts as skew the
    // other way — an agent frozen or a delivery held for a while would read every deadline late by
    // it and run a step the operation has given up on — so a clock that seems behind the host's
    // moves nothing (a host ahead cuts steps short, as before: the safe side).
    const handedOut = Date.parse(work.handedOutAt ?? '');
    const skew = Number.isFinite(handedOut) ? Math.max(0, handedOut - Date.now()) : 0;
    const local = (apiTime: string | null | undefined): number => Date.parse(apiTime ?? '') - skew;
    const key = typeof payload.volumeId === 'string' ? `volume:${payload.volumeId}` : `operation:${item.operationId}`;
    // The lease is kept from the claim on, while the item waits its volume's turn too (a release
    // queued behind a long connect would otherwise lose it, and be claimed and run twice).
    const fenced = new AbortController();
    // This agent failed for good (replaced): the item is dropped like a fenced one.
    const onFailed = (): void => fenced.abort(this.failed.signal.reason);
    if (this.failed.signal.aborted) onFailed();
    else this.failed.signal.addEventListener('abort', onFailed, { once: true });
    const lease = { expiresAt: local(item.leaseExpiresAt) || Date.now() + session.leaseMs };
    // Renewed every third of the lease, each renewal given a quarter of it: a replica that went
    // silent (frozen) is passed over for the next one before the next renewal is due, and the
    // lease never passes for it.
    const every = Math.max(100, Math.floor(session.leaseMs / 3));
    const renewLimitMs = Math.max(50, Math.floor(session.leaseMs / 4));
    const renewal = setInterval(() => {
      this.options.api.renew(session.worker, item.id, { limitMs: renewLimitMs }).then(
        (answer) => (lease.expiresAt = local(answer.leaseExpiresAt)),
        (error: unknown) => {
          if (BerthError.is(error) && error.code === 'CONFLICT') fenced.abort(error);
          // Anything else: the next renewal (or the report) tries again while the lease lasts.
        },
      );
    }, every);
    const dropped = (): void => this.state(`dropped ${item.step} of operation ${item.operationId}: another agent or replica took it over`);
    try {
      await this.queue.withLock(key, async () => {
        if (fenced.signal.aborted) return dropped();
        // Too late to run: an agent frozen (SIGSTOP, a VM stall) with the item in its socket, or
        // one that waited its volume's turn past it, would otherwise run a step the operation gave
        // up on — an unpublish the replica rolled back, taking a guest's disk away while the
        // attachment reads `attached`. Not run; said so (the replica has cancelled it, or gets a
        // failure that touched nothing and rolls back at once).
        const late = tooLate(item.step, payload, local);
        if (late !== undefined) {
          this.state(`did not run ${item.step} of operation ${item.operationId}: ${late.message}`);
          return await this.report(session, item.id, { state: 'failed', error: workItemErrorOf(late) }, lease, true);
        }
        const outcome = await this.execute(work, fenced.signal, local);
        if (fenced.signal.aborted) return dropped();
        await this.report(session, item.id, outcome, lease);
      });
    } finally {
      clearInterval(renewal);
      this.failed.signal.removeEventListener('abort', onFailed);
    }
  }

  private async execute(work: ClaimedWork, fenced: AbortSignal, local: (apiTime: string) => number): Promise<AgentOutcome> {
    const { item, payload } = work;
    const deadlineAt = deadlineOf(payload, local);
    const signals = [fenced];
    if (Number.isFinite(deadlineAt)) signals.push(AbortSignal.timeout(Math.max(0, deadlineAt - Date.now())));
    try {
      const step = zHostStepName.parse(item.step);
      const result = await runHostStep(this.options.host, step, payload, { operationId: item.operationId, signal: AbortSignal.any(signals) });
      return { state: 'done', result: result as Record<string, unknown> };
    } catch (error) {
      const failure = BerthError.is(error) ? error : new BerthError('INTERNAL', `host step ${item.step} failed`, { cause: error });
      this.options.host.logger.warn({ operationId: item.operationId, step: item.step, err: failure.message }, 'host step failed');
      return { state: 'failed', error: workItemErrorOf(failure) };
    }
  }

  /**
   * Report, retrying a lost API while the lease lasts; a 409 (fenced) or a passed lease drops it.
   * `quiet`: a 409 is expected (an item not run because it came too late) and not logged.
   */
  private async report(session: AgentSession, id: string, outcome: AgentOutcome, lease: { expiresAt: number }, quiet = false): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.options.api.report(session.worker, id, outcome);
        return;
      } catch (error) {
        if (BerthError.is(error) && error.code === 'CONFLICT') {
          if (!quiet) this.state(`dropped the outcome of work item ${id}: another agent or replica took it over`);
          return;
        }
        if (hostGone(error)) {
          // Forgotten: nothing will re-run or undo it (the claim that follows stops this agent, saying so).
          this.state(`could not report work item ${id}: this host is no longer known to the API (forgotten); what the step did on this host stays`);
          return;
        }
        if (!transient(error) || Date.now() >= lease.expiresAt) {
          this.state(`could not report work item ${id} (${(error as Error).message}); the API will re-run or undo it`);
          return;
        }
        await this.pause(attempt, new AbortController().signal);
      }
    }
  }

  /** Wait the attempt's backoff (0.5 s doubling to 10 s, ±25 % jitter), or until `signal`. */
  private pause(attempt: number, signal: AbortSignal): Promise<void> {
    const base = Math.min(this.maxBackoffMs, this.firstBackoffMs * 2 ** Math.min(attempt, 20));
    return sleepUnless(base * (0.75 + this.random() / 2), signal);
  }

  private state(line: string): void {
    this.options.onState?.(line);
  }
}

/** Resolves after `ms`, or as soon as `signal` fires (never rejects). */
function sleepUnless(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** A promise that resolves when `signal` fires (never rejects). */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}
