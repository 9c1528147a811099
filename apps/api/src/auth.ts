import { createHash, timingSafeEqual } from 'node:crypto';
import { BerthError, type BerthConfig } from '@berth/core';

/** What a token may do: `admin` everything, `member` its own project, `agent` a host agent. */
export type Role = 'admin' | 'member' | 'agent';

/** Who made a request: the token's name (never the token), its identity, role and project. */
export interface Principal {
  /** The configured token's name: a label for people, not unique (two entries may share one). */
  name: string;
  /**
   * Which configured token this is, unique in the table (`config#3`, `env`): what per-token state
   * such as the idempotency cache is keyed by. Never the token or its digest.
   */
  tokenId: string;
  role: Role;
  /** A member's project; for admin and agent tokens only the default project of their requests. */
  projectId: string | undefined;
  /** An agent token's host (its RFC 1123 name): the one host whose work and secrets it may have. */
  host?: string;
}

/** A configured token: its SHA-256 digest (hex), never the token itself. */
export type TokenEntry = BerthConfig['api']['tokens'][number];

/** The environment variable that holds an admin token for a server with no tokens in its config. */
export const API_TOKEN_ENV = 'BERTH_API_TOKEN';

/** A token given in the environment must be at least this long: a short one can be guessed. */
export const MIN_ENV_TOKEN_LENGTH = 16;

// A bearer token longer than this is not one we issued; refuse it before hashing.
const MAX_TOKEN_LENGTH = 4096;

/** SHA-256 hex digest of a token, as stored in the config's `api.tokens[].sha256`. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/**
 * The tokens a server accepts. Tokens are compared as SHA-256 digests with `timingSafeEqual`,
 * against every entry without stopping at the first match, so neither the digest nor which entry
 * matched leaks through timing.
 */
export class TokenTable {
  private readonly entries: ReadonlyArray<{ digest: Buffer; principal: Principal }>;

  private constructor(entries: ReadonlyArray<{ digest: Buffer; principal: Principal }>) {
    this.entries = entries;
  }

  /**
   * The config's tokens plus `BERTH_API_TOKEN` (an admin token, hashed in memory). Refuses an empty
   * table: the API must never run open.
   */
  static fromConfig(tokens: readonly TokenEntry[], env: Record<string, string | undefined>): TokenTable {
    const entries = tokens.map((t, index) => ({
      digest: Buffer.from(t.sha256, 'hex'),
      principal: { name: t.name, tokenId: `config#${index}`, role: t.role, projectId: t.projectId, ...(t.host === undefined ? {} : { host: t.host }) },
    }));
    const fromEnv = env[API_TOKEN_ENV];
    if (fromEnv !== undefined && fromEnv !== '') {
      if (fromEnv.length < MIN_ENV_TOKEN_LENGTH || fromEnv.length > MAX_TOKEN_LENGTH || /\s/.test(fromEnv)) {
        throw new BerthError('CONFIG', `${API_TOKEN_ENV} must be ${MIN_ENV_TOKEN_LENGTH} to ${MAX_TOKEN_LENGTH} characters without spaces`, {
          hint: 'make one with: openssl rand -hex 32',
        });
      }
      entries.push({ digest: Buffer.from(hashToken(fromEnv), 'hex'), principal: { name: 'env', tokenId: 'env', role: 'admin', projectId: undefined } });
    }
    if (entries.length === 0) {
      throw new BerthError('CONFIG', 'the berth API has no tokens configured and will not run without authentication', {
        hint: `add api.tokens to the config (name, role and the sha256 of each token: printf %s "$TOKEN" | sha256sum), or set ${API_TOKEN_ENV} to an admin token`,
      });
    }
    return new TokenTable(entries);
  }

  /** The names of the agent tokens that act for `host` (names only: never a token or its digest), each once. */
  agentTokenNames(host: string): string[] {
    return [...new Set(this.entries.filter((e) => e.principal.role === 'agent' && e.principal.host === host).map((e) => e.principal.name))];
  }

  /** How many tokens are accepted. */
  get size(): number {
    return this.entries.length;
  }

  /**
   * The principal of an `Authorization` header; throws UNAUTHENTICATED when it is missing,
   * malformed or unknown (one message for all three: a caller learns nothing about the table).
   */
  authenticate(authorization: string | undefined): Principal {
    if (authorization === undefined || authorization === '') {
      throw new BerthError('UNAUTHENTICATED', 'this request needs a bearer token', {
        hint: 'send `Authorization: Bearer <token>` (the berth CLI reads it from BERTH_TOKEN)',
      });
    }
    const match = /^Bearer +(\S+) *$/i.exec(authorization);
    const token = match?.[1];
    if (token === undefined || token.length > MAX_TOKEN_LENGTH) throw invalidToken();
    const digest = createHash('sha256').update(token, 'utf8').digest();
    let found: Principal | undefined;
    for (const entry of this.entries) {
      if (timingSafeEqual(digest, entry.digest) && found === undefined) found = entry.principal;
    }
    if (found === undefined) throw invalidToken();
    return found;
  }
}

function invalidToken(): BerthError {
  return new BerthError('UNAUTHENTICATED', 'the bearer token is not valid', {
    hint: 'check the token sent (the CLI\'s BERTH_TOKEN or --token-file, `berth agent --token-file`, or the Authorization header) against the tokens in the server\'s config',
  });
}
