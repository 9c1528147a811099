import { BerthError, type ProjectScope } from '@berth/core';
import type { Principal, Role } from './auth.js';

/** Every role. */
export const ANY_ROLE: readonly Role[] = ['admin', 'member', 'agent'];
/** Roles that manage volumes and servers. */
export const MANAGERS: readonly Role[] = ['admin', 'member'];
/** Only administrators (reconcile: it compares and fixes every project's volumes). */
export const ADMINS: readonly Role[] = ['admin'];
/** Roles that see host internals (connector, doctor, plugins, metrics, volume secrets). */
export const OPERATORS: readonly Role[] = ['admin', 'agent'];

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

/** Whether the principal may receive connection secrets (CHAP passwords) in connection_info. */
export function seesSecrets(principal: Principal): boolean {
  return principal.role !== 'member';
}
