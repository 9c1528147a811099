import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import type pg from 'pg';
import type { Database } from './database.js';
import type { NotificationBackend } from './notification-backend.js';
import { atPostgresCommit } from './postgres-driver.js';
import { postgresConnectionFailure } from './postgres-errors.js';

/** Options of `createPostgresNotifications`. */
export interface PostgresNotificationsOptions {
  /** A new, unconnected client for the listening connection. */
  newClient: () => pg.Client;
  /** The store URL with its password redacted, for messages. */
  target: string;
  password: string | undefined;
  /** How many channels stay listened to with nobody subscribed (default `MAX_IDLE_CHANNELS`). */
  maxIdleChannels?: number;
}

/** Longest wait between two attempts to re-open a lost listening connection. */
const MAX_RECONNECT_DELAY_MS = 5000;

/**
 * How many channels stay listened to with nobody subscribed. A long-poll subscribes for each poll
 * and leaves when it answers; UNLISTEN then LISTEN again a moment later is two transactions per
 * poll for nothing (an idle fleet of 100 agents committed ~50/s, mostly those). Kept channels
 * cost a list entry on the server; past this many the least recently used one is dropped.
 */
export const MAX_IDLE_CHANNELS = 1024;

/** Channel names are checked by core's `zNotificationChannel` (lower-case identifiers), so quoting is enough. */
function quoted(channel: string): string {
  return `"${channel}"`;
}

/**
 * `LISTEN/NOTIFY` for the store: notifications go out with `pg_notify` on the store's own
 * connection (inside a transaction they leave on commit); one dedicated connection per process,
 * opened on the first `listen`, LISTENs to every channel with listeners and fans each
 * notification out to them in-process. A channel whose last listener left stays listened to
 * (up to `MAX_IDLE_CHANNELS` of them), so the next long-poll on it costs no round trip. When
 * the connection is lost it is re-opened (backing off up to 5 s) while anyone listens, its
 * channels listened to again, and every listener called once with `''` because notifications
 * sent in between were missed.
 */
export function createPostgresNotifications(options: PostgresNotificationsOptions): NotificationBackend {
  /** Every channel LISTENed to (or about to be), with its listeners; an idle one has none. */
  const listeners = new Map<string, Set<(payload: string) => void>>();
  /** The idle channels, least recently used first (a Set keeps insertion order). */
  const idle = new Set<string>();
  const maxIdle = options.maxIdleChannels ?? MAX_IDLE_CHANNELS;
  /** Per channel, its LISTEN in flight or done: a later subscriber waits for it too, so none returns before it is listening. */
  const listened = new Map<string, Promise<void>>();
  /**
   * LISTEN/UNLISTEN go one after another on the listening client: pg warns (and pg@9 refuses)
   * when a query is issued while another runs, and with one long-poll per host they overlap all the time.
   */
  let commands: Promise<unknown> = Promise.resolve();
  const command = (c: pg.Client, text: string): Promise<unknown> => {
    const run = commands.then(() => c.query(text));
    commands = run.catch(() => undefined);
    return run;
  };
  let client: pg.Client | undefined;
  let connecting: Promise<pg.Client> | undefined;
  let reconnectTimer: NodeJS.Timeout | undefined;
  let failures = 0;
  let closed = false;
  /**
   * The connection was lost with channels listened to: whichever opens the next one — the
   * reconnect timer, or a new subscriber first — LISTENs to all of them again (a subscriber that
   * opened it for its own channel alone left every other host's long-poll deaf until restart).
   */
  let relistenAll = false;

  const call = (listener: (payload: string) => void, payload: string): void => {
    try {
      listener(payload);
    } catch {
      // A listener's failure is its own business; the others still get the notification.
    }
  };

  const lost = (lostClient: pg.Client): void => {
    if (client !== lostClient) return;
    client = undefined;
    lostClient.end().catch(() => undefined);
    // Idle channels alone are no reason to reconnect: the next subscriber opens a connection.
    for (const channel of idle) {
      listeners.delete(channel);
      listened.delete(channel);
    }
    idle.clear();
    if (listeners.size > 0) relistenAll = true;
    if (!closed && listeners.size > 0) scheduleReconnect();
  };

  /** The listening connection, opened if need be; a re-opened one (after a loss) LISTENs to every channel again. */
  const connection = (): Promise<pg.Client> => {
    if (client !== undefined) return Promise.resolve(client);
    connecting ??= (async () => {
      const relisten = relistenAll;
      const fresh = options.newClient();
      fresh.on('notification', (message) => {
        for (const listener of listeners.get(message.channel) ?? []) call(listener, message.payload ?? '');
      });
      fresh.on('error', () => lost(fresh));
      fresh.on('end', () => lost(fresh));
      try {
        await fresh.connect();
        // A first connection LISTENs channel by channel, as each subscriber asks.
        if (relisten) for (const channel of listeners.keys()) await command(fresh, `listen ${quoted(channel)}`);
      } catch (error) {
        fresh.end().catch(() => undefined);
        throw postgresConnectionFailure(error, options.target, options.password);
      }
      if (closed) {
        await fresh.end().catch(() => undefined);
        throw postgresConnectionFailure(new Error('the store was closed'), options.target, options.password);
      }
      client = fresh;
      if (relisten) relistenAll = false;
      return fresh;
    })().finally(() => {
      connecting = undefined;
    });
    return connecting;
  };

  function scheduleReconnect(): void {
    if (reconnectTimer !== undefined || closed) return;
    const delay = Math.min(MAX_RECONNECT_DELAY_MS, 100 * 2 ** failures);
    reconnectTimer = setTimeout(() => {
      reconnectTimer = undefined;
      connection().then(
        () => {
          failures = 0;
          for (const set of listeners.values()) for (const listener of set) call(listener, '');
        },
        () => {
          failures += 1;
          scheduleReconnect();
        },
      );
    }, delay);
    // Reconnecting alone must not keep a process alive.
    reconnectTimer.unref();
  }

  return {
    async send(db: Kysely<Database>, channel: string, payload: string): Promise<void> {
      // Inside a transaction it leaves on commit anyway: it goes with COMMIT, saving a round trip.
      await atPostgresCommit(() => sql`select pg_notify(${channel}, ${payload})`.execute(db));
    },

    async subscribe(channel: string, deliver: (payload: string) => void): Promise<() => Promise<void>> {
      let set = listeners.get(channel);
      const first = set === undefined;
      if (set === undefined) {
        set = new Set();
        listeners.set(channel, set);
      }
      const entry = (payload: string): void => deliver(payload);
      set.add(entry);
      idle.delete(channel);
      if (first) listened.set(channel, connection().then(async (c) => void (await command(c, `listen ${quoted(channel)}`))));
      try {
        await listened.get(channel);
      } catch (error) {
        set.delete(entry);
        if (set.size === 0 && listeners.get(channel) === set) {
          listeners.delete(channel);
          listened.delete(channel);
        }
        throw error;
      }
      const own = set;
      return async () => {
        own.delete(entry);
        if (own.size > 0 || listeners.get(channel) !== own) return;
        // Still listened to: the next subscriber (the same agent's next poll) finds it ready.
        idle.add(channel);
        if (idle.size <= maxIdle) return;
        const [oldest] = idle;
        if (oldest === undefined) return;
        idle.delete(oldest);
        listeners.delete(oldest);
        listened.delete(oldest);
        if (client !== undefined) await command(client, `unlisten ${quoted(oldest)}`).catch(() => undefined);
      };
    },

    async close(): Promise<void> {
      closed = true;
      if (reconnectTimer !== undefined) clearTimeout(reconnectTimer);
      reconnectTimer = undefined;
      listeners.clear();
      listened.clear();
      idle.clear();
      await connecting?.catch(() => undefined);
      const open = client;
      client = undefined;
      await open?.end().catch(() => undefined);
    },
  };
}
