import { BerthError, parseWith, type AgentOutcome, type AgentRegistration, type AgentSession, type ClaimedWork } from '@berth/core';
import { z } from '@berth/core/zod';
import { checked } from './checked-answer.js';
import { apiPath, HttpClient, type HttpAnswer, type HttpClientOptions, type HttpRequest } from './http-client.js';
import { zAgentRenewal, zAgentSessionBody, zAgentWorkList } from './wire.js';

/** The header naming the worker (the registered agent instance) on claim, renew and report. */
export const AGENT_WORKER_HEADER = 'Berth-Agent-Worker';

/** Options of `claim`. */
export interface AgentClaimOptions {
  /** How long the server may hold the request when there is no work (the long-poll). */
  waitMs: number;
  /** Claim at most this many items (the agent's free slots). */
  limit: number;
  /** Gives the long-poll up (the agent stops): the claim fails with CANCELLED. */
  signal?: AbortSignal;
}

/** Options of `renew`. */
export interface AgentRenewOptions {
  /** How long the replica may take to begin its answer, in ms, before the next one is asked. */
  limitMs?: number;
}

const zAgentRenewOptions = z.object({ limitMs: z.number().int().positive().max(600_000).optional() }).strict();

/** Options of `AgentClient`. */
export interface AgentClientOptions extends HttpClientOptions {
  /**
   * Other replicas of the same API, tried in turn when the one in use cannot be reached, does not
   * answer in time or is shutting down: the next request goes to the next URL (the agent's loop
   * retries what failed). Sessions and work items live in the shared store, so any replica serves
   * them. Without them a fleet with no load balancer loses every host whose agent named a dead
   * replica until it comes back.
   */
  fallbackUrls?: readonly string[];
}

/** An answer that says nothing about the request, only that this replica is not serving it now. */
function replicaUnavailable(error: unknown): boolean {
  if (!BerthError.is(error)) return false;
  if (error.details.unreachable === true || error.code === 'TIMEOUT') return true;
  // A replica shutting down answers 503 with the seconds to retry after (the API's onRequest hook).
  return error.code === 'CANCELLED' && typeof error.details.retryAfterSeconds === 'number';
}

/**
 * The agent protocol over HTTP (`berth agent`): register the host, claim its work items with a
 * long-poll, renew their leases, report their outcomes. One keep-alive connection carries it all.
 * The token is an `agent` token naming this host; claim answers may carry connection secrets, which
 * this client never logs or stores.
 */
export class AgentClient {
  private readonly replicas: HttpClient[];
  private current = 0;

  constructor(options: AgentClientOptions) {
    const { fallbackUrls = [], ...http } = options;
    this.replicas = [options.url, ...fallbackUrls].map((url) => new HttpClient({ ...http, url }));
  }

  /** The base URL of the replica in use. */
  get url(): string {
    return this.http.url;
  }

  private get http(): HttpClient {
    return this.replicas[this.current] as HttpClient;
  }

  /**
   * Send `req` to the replica in use; when it is unavailable, the next request goes to the next
   * one. A request safe to send twice (`idempotent`: a renewal, a report) goes there at once, in
   * turn, the whole list once: a lease must not wait for the agent's next try.
   */
  private async request(req: HttpRequest): Promise<HttpAnswer> {
    const start = this.current;
    const count = this.replicas.length;
    const tries = req.idempotent === true ? count : 1;
    for (let tried = 0; ; tried++) {
      const index = (start + tried) % count;
      try {
        return await (this.replicas[index] as HttpClient).request(req);
      } catch (error) {
        if (count === 1 || !replicaUnavailable(error)) throw error;
        // Moved on once, even when several requests in flight fail together.
        if (index === this.current) this.current = (index + 1) % count;
        if (tried + 1 >= tries) throw error;
      }
    }
  }

  /** Register this agent for its token's host; the answer names the worker to claim with. */
  async register(registration: AgentRegistration): Promise<AgentSession> {
    const { body } = await this.request({ method: 'POST', path: '/v1/agent/register', body: registration });
    return checked(zAgentSessionBody, body, 'registration');
  }

  /** Claim up to `limit` of the host's pending items, waiting up to `waitMs` for one (`[]` when none came). */
  async claim(worker: string, options: AgentClaimOptions): Promise<ClaimedWork[]> {
    const { body } = await this.request({
      method: 'GET',
      path: '/v1/agent/work',
      query: { wait: `${Math.max(0, Math.round(options.waitMs))}ms`, limit: String(options.limit) },
      headers: { [AGENT_WORKER_HEADER]: worker },
      waitMs: options.waitMs,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return checked(zAgentWorkList, body, 'work list').items;
  }

  /**
   * Extend the lease of an item this worker holds; CONFLICT when it holds it no more (fenced).
   * Safe to send twice (it extends the same lease again): with other replicas, one silent past
   * `limitMs` (the agent gives a quarter of the lease, under the third it renews every) is passed
   * over for the next one at once, so a frozen replica never costs the lease. With none, there is
   * nowhere else to go: a slow renewal that still lands in time is waited for (the usual limit).
   */
  async renew(worker: string, id: string, options: AgentRenewOptions = {}): Promise<{ leaseExpiresAt: string }> {
    const { limitMs } = parseWith(zAgentRenewOptions, options, 'renew options');
    const { body } = await this.request({
      method: 'POST',
      path: apiPath`/v1/agent/work/${id}/renew`,
      headers: { [AGENT_WORKER_HEADER]: worker },
      idempotent: true,
      ...(limitMs === undefined || this.replicas.length === 1 ? {} : { answerTimeoutMs: limitMs }),
    });
    return checked(zAgentRenewal, body, 'lease renewal');
  }

  /**
   * Report how an item ended; CONFLICT when this worker holds it no more (fenced). Safe to send
   * twice: the API accepts the same report again from the worker whose report ended the item, so
   * a replica silent past the answer limit is passed over for the next one at once.
   */
  async report(worker: string, id: string, outcome: AgentOutcome): Promise<void> {
    await this.request({
      method: 'POST',
      path: apiPath`/v1/agent/work/${id}/result`,
      headers: { [AGENT_WORKER_HEADER]: worker },
      body: outcome,
      idempotent: true,
    });
  }

  /** Close the kept-alive connections. */
  close(): void {
    for (const replica of this.replicas) replica.close();
  }
}
