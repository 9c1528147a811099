import type { Kysely } from 'kysely';
import { z } from 'zod';
import type { Database } from './database.js';

/** A channel name: a lower-case SQL identifier, so PostgreSQL's `LISTEN` takes it as it is. */
export const zChannel = z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/, 'use at most 63 lower-case letters, digits and "_", not starting with a digit');

/** A payload: PostgreSQL's NOTIFY takes fewer than 8000 bytes. */
export const zPayload = z.string().refine((value) => Buffer.byteLength(value, 'utf8') < 8000, 'must be shorter than 8000 bytes');

/**
 * How an engine carries notifications between processes (PostgreSQL: `NOTIFY` + one listening
 * connection). Without one, `createKyselyStore` delivers within the process (SQLite).
 */
export interface NotificationBackend {
  /** Send through `db`: inside a transaction it goes out when the transaction commits. */
  send(db: Kysely<Database>, channel: string, payload: string): Promise<void>;
  /** Deliver every notification of `channel` to `deliver` until the returned function is called. */
  subscribe(channel: string, deliver: (payload: string) => void): Promise<() => Promise<void>>;
  /** Stop listening and drop the connection. */
  close(): Promise<void>;
}
