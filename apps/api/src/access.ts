import { BerthError, type ProjectScope } from '@berth/core';
import type { Principal, Role } from './auth.js';

/**
 * People and their tools: every route but the agent protocol's (volumes, servers, attachments,
 * operations, hosts). Agent tokens are not among them: an agent token lives on a host, and one
 * stolen there must not read or change the rest of the cloud.
 */
export const MANAGERS: readonly Role[] = ['admin', 'member'];
/** Only administrators (reconcile, and host internals: connector, doctor, plugins, metrics). */
export const ADMINS: readonly Role[] = ['admin'];
/** Host agents only: the agent protocol (register, work, renew, result) and a volume's secrets. */
export const AGENTS: readonly Role[] = ['agent'];

/** Throw FORBIDDEN unless the principal has one of `roles`. */
export function requireRole(principal: Principal, roles: readonly Role[]): void {
  if (principal.role === 'agent' && !roles.includes('agent')) {
    throw new BerthError('FORBIDDEN', 'an agent token may only call the agent protocol (register, work, renew, result) and a volume\'s credentials', {
      hint: 'agent tokens are for `berth agent` on its host; use an admin or member token for this (api.tokens in the config)',
      details: { role: principal.role },
    });
  }
  if (!roles.includes(principal.role)) {
    throw new BerthError('FORBIDDEN', `${/^[aeiou]/.test(principal.role) ? 'an' : 'a'} ${principal.role} token cannot do this`, {
      hint: `this needs a token with the role ${roles.join(' or ')}`,
      details: { role: principal.role },
    });
  }
}

/**
 * The project a request acts in. A member acts only in its own project (its token's, else the
 * server's default): naming another one answers NOT_FOUND, as for any resource it cannot see.
 * Admin and agent tokens act in the project they name, else their token's, else the default.
 */
export function scopeOf(principal: Principal, requested: string | undefined, defaultProject: string): ProjectScope {
  if (principal.role === 'member') {
    const own = principal.projectId ?? defaultProject;
    if (requested !== undefined && requested !== own) {
      throw new BerthError('NOT_FOUND', `no project ${JSON.stringify(requested)}`);
    }
    return { projectId: own };
  }
  const projectId = requested ?? principal.projectId;
  return projectId === undefined ? {} : { projectId };
}

/** The host an agent token acts for; FORBIDDEN for a token that names none. */
export function requireHostAgent(principal: Principal): string {
  requireRole(principal, AGENTS);
  if (principal.host === undefined) {
    throw new BerthError('FORBIDDEN', 'this agent token names no host', {
      hint: 'give the token entry in api.tokens a host: {"role": "agent", "host": "<the agent\'s host name>", ...}',
      details: { role: principal.role },
    });
  }
  return principal.host;
}
