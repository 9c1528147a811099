import { BerthError, pickHost, zHostView, type Host, type HostView } from '@berth/core';
import type { Principal } from '../auth.js';
import { ADMINS, MANAGERS, scopeOf } from '../access.js';
import { zForgetHostQuery, zForgetHostReport, zHostParams, zHostViewList, zNoParams, zScopeQuery } from '../http-schemas.js';
import type { RouteDeps } from '../route-deps.js';
import { route, type AnyRoute } from '../route.js';

/**
 * Hosts a principal may see. Hosts belong to no project: admin tokens see all of them;
 * a member sees the hosts its project's servers run on (the service has no per-project host
 * listing, so this is derived from the project's servers).
 */
async function visibleHosts(deps: RouteDeps, principal: Principal, projectId: string | undefined): Promise<Host[]> {
  const hosts = await deps.service.listHosts();
  if (principal.role !== 'member') return hosts;
  const servers = await deps.service.listServers(scopeOf(principal, projectId, deps.defaultProject));
  const used = new Set(servers.map((s) => s.hostId));
  return hosts.filter((h) => used.has(h.id));
}

/** A host with its agent's state: online when heard from within `offlineAfterMs`. */
export function hostView(host: Host, offlineAfterMs: number, now = Date.now()): HostView {
  if (host.agent === null) return { ...host, agent: null };
  const online = now - Date.parse(host.agent.lastSeenAt) <= offlineAfterMs;
  return { ...host, agent: { ...host.agent, state: online ? 'online' : 'offline' } };
}

/** Hosts: the machines servers run on and whose agents connect volumes. */
export function hostRoutes(deps: RouteDeps): AnyRoute[] {
  return [
    route({
      method: 'GET',
      path: '/v1/hosts',
      operationId: 'listHosts',
      summary: 'List hosts',
      description: 'A member token sees only the hosts its project\'s servers run on.',
      tag: 'hosts',
      access: MANAGERS,
      params: zNoParams,
      query: zScopeQuery,
      responses: { 200: { description: 'The hosts', schema: zHostViewList } },
      async handler({ principal, query }) {
        const hosts = await visibleHosts(deps, principal, query.projectId);
        return { status: 200, body: { hosts: hosts.map((h) => hostView(h, deps.agent.offlineAfterMs)) } };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/hosts/{host}',
      operationId: 'getHost',
      summary: 'Show a host (by id or name)',
      tag: 'hosts',
      access: MANAGERS,
      params: zHostParams,
      query: zScopeQuery,
      responses: { 200: { description: 'The host', schema: zHostView } },
      async handler({ principal, params, query }) {
        const host = pickHost(await visibleHosts(deps, principal, query.projectId), params.host);
        if (host === undefined) throw new BerthError('NOT_FOUND', `no host ${JSON.stringify(params.host)}`, { hint: 'list them with GET /v1/hosts' });
        return { status: 200, body: hostView(host, deps.agent.offlineAfterMs) };
      },
    }),
    route({
      method: 'DELETE',
      path: '/v1/hosts/{host}',
      operationId: 'forgetHost',
      summary: 'Forget a host that is gone for good (by id or name): drop its attachments without it, then the host',
      description:
        'What `berth host forget` does. Refused with 409 while the host\'s agent is online (heard from within agent.offlineAfterMs: `details.reason: agent-online`), for the API\'s own host (`this-host`), and while an operation on the host runs in a live process (`operations-running`, with their ids; nothing is changed). ' +
        'A host with no agent record (never ran `berth agent`: another replica\'s or an embedded berth\'s own host) that has attachments or running operations is refused (`liveness-unknown`): berth cannot tell it is dead; fence the machine, then call again with `assumeDead=true`. An operation a berth process on the host itself owns counts as live until its lease passed (without a lease: unless `assumeDead=true`). `assumeDead` never overrides an agent heard from lately. ' +
        'The agent is checked again right before each export is removed and before the host goes: back online, the call stops there with 409 (`agent-online`, `details.dropped` the attachments dropped so far). ' +
        'Otherwise each attachment on the host loses the backend\'s export to the host\'s connector (the controller side only, as a forced detach\'s terminate; nothing is asked of the host) and its record, and its volume is `available` again (or `in-use` when attached elsewhere); operations a dead process left there end `failed` (CANCELLED), the host\'s open work items are cancelled, and its servers and the host go. ' +
        'An attachment whose export could not be removed is kept, and so is the host (`removed: false`, the attachment `state: failed` with `errorCode`); calling it again finishes it. A host not known answers 200 with `alreadyGone: true`. ' +
        '`agentTokens` names the config\'s agent tokens that still name the host: remove them from api.tokens. Admin only: it acts across every project.',
      tag: 'hosts',
      access: ADMINS,
      params: zHostParams,
      query: zForgetHostQuery,
      responses: { 200: { description: 'What was done', schema: zForgetHostReport } },
      async handler({ params, query }) {
        const report = await deps.service.forgetHost(params.host, query.assumeDead === undefined ? {} : { assumeDead: query.assumeDead });
        // This app's own token table is the one that matters here (it may hold more than the config the service read).
        const agentTokens = [...new Set([...report.agentTokens, ...deps.agentTokenNames(report.host.name)])];
        return { status: 200, body: { ...report, agentTokens }, headers: { 'cache-control': 'no-store' } };
      },
    }),
  ];
}
