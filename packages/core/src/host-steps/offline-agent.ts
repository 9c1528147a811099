import { BerthError } from '../errors.js';
import type { HostSteps } from './host-steps.js';

/**
 * Refuse an operation whose host steps would go to an agent that has been offline for another
 * long-poll past `offlineAfterMs` (a dead host, a stopped agent): at once, before anything is
 * touched, instead of waiting the whole deadline for an agent that is known to be gone. An agent
 * that is only late — and one a replica's clock ahead of the one that wrote its beat only seems to
 * be — still gets the deadline.
 */
export function refuseOfflineAgent(steps: HostSteps, agent: { offlineAfterMs: number; pollWaitMs: number }, what: 'attach' | 'detach', now = Date.now()): void {
  const { host } = steps;
  if (steps.kind !== 'remote' || host.agent === null) return;
  const { offlineAfterMs } = agent;
  const seen = Date.parse(host.agent.lastSeenAt);
  const silentMs = Number.isNaN(seen) ? undefined : Math.max(0, now - seen);
  if (silentMs !== undefined && silentMs <= offlineAfterMs + agent.pollWaitMs) return;
  const heard = silentMs === undefined ? 'never heard from' : `last heard from ${Math.round(silentMs / 1000)} s ago`;
  throw new BerthError('UNAVAILABLE', `host ${host.name}'s agent is offline (${heard}): the ${what} was not started there, nothing was changed`, {
    hint:
      what === 'attach'
        ? `start \`berth agent\` on ${host.name}, then attach again`
        : `start \`berth agent\` on ${host.name}, then detach again; if the host is gone for good, fence it and run \`berth host forget ${host.name}\``,
    details: { hostId: host.id, reason: 'agent-offline', lastSeenAt: host.agent.lastSeenAt, offlineAfterMs },
  });
}
