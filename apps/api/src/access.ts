import { BerthError, type ProjectScope } from '@berth/core';
import type { Principal, Role } from './auth.js';

/** Every role. */
export const ANY_ROLE: readonly Role[] = ['admin', 'member', 'agent'];
/** Roles that manage volumes and servers. */
export const MANAGERS: readonly Role[] = ['admin', 'member'];
/** Only administrators (reconcile: it compares and fixes every project's volumes). */
export const ADMINS: readonly Role[] = ['admin'];
/** Roles that see host internals (connector, doctor, plugins, metrics). */
export const OPERATORS: readonly Role[] = ['admin', 'agent'];
/** Host agents only (the agent protocol, a volume's secrets). */
export const AGENTS: readonly Role[] = ['agent'];

/** Throw FORBIDDEN unless the principal has one of `roles`. */
export function requireRole(principal: Principal, roles: readonly Role[]): void {
  if (!roles.includes(principal.role)) {
    throw new BerthError('FORBIDDEN', `a ${principal.role} token cannot do this`, {
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

/**
 * Whether the principal may receive connection secrets (CHAP passwords) of an attachment on the
 * host named `attachmentHost`: only the agent of that very host (it connects the volume there).
 * Admins and members get connection_info without them.
 */
export function seesSecrets(principal: Principal, attachmentHost: string | undefined): boolean {
  return principal.role === 'agent' && principal.host !== undefined && principal.host === attachmentHost;
}
