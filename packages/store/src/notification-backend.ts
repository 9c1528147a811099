import type { Kysely } from 'kysely';
import type { Database } from './database.js';

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
