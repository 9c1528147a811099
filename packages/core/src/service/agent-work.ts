import { z } from 'zod';
import {
  HOST_STEP_SCHEMAS,
  WORK_DONE_CHANNEL,
  AGENT_PROTOCOL,
  hostChannel,
  zAgentRegistration,
  zHostStepName,
  workDoneNotice,
  type AgentOutcome,
  type AgentRegistration,
  type AgentSession,
  type ClaimedWork,
} from '../agent-protocol.js';
import { zConnectionInfo, type Connector } from '../connection.js';
import { zHostName } from '../config.js';
import { BerthError, parseWith, toBerthError } from '../errors.js';
import type { Host } from '../model.js';
import { backendVolume } from '../pipeline/context.js';
import type { ClaimOptions, AgentWork } from '../service.js';
import type { Store, StoreNotifications, WorkItemRepository } from '../store.js';
import { workItemErrorOf, zWorkItemError, type WorkItem } from '../work-item.js';
import type { ServiceParts } from './parts.js';

const zClaimOptions = z.object({
  waitMs: z.number().int().min(0).max(300_000),
  limit: z.number().int().min(1).max(100),
});
const zOutcome = z.strictObject({
  state: z.enum(['done', 'failed']),
  result: z.record(z.string(), z.unknown()).optional(),
  error: zWorkItemError.optional(),
});
const zWorker = z.string().min(1).max(400);
// Built once, not at every call (a zod schema costs more to build than to run).
const zWorkItemId = z.uuid();
const zPayloadVolumeId = z.string().min(1);
/** The longest time between two writes of an agent's `lastSeenAt` while it keeps calling (see `heardFrom`). */
const HEARTBEAT_MAX_MS = 5_000;

/** The many-hosts members of a store; HOST_UNSUPPORTED on a store without them. */
function manyHosts(store: Store): { workItems: WorkItemRepository; notifications: StoreNotifications } {
  if (store.workItems === undefined || store.notifications === undefined) {
    throw new BerthError('HOST_UNSUPPORTED', 'this berth store keeps no work items, so no agent can work for it', {
      hint: 'run `berth serve` on the SQLite or PostgreSQL store (`--store postgres://…` for several hosts)',
    });
  }
  return { workItems: store.workItems, notifications: store.notifications };
}

/**
 * A wake-up flag for one long-poll: a notification that arrives while nobody waits is kept, so
 * one sent between a claim that found nothing and the wait is not lost.
 */
class Wakeup {
  private pending = false;
  private resolve: (() => void) | undefined;

  fire(): void {
    if (this.resolve === undefined) {
      this.pending = true;
      return;
    }
    const resolve = this.resolve;
    this.resolve = undefined;
    resolve();
  }

  /** Resolve on the next wake-up, after `ms`, or when `signal` aborts, whichever comes first. */
  next(ms: number, signal: AbortSignal | undefined): Promise<void> {
    if (this.pending) {
      this.pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        this.resolve = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal?.addEventListener('abort', done, { once: true });
      this.resolve = done;
    });
  }
}

/** The connector fields that name the machine an agent runs on. */
const MACHINE_FIELDS = ['host', 'initiator'] as const;

/**
 * What changed in the machine's identity between a host's recorded connector and a registering
 * agent's (its `host` name, its iSCSI `initiator`): undefined when nothing did, or nothing was
 * recorded on either side to compare.
 */
export function machineChange(before: Connector | null | undefined, after: Connector): Array<{ field: string; from: string; to: string }> | undefined {
  if (before === null || before === undefined) return undefined;
  const changed = MACHINE_FIELDS.flatMap((field) => {
    const from = before[field];
    const to = after[field];
    return typeof from === 'string' && typeof to === 'string' && from !== to ? [{ field, from, to }] : [];
  });
  return changed.length > 0 ? changed : undefined;
}

/**
 * The API side of `berth agent`: every call acts for one host, named by the agent's token (the
 * HTTP layer decides which); an item of another host is NOT_FOUND, and a worker that is not the
 * host's registered agent is fenced off (CONFLICT). Connection secrets are added to `connect`
 * items in claim answers only, from the volume's backend; they are never stored.
 */
export class AgentWorkService implements AgentWork {
  constructor(private readonly parts: ServiceParts) {}

  /** Find or create the host, record the agent, hand its dead predecessor's items back to it. */
  async register(hostName: string, registration: AgentRegistration): Promise<AgentSession> {
    const { store, config, logger } = this.parts;
    const name = parseWith(zHostName, hostName, 'host name');
    const agent = parseWith(zAgentRegistration, registration, 'agent registration');
    const { workItems, notifications } = manyHosts(store);
    const host = await this.findOrCreateHost(name);
    const worker = `${name}/${agent.instance}`;
    const moved = machineChange(host.connector, agent.connector);
    if (moved !== undefined) {
      // Not refused (a reinstalled host gets a new initiator; a renamed one a new name), but said:
      // an agent token copied onto the wrong machine would run this host's detaches there, find
      // nothing and "succeed" while the real host still uses the volumes.
      logger.warn(
        { hostId: host.id, host: name, worker, changed: moved },
        `the agent registering for host ${name} runs on another machine than the last one (${moved.map((c) => `${c.field} ${c.from} → ${c.to}`).join(', ')}); if the host was not reinstalled or renamed, this agent's token is on the wrong machine: stop it at once`,
      );
    }
    const requeued = await store.transaction(async (tx) => {
      await tx.hosts.setConnector(host.id, agent.connector);
      await tx.hosts.recordAgent(host.id, {
        instance: worker,
        version: agent.version,
        transports: agent.transports,
        ...(agent.transportInfo ? { transportInfo: agent.transportInfo } : {}),
        consumers: agent.consumers,
      });
      const back = await (tx.workItems ?? workItems).requeue(host.id, worker);
      await (tx.notifications ?? notifications).notify(hostChannel(host.id));
      return back;
    });
    const protocol = agent.protocol ?? 1;
    logger.info({ hostId: host.id, host: name, worker, version: agent.version, protocol, requeued: requeued.length }, 'agent registered');
    if (protocol !== AGENT_PROTOCOL) {
      logger.warn(
        { host: name, agentProtocol: protocol, apiProtocol: AGENT_PROTOCOL },
        'agent speaks another agent protocol: fields one side does not know are dropped; upgrade both to the same berth version',
      );
    }
    return { hostId: host.id, hostName: name, worker, leaseMs: config.agent.leaseMs, pollWaitMs: config.agent.pollWaitMs, protocol: AGENT_PROTOCOL };
  }

  /**
   * Claim up to `limit` pending items of the host; when there are none, wait for the host's
   * channel (a new item, a re-registration) until `waitMs` passes or `signal` aborts, and answer
   * nothing: the agent asks again at once and that claim takes the items. Only a claim the agent
   * has just sent takes work: a long-poll's answer can sit unread for as long as its agent is
   * frozen (SIGSTOP, a stalled VM), and an item claimed into it counted as possibly run — the
   * operation's rollback then waited on the silent agent for an undo of a step it never ran, and
   * ended in `error_attaching`. Unclaimed, the item is cancelled from `pending` at the deadline
   * ("did not pick up", untouched) and the rollback is clean. The cost: one more request when an
   * idle agent is woken.
   */
  async claim(hostName: string, worker: string, options: ClaimOptions): Promise<ClaimedWork[]> {
    const { store, config } = this.parts;
    const { waitMs, limit } = parseWith(zClaimOptions, { waitMs: options.waitMs, limit: options.limit }, 'claim options');
    const who = parseWith(zWorker, worker, 'worker');
    const { workItems, notifications } = manyHosts(store);
    const host = await this.registeredHost(hostName);
    await this.heardFrom(host, who);
    const wakeup = new Wakeup();
    // Listen before the first claim: an item created between the claim and the wait still wakes it.
    const stop = await notifications.listen(hostChannel(host.id), () => wakeup.fire());
    try {
      const items = await workItems.claim(host.id, who, config.agent.leaseMs, limit);
      if (items.length > 0) return await this.handOut(items, who);
      if (waitMs > 0 && options.signal?.aborted !== true) await wakeup.next(waitMs, options.signal);
      // A replaced worker woken by the registration learns it at its next claim (409).
      return [];
    } finally {
      await stop();
    }
  }

  /** Extend the lease of an item the worker holds. */
  async renew(hostName: string, worker: string, id: string): Promise<{ leaseExpiresAt: string }> {
    const { store, config } = this.parts;
    const { workItems } = manyHosts(store);
    const who = parseWith(zWorker, worker, 'worker');
    const host = await this.registeredHost(hostName);
    await this.itemOf(workItems, host, id);
    await this.heardFrom(host, who);
    const item = await workItems.renew(id, who, config.agent.leaseMs);
    return { leaseExpiresAt: item.leaseExpiresAt ?? new Date().toISOString() };
  }

  /** Record the outcome of an item the worker holds, and wake the replica waiting for it. */
  async report(hostName: string, worker: string, id: string, outcome: AgentOutcome): Promise<void> {
    const { store } = this.parts;
    const { workItems, notifications } = manyHosts(store);
    const who = parseWith(zWorker, worker, 'worker');
    const valid = parseWith(zOutcome, outcome, 'work item outcome');
    const host = await this.registeredHost(hostName);
    const item = await this.itemOf(workItems, host, id);
    const result = valid.state === 'done' ? resultOf(item, valid.result) : null;
    const error = valid.state === 'failed' ? (valid.error ?? { code: 'DRIVER_ERROR', message: `step ${item.step} failed on host ${host.name}` }) : null;
    try {
      await store.transaction(async (tx) => {
        const finished = await (tx.workItems ?? workItems).complete(id, who, { state: valid.state, result, error });
        // The item itself goes with the notification: the waiting replica need not read it back.
        await (tx.notifications ?? notifications).notify(WORK_DONE_CHANNEL, workDoneNotice(finished));
      });
    } catch (failure) {
      // The same report again (the agent sent it to another replica after one that took it went
      // silent): the item ended as reported, by this worker. Accepted, nothing written or woken twice.
      if (!BerthError.is(failure) || failure.code !== 'CONFLICT') throw failure;
      const now = await workItems.get(item.id);
      if (now === undefined || now.state !== valid.state || now.leaseOwner !== who) throw failure;
    }
    await this.heardFrom(host, who).catch(() => undefined);
  }

  /**
   * The host's registered agent is `worker` (else CONFLICT: a newer registration replaced it), and
   * it was heard from now. `lastSeenAt` is written (`touchAgent`, a compare-and-swap on the
   * instance) only when the row just read is older than a heartbeat, a ninth of
   * `agent.offlineAfterMs` (5 s at most): an agent busy with many items would otherwise write its
   * host row on every claim, renewal and report, for a figure read in seconds.
   */
  private async heardFrom(host: Host, worker: string): Promise<void> {
    const seen = Date.parse(host.agent?.lastSeenAt ?? '');
    const heartbeatMs = Math.min(HEARTBEAT_MAX_MS, Math.floor(this.parts.config.agent.offlineAfterMs / 9));
    const fresh = host.agent?.instance === worker && Number.isFinite(seen) && Date.now() - seen < heartbeatMs;
    // A replaced worker goes through the CAS too: it words the CONFLICT as the store does.
    if (!fresh) await this.parts.store.hosts.touchAgent(host.id, worker);
  }

  private async findOrCreateHost(name: string): Promise<Host> {
    const { store } = this.parts;
    const found = await store.hosts.findByName(name);
    if (found !== undefined) return found;
    try {
      return await store.hosts.create({ name });
    } catch (error) {
      // Two registrations of a new host at once: the other one made it.
      const raced = await store.hosts.findByName(name);
      if (raced !== undefined) return raced;
      throw error;
    }
  }

  /**
   * The host of `hostName` once an agent registered for it; NOT_FOUND before, or after `berth host
   * forget` removed the host (and its agent's registration with it: nothing else clears one).
   * `details.reason` tells the two apart: `no-agent` — the host is known (a server named it) but no
   * agent registered for it; `unknown-host` — there is no such host, so an agent that had
   * registered for it was forgotten (`AgentRunner` stops then, saying so).
   */
  private async registeredHost(hostName: string): Promise<Host> {
    const name = parseWith(zHostName, hostName, 'host name');
    const host = await this.parts.store.hosts.findByName(name);
    if (host === undefined) {
      throw new BerthError('NOT_FOUND', `host ${name} is not known to the API: no agent registered for it, or it was forgotten (berth host forget removes a host with its agent's registration)`, {
        hint: 'berth agent registers when it starts (POST /v1/agent/register); an agent that had registered was forgotten: devices berth connected on its host may still be there — see the agent\'s own error before starting it again',
        details: { kind: 'host', host: name, reason: 'unknown-host' },
      });
    }
    if (host.agent === null) {
      throw new BerthError('NOT_FOUND', `no agent registered for host ${name}`, {
        hint: 'register first: POST /v1/agent/register (berth agent does it when it starts)',
        details: { kind: 'host', host: name, reason: 'no-agent' },
      });
    }
    return host;
  }

  /** Item `id` when it belongs to `host`; an item of another host is NOT_FOUND, exactly like a missing one. */
  private async itemOf(workItems: WorkItemRepository, host: Host, id: string): Promise<WorkItem> {
    const itemId = parseWith(zWorkItemId, id, 'work item id');
    const item = await workItems.get(itemId);
    if (item === undefined || item.hostId !== host.id) {
      throw new BerthError('NOT_FOUND', `work item ${itemId} not found`, {
        hint: 'an agent sees the work items of its own host only',
        details: { kind: 'work item', id: itemId },
      });
    }
    return item;
  }

  /**
   * The claim answer: each item with its payload, a `connect` item's connection completed with the
   * backend's credentials. An item whose secrets cannot be had is failed at once (its replica sees
   * why) rather than handed out to fail on the host.
   */
  private async handOut(items: readonly WorkItem[], worker: string): Promise<ClaimedWork[]> {
    const out: ClaimedWork[] = [];
    for (const item of items) {
      try {
        out.push({ item, payload: await this.payloadWithSecrets(item) });
      } catch (error) {
        const failure = toBerthError(error);
        this.parts.logger.warn({ workItemId: item.id, step: item.step, code: failure.code, err: failure.message }, 'work item failed before hand-out');
        await this.report(await this.hostNameOf(item), worker, item.id, { state: 'failed', error: workItemErrorOf(failure) });
      }
    }
    // Stamped as the answer leaves, after every item's secrets were fetched: a stamp taken earlier
    // would make the agent read this answer's deadlines late by that time.
    const handedOutAt = new Date().toISOString();
    return out.map((work) => ({ ...work, handedOutAt }));
  }

  private async hostNameOf(item: WorkItem): Promise<string> {
    return (await this.parts.store.hosts.require(item.hostId)).name;
  }

  /** A `connect` payload's connection with the backend's credentials merged into its data. */
  private async payloadWithSecrets(item: WorkItem): Promise<Record<string, unknown>> {
    if (item.step !== 'connect') return item.payload;
    const { store, catalog } = this.parts;
    const connection = parseWith(zConnectionInfo, item.payload.connection, 'connect payload connection');
    const volumeId = parseWith(zPayloadVolumeId, item.payload.volumeId, 'connect payload volumeId');
    const volume = await store.volumes.require(volumeId);
    const backend = catalog.backend(volume.backend);
    const usesChap = [connection.data.auth_method, connection.data.discovery_auth_method].some((m) => typeof m === 'string' && m.toUpperCase() === 'CHAP');
    if (backend.credentials === undefined) {
      if (!usesChap) return item.payload;
      throw new BerthError('UNPROCESSABLE', `volume ${volume.name}'s connection uses CHAP but backend ${volume.backend} cannot hand its secrets to an agent`, {
        hint: `give backend ${volume.backend} a credentials() method, or export the volume without CHAP`,
        details: { volumeId: volume.id, backend: volume.backend },
      });
    }
    const secrets = await backend.credentials(backendVolume(volume));
    return { ...item.payload, connection: { ...connection, data: { ...connection.data, ...secrets } } };
  }
}

/** A `done` result parsed with its step's schema (unknown steps pass as they are). */
function resultOf(item: WorkItem, result: Record<string, unknown> | undefined): Record<string, unknown> {
  const step = zHostStepName.safeParse(item.step);
  if (!step.success) return result ?? {};
  return parseWith(HOST_STEP_SCHEMAS[step.data].result, result ?? {}, `result of step ${item.step}`) as Record<string, unknown>;
}
