import { z } from 'zod';
import { parseWith } from './errors.js';

/** A channel name: a lower-case SQL identifier, so PostgreSQL's `LISTEN` takes it as it is. */
export const zNotificationChannel = z
  .string()
  .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'use at most 63 lower-case letters, digits and "_", not starting with a digit');

/** A payload: PostgreSQL's NOTIFY takes fewer than 8000 bytes. */
export const zNotificationPayload = z.string().refine((value) => Buffer.byteLength(value, 'utf8') < 8000, 'must be shorter than 8000 bytes');

/**
 * Notifications within one process (a SQLite store, core's memory store): the listeners of a
 * channel, called asynchronously as a notification from another process would be.
 */
export interface NotificationHub {
  /**
   * Validate and deliver; with `afterCommit` (the open transaction's queue) delivery waits for the
   * commit, and a rollback drops it with the queue.
   */
  notify(channel: string, payload: string, afterCommit?: Array<() => void>): void;
  /** Call `listener` with each payload of `channel` until the returned function is called. */
  listen(channel: string, listener: (payload: string) => void): () => Promise<void>;
}

/** A fresh in-process hub (one per store). */
export function createNotificationHub(): NotificationHub {
  const listeners = new Map<string, Set<(payload: string) => void>>();

  const deliver = (channel: string, payload: string): void => {
    for (const listener of listeners.get(channel) ?? []) {
      queueMicrotask(() => {
        try {
          listener(payload);
        } catch {
          // A listener's failure is its own business: it must not stop the others.
        }
      });
    }
  };

  return {
    notify(channel, payload, afterCommit) {
      const name = parseWith(zNotificationChannel, channel, 'notification channel');
      const text = parseWith(zNotificationPayload, payload, 'notification payload');
      if (afterCommit !== undefined) afterCommit.push(() => deliver(name, text));
      else deliver(name, text);
    },
    listen(channel, listener) {
      const name = parseWith(zNotificationChannel, channel, 'notification channel');
      let set = listeners.get(name);
      if (set === undefined) {
        set = new Set();
        listeners.set(name, set);
      }
      // Wrapped, so the same function listening twice is two subscriptions.
      const entry = (payload: string): void => listener(payload);
      const own = set;
      own.add(entry);
      return async () => {
        own.delete(entry);
        if (own.size === 0 && listeners.get(name) === own) listeners.delete(name);
      };
    },
  };
}
