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

/**
 * Idempotency for POSTs that do not start an operation (create volume/server, extend, the
 * three-phase attachments API): the first successful reply per (token, key) is kept in memory —
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
      if (entry.fingerprint !== fingerprint) {
        throw new BerthError('UNPROCESSABLE', 'this Idempotency-Key was used for a different request', {
          hint: 'use a new key (a random UUID) for each distinct request',
        });
      }
      if (entry.state === 'pending') {
        throw new BerthError('CONFLICT', 'a request with this Idempotency-Key is still being processed', {
          hint: 'retry once it has finished',
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
