import { createHash } from 'node:crypto';
import { BerthError } from '@berth/core';
import { BoundedMap } from './bounded-map.js';

/** A reply as a route returns it. */
export interface StoredReply {
  status: number;
  body: unknown;
  headers: Record<string, string>;
}

type Entry = { fingerprint: string; expiresAt: number } & ({ state: 'pending' } | { state: 'done'; reply: StoredReply });

/** What `begin` decided: run the request, or send the reply stored for the key. */
export type IdempotencyDecision = { kind: 'run' } | { kind: 'replay'; reply: StoredReply };

/** An `Idempotency-Key` header value: 1 to 200 visible ASCII characters. */
export const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,200}$/;

/** The fingerprint of a request: a retry must send the same method, URL and body. */
export function requestFingerprint(method: string, url: string, body: unknown): string {
  return createHash('sha256').update(`${method} ${url}\n${JSON.stringify(body ?? null)}`).digest('hex');
}

/** The cache scope of a request: the token's identity and the project it acts in. */
export function idempotencyScope(tokenId: string, projectId: string | undefined): string {
  return `${tokenId}\n${projectId ?? '*'}`;
}

/**
 * Idempotency for POSTs that do not start an operation (create volume/server, extend, the
 * three-phase attachments API): the first successful reply per (scope, key) — the scope being the
 * token's identity and the project the request acts in — is kept in memory —
 * bounded in count and age — and a retry gets it back. The same key with another request is
 * UNPROCESSABLE; while the first is still running, CONFLICT. Attach and detach do not use this:
 * the service keeps their keys in the operations table, across restarts.
 */
export class IdempotencyCache {
  private readonly entries: BoundedMap<string, Entry>;

  constructor(
    capacity = 1000,
    private readonly ttlMs = 24 * 60 * 60 * 1000,
  ) {
    this.entries = new BoundedMap(capacity);
  }

  /** Claim `key` for a request, or get the reply stored for it. */
  begin(scope: string, key: string, fingerprint: string): IdempotencyDecision {
    const id = `${scope}\n${key}`;
    const entry = this.entries.get(id);
    const now = Date.now();
    if (entry !== undefined && entry.expiresAt > now) {
      if (entry.fingerprint !== fingerprint) throw keyReused();
      if (entry.state === 'pending') {
        throw new BerthError('CONFLICT', 'a request with this Idempotency-Key is still being processed', {
          hint: 'retry once it has finished',
          details: { retryAfterSeconds: 1 },
        });
      }
      return { kind: 'replay', reply: entry.reply };
    }
    this.entries.set(id, { state: 'pending', fingerprint, expiresAt: now + this.ttlMs });
    return { kind: 'run' };
  }

  /** Keep the reply of a request that succeeded. */
  complete(scope: string, key: string, fingerprint: string, reply: StoredReply): void {
    this.entries.set(`${scope}\n${key}`, { state: 'done', fingerprint, reply, expiresAt: Date.now() + this.ttlMs });
  }

  /** Release the key of a request that failed (nothing changed, so a retry may run again). */
  abandon(scope: string, key: string): void {
    this.entries.delete(`${scope}\n${key}`);
  }
}

/**
 * What each attach/detach `Idempotency-Key` this process saw was used for (a fingerprint of the
 * resolved request), so that the same key with another request is UNPROCESSABLE, as on the other
 * routes, even where the operation row cannot tell (mode, multipath, force). Keys are global, as in
 * the operations table. Bounded; a restart forgets, and then only kind, volume and server are checked.
 */
export class OperationKeyLog {
  private readonly fingerprints: BoundedMap<string, string>;

  constructor(capacity = 1000) {
    this.fingerprints = new BoundedMap(capacity);
  }

  /** Throw UNPROCESSABLE when `key` was used for a request other than `fingerprint`. */
  check(key: string, fingerprint: string): void {
    const known = this.fingerprints.get(key);
    if (known !== undefined && known !== fingerprint) throw keyReused('attach or detach');
  }

  /** Remember what `key` was used for. */
  remember(key: string, fingerprint: string): void {
    this.fingerprints.set(key, fingerprint);
  }
}

/** The error for an `Idempotency-Key` sent again with another request. */
export function keyReused(what = 'request'): BerthError {
  return new BerthError('UNPROCESSABLE', 'this Idempotency-Key was used for a different request', {
    hint: `use a new key (a random UUID) for each distinct ${what}`,
  });
}
