import { BerthError, type AgentWork } from '@berth/core';
import type { FastifyRequest } from 'fastify';
import { z } from '@berth/core/zod';
import { AGENTS, requireHostAgent } from '../access.js';
import {
  zAgentRegisterBody,
  zAgentRenewal,
  zAgentResultAck,
  zAgentResultBody,
  zAgentSession,
  zAgentWorkList,
  zAgentWorkQuery,
  zIdParams,
  zNoParams,
  zNoQuery,
} from '../http-schemas.js';
import type { RouteDeps } from '../route-deps.js';
import { route, type AnyRoute } from '../route.js';

/** The header that names the agent's worker (what `register` answered) on every later call. */
export const AGENT_WORKER_HEADER = 'berth-agent-worker';

const zWorkerHeader = z.string().min(1).max(400).regex(/^[\x21-\x7e]+$/, 'visible ASCII characters only');

/** The worker a request names in `Berth-Agent-Worker`; VALIDATION when it is missing or malformed. */
function workerOf(request: FastifyRequest): string {
  const raw = request.headers[AGENT_WORKER_HEADER];
  const parsed = zWorkerHeader.safeParse(raw);
  if (!parsed.success) {
    throw new BerthError('VALIDATION', 'send the worker that POST /v1/agent/register answered in the Berth-Agent-Worker header', {
      hint: 'register first, then send `Berth-Agent-Worker: <worker>` with every claim, renewal and result',
    });
  }
  return parsed.data;
}

/** The service's agent protocol; HOST_UNSUPPORTED on a service without one (a remote client). */
function agentWorkOf(deps: RouteDeps): AgentWork {
  const work = deps.service.agentWork;
  if (work === undefined) {
    throw new BerthError('HOST_UNSUPPORTED', 'this berth API serves no agents', { hint: 'run `berth serve` on a store (SQLite or PostgreSQL)' });
  }
  return work;
}

/**
 * The agent protocol (`berth agent`): only `agent` tokens that name a host, each acting for that
 * host alone. Register, claim work (a long-poll), renew a claimed item's lease, report its result.
 */
export function agentRoutes(deps: RouteDeps): AnyRoute[] {
  const noStore = { 'cache-control': 'no-store' };
  return [
    route({
      method: 'POST',
      path: '/v1/agent/register',
      operationId: 'registerAgent',
      summary: 'Register this host\'s agent (a new instance replaces the previous one)',
      description:
        'The host named by the token is created if needed; its connector, transports and consumers are recorded; items the previous agent instance held go back to pending. Only agent tokens that name a host.',
      tag: 'agent',
      access: AGENTS,
      params: zNoParams,
      query: zNoQuery,
      body: zAgentRegisterBody,
      responses: { 200: { description: 'Registered: the worker to send with every later call, and the leases', schema: zAgentSession } },
      async handler({ principal, body }) {
        const host = requireHostAgent(principal);
        return { status: 200, body: await agentWorkOf(deps).register(host, body), headers: noStore };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/agent/work',
      operationId: 'claimAgentWork',
      summary: 'Claim pending work items of this host (long-poll)',
      description:
        'Answers at once with the items claimed, or waits up to `wait` for one (`[]` when the wait ends, the client goes away or the server shuts down). Needs `Berth-Agent-Worker`; a worker replaced by a newer registration gets 409. The payload of a `connect` item carries the volume\'s connection secrets.',
      tag: 'agent',
      access: AGENTS,
      params: zNoParams,
      query: zAgentWorkQuery,
      responses: { 200: { description: 'The claimed items (a lease each)', schema: zAgentWorkList } },
      async handler({ principal, query, request, abandoned }) {
        const host = requireHostAgent(principal);
        const worker = workerOf(request);
        const waitMs = Math.min(query.wait ?? deps.agent.pollWaitMs, deps.maxWaitMs);
        const items = await agentWorkOf(deps).claim(host, worker, { waitMs, limit: query.limit ?? 1, signal: abandoned() });
        return { status: 200, body: { items }, headers: noStore };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/agent/work/{id}/renew',
      operationId: 'renewAgentWork',
      summary: 'Extend the lease of a claimed work item',
      description: '409 when this worker no longer holds it (its lease passed, it was cancelled, or another agent registered): stop working on it.',
      tag: 'agent',
      access: AGENTS,
      params: zIdParams,
      query: zNoQuery,
      responses: { 200: { description: 'The new end of the lease', schema: zAgentRenewal } },
      async handler({ principal, params, request }) {
        const host = requireHostAgent(principal);
        return { status: 200, body: await agentWorkOf(deps).renew(host, workerOf(request), params.id) };
      },
    }),
    route({
      method: 'POST',
      path: '/v1/agent/work/{id}/result',
      operationId: 'reportAgentWork',
      summary: 'Report how a claimed work item ended',
      description: '409 when this worker no longer holds it (the same report again from the worker whose report ended the item is 200, nothing written twice); 404 for an item of another host. Never send secrets in a result: they are dropped.',
      tag: 'agent',
      access: AGENTS,
      params: zIdParams,
      query: zNoQuery,
      body: zAgentResultBody,
      responses: { 200: { description: 'Recorded; the replica waiting for it is woken', schema: zAgentResultAck } },
      async handler({ principal, params, body, request }) {
        const host = requireHostAgent(principal);
        await agentWorkOf(deps).report(host, workerOf(request), params.id, body);
        return { status: 200, body: { accepted: true } };
      },
    }),
  ];
}
