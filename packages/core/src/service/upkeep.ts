import type { DriverCatalog } from '../catalog.js';
import type { BerthConfig } from '../config.js';
import { toBerthError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { ServiceParts } from './parts.js';

/** The longest one plugin's upkeep may take (a tgtd start and the restore of every export). */
const UPKEEP_DEADLINE_MS = 60_000;

/** What `startUpkeepRounds` runs: the named parts of one kind (backends, transports) that have an upkeep. */
export interface UpkeepRounds {
  /** What the parts are: in the log's field and messages (`backend upkeep failed`, `{backend: name}`). */
  kind: 'backend' | 'transport';
  /** Between two rounds, in ms; 0 runs nothing. */
  intervalMs: number;
  logger: Logger;
  /** The parts' names, in the order a round runs them. */
  names(): readonly string[];
  /** The part's upkeep, undefined when it has none (made on first use: a part that cannot be made fails its round). */
  upkeepOf(name: string): ((signal: AbortSignal) => Promise<void>) | undefined;
  /**
   * Asked at the start of each round, before any part is made: false skips the round. A failure
   * skips it too and is logged like a part's (once until it changes).
   */
  when?(): Promise<boolean>;
}

/** The name a failing `when` is logged under (no part has it: names are plugin names). */
const GATE = '';

/**
 * Run `rounds`' upkeep now and then every `intervalMs`, one part after another and never two
 * rounds at once (a slow round skips a beat). A failure is logged once per part until its message
 * changes, and a part that works again after one is logged as recovered, so a lasting failure does
 * not fill the log. Returns the function that stops it (waiting for the round in flight, which is
 * aborted). The backends' upkeep (`startBackendUpkeep`) and the transports' (`startTransportUpkeep`)
 * are two of these.
 */
export function startUpkeepRounds(rounds: UpkeepRounds): () => Promise<void> {
  const { intervalMs, kind, logger } = rounds;
  if (intervalMs === 0) return () => Promise.resolve();
  const stop = new AbortController();
  const failing = new Map<string, string>();
  let running: Promise<void> | undefined;

  const worked = (name: string): void => {
    if (failing.delete(name)) logger.info(name === GATE ? {} : { [kind]: name }, `${kind} upkeep works again`);
  };
  const failed = (name: string, error: unknown): void => {
    const failure = toBerthError(error);
    // Numbers vary from round to round (a new daemon's pid): the same failure all the same.
    const key = `${failure.code}: ${failure.message.replace(/\d+/g, 'N')}`;
    if (failing.get(name) === key) return;
    failing.set(name, key);
    logger.warn(
      { ...(name === GATE ? {} : { [kind]: name }), err: failure.message, ...(failure.hint ? { hint: failure.hint } : {}) },
      name === GATE ? `${kind} upkeep skipped: could not tell whether this process should run it; trying again at the next round` : `${kind} upkeep failed; trying again at the next round`,
    );
  };

  const round = async (): Promise<void> => {
    if (rounds.when) {
      try {
        const allowed = await rounds.when();
        worked(GATE);
        if (!allowed) return;
      } catch (error) {
        if (!stop.signal.aborted) failed(GATE, error);
        return;
      }
    }
    for (const name of rounds.names()) {
      if (stop.signal.aborted) return;
      try {
        const upkeep = rounds.upkeepOf(name);
        if (!upkeep) continue;
        await upkeep(AbortSignal.any([stop.signal, AbortSignal.timeout(UPKEEP_DEADLINE_MS)]));
        worked(name);
      } catch (error) {
        if (stop.signal.aborted) return;
        failed(name, error);
      }
    }
  };
  const tick = (): void => {
    running ??= round().finally(() => {
      running = undefined;
    });
  };
  // Periodic by nature: what it looks for (a daemon that died) sends no event here.
  const timer = setInterval(tick, intervalMs);
  timer.unref();
  tick();
  return async () => {
    clearInterval(timer);
    stop.abort();
    await running;
  };
}

/**
 * Run every installed backend's `upkeep` now and then every `config.upkeep.intervalMs` (`berth
 * serve`): see `startUpkeepRounds`.
 */
export function startBackendUpkeep(parts: Pick<ServiceParts, 'config' | 'catalog' | 'logger'>): () => Promise<void> {
  const { catalog } = parts;
  return startUpkeepRounds({
    kind: 'backend',
    intervalMs: parts.config.upkeep.intervalMs,
    logger: parts.logger,
    names: () => catalog.backendNames(),
    upkeepOf: (name) => {
      const backend = catalog.backend(name);
      return backend.upkeep?.bind(backend);
    },
  });
}

/** What the transports' upkeep needs: an embedded berth's parts, or `berth agent`'s host. */
export interface TransportUpkeepParts {
  config: Pick<BerthConfig, 'upkeep'>;
  catalog: Pick<DriverCatalog, 'transportNames' | 'transport'>;
  logger: Logger;
}

/**
 * Run every installed transport's `upkeep` now and then every `config.upkeep.intervalMs`, in a
 * process that runs this host's steps: `berth serve` while its own host has no agent (`when`
 * says so at the start of each round, before a transport is made), `berth agent` always (see
 * `startUpkeepRounds` and core's README, "Upkeep").
 * The iscsi-user transport starts its dead-target watcher again when it died with LUNs connected.
 */
export function startTransportUpkeep(parts: TransportUpkeepParts, options: { when?: () => Promise<boolean> } = {}): () => Promise<void> {
  const { catalog } = parts;
  return startUpkeepRounds({
    kind: 'transport',
    intervalMs: parts.config.upkeep.intervalMs,
    logger: parts.logger,
    names: () => catalog.transportNames(),
    upkeepOf: (name) => {
      const transport = catalog.transport(name);
      return transport.upkeep?.bind(transport);
    },
    ...(options.when ? { when: options.when } : {}),
  });
}

/**
 * Whether this process runs its own host's steps now, as `hostStepsFor` decides for a step: its
 * host row (found by this host's name, not made: a replica that never ran a step here has none,
 * and nothing of berth's is connected here) has no agent. Once an agent registered for the host,
 * the agent runs its steps, and its transports' upkeep with them.
 */
export async function runsOwnHostSteps(parts: Pick<ServiceParts, 'store' | 'identity'>): Promise<boolean> {
  const host = await parts.store.hosts.findByName(parts.identity.hostname);
  return host !== undefined && !host.agent;
}
