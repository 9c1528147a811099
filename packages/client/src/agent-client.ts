import { type AgentOutcome, type AgentRegistration, type AgentSession, type ClaimedWork } from '@berth/core';
import { checked } from './checked-answer.js';
import { apiPath, HttpClient, type HttpClientOptions } from './http-client.js';
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

/**
 * The agent protocol over HTTP (`berth agent`): register the host, claim its work items with a
 * long-poll, renew their leases, report their outcomes. One keep-alive connection carries it all.
 * The token is an `agent` token naming this host; claim answers may carry connection secrets, which
 * this client never logs or stores.
 */
export class AgentClient {
  private readonly http: HttpClient;

  constructor(options: HttpClientOptions) {
    this.http = new HttpClient(options);
  }

  /** The API's base URL. */
  get url(): string {
    return this.http.url;
  }

  /** Register this agent for its token's host; the answer names the worker to claim with. */
  async register(registration: AgentRegistration): Promise<AgentSession> {
    const { body } = await this.http.request({ method: 'POST', path: '/v1/agent/register', body: registration });
    return checked(zAgentSessionBody, body, 'registration');
  }

  /** Claim up to `limit` of the host's pending items, waiting up to `waitMs` for one (`[]` when none came). */
  async claim(worker: string, options: AgentClaimOptions): Promise<ClaimedWork[]> {
    const { body } = await this.http.request({
      method: 'GET',
      path: '/v1/agent/work',
      query: { wait: `${Math.max(0, Math.round(options.waitMs))}ms`, limit: String(options.limit) },
      headers: { [AGENT_WORKER_HEADER]: worker },
      extraTimeoutMs: options.waitMs,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return checked(zAgentWorkList, body, 'work list').items;
  }

  /** Extend the lease of an item this worker holds; CONFLICT when it holds it no more (fenced). */
  async renew(worker: string, id: string): Promise<{ leaseExpiresAt: string }> {
    const { body } = await this.http.request({
      method: 'POST',
      path: apiPath`/v1/agent/work/${id}/renew`,
      headers: { [AGENT_WORKER_HEADER]: worker },
    });
    return checked(zAgentRenewal, body, 'lease renewal');
  }

  /** Report how an item ended; CONFLICT when this worker holds it no more (fenced). */
  async report(worker: string, id: string, outcome: AgentOutcome): Promise<void> {
    await this.http.request({
      method: 'POST',
      path: apiPath`/v1/agent/work/${id}/result`,
      headers: { [AGENT_WORKER_HEADER]: worker },
      body: outcome,
    });
  }

  /** Close the kept-alive connection. */
  close(): void {
    this.http.close();
  }
}
