import type { z } from '@berth/core/zod';
import type { zChapConnectionKeys } from './connection-fields.js';

/** CHAP credentials for a login (`node.session.auth.*`) or a discovery (`discovery.sendtargets.auth.*`). */
export interface ChapCredentials {
  username: string;
  password: string;
  /** Mutual CHAP: the name the target answers with. */
  usernameIn?: string;
  /** Mutual CHAP: the target's secret. */
  passwordIn?: string;
}

/** A connection_info's CHAP, checked: the login's and the SendTargets discovery's. */
export interface ConnectionChap {
  /** Session CHAP, when `auth_method` is CHAP. */
  auth?: ChapCredentials;
  /** SendTargets CHAP, when `discovery_auth_method` is CHAP. */
  discoveryAuth?: ChapCredentials;
}

/**
 * The login and discovery CHAP of a parsed connection_info. Every inconsistency (credentials
 * without a method, a method without credentials, half of mutual CHAP) is pushed to `problems`
 * by key name, never with a value.
 */
export function chapOfConnection(data: z.output<typeof zChapConnectionKeys>, problems: string[]): ConnectionChap {
  const auth = credentials(data.auth_method, data.auth_username, data.auth_password, data.auth_username_in, data.auth_password_in, 'auth', problems);
  const discoveryAuth = credentials(
    data.discovery_auth_method,
    data.discovery_auth_username,
    data.discovery_auth_password,
    data.discovery_auth_username_in,
    data.discovery_auth_password_in,
    'discovery_auth',
    problems,
  );
  return { ...(auth === undefined ? {} : { auth }), ...(discoveryAuth === undefined ? {} : { discoveryAuth }) };
}

/** Every secret of a connection's CHAP (for the runner's masking, and for tests that look for leaks). */
export function secretsOfChap(chap: ConnectionChap): string[] {
  return [chap.auth?.password, chap.auth?.passwordIn, chap.discoveryAuth?.password, chap.discoveryAuth?.passwordIn].filter(
    (s): s is string => s !== undefined && s !== '',
  );
}

function credentials(
  method: string | undefined,
  username: string | undefined,
  password: string | undefined,
  usernameIn: string | undefined,
  passwordIn: string | undefined,
  prefix: string,
  problems: string[],
): ChapCredentials | undefined {
  if (method === undefined) {
    // Cinder drivers send credentials with auth_method set; credentials alone are a backend bug.
    if (username !== undefined || password !== undefined) problems.push(`data.${prefix}_method is missing while ${prefix}_username/${prefix}_password are given`);
    return undefined;
  }
  if (method !== 'CHAP') return undefined;
  if (username === undefined) problems.push(`data.${prefix}_username is missing (${prefix}_method is CHAP)`);
  if (password === undefined) problems.push(`data.${prefix}_password is missing (${prefix}_method is CHAP)`);
  if ((usernameIn === undefined) !== (passwordIn === undefined)) {
    problems.push(`data.${prefix}_username_in and data.${prefix}_password_in go together (mutual CHAP needs both)`);
  }
  if (username === undefined || password === undefined) return undefined;
  return {
    username,
    password,
    ...(usernameIn !== undefined && passwordIn !== undefined ? { usernameIn, passwordIn } : {}),
  };
}
