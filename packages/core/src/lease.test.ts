import { hostname } from 'node:os';
import { processRunsSync } from '@berth/host';
import { killedWithCommand } from '@berth/host/testing';
import { describe, expect, it, vi } from 'vitest';
import { BerthError } from './errors.js';
import { withLease, type LeaseOptions } from './lease.js';
import { createMemoryStore } from './memory-store.js';
import type { LockHolder, Store } from './store.js';

/** The store's lease table, in memory, with the same compare-and-swap semantics. */
function memoryLocks(): { store: Store; rows: Map<string, LockHolder> } {
  const rows = new Map<string, LockHolder>();
  const locks = {
    async tryAcquire(key: string, owner: string, expiresAt: string) {
      const held = rows.get(key);
      if (held) return held;
      rows.set(key, { owner, acquiredAt: new Date().toISOString(), expiresAt });
      return undefined;
    },
    async takeOver(key: string, owner: string, expected: string, expiresAt: string) {
      if (rows.get(key)?.owner !== expected) return false;
      rows.set(key, { owner, acquiredAt: new Date().toISOString(), expiresAt });
      return true;
    },
    async release(key: string, owner: string) {
      if (rows.get(key)?.owner === owner) rows.delete(key);
    },
    async holder(key: string) {
      return rows.get(key);
    },
  };
  return { store: { locks } as unknown as Store, rows };
}

const self = `${process.pid}@${hostname()}`;

function options(signal: AbortSignal = AbortSignal.timeout(5_000)): LeaseOptions {
  return { owner: self, hostname: hostname(), ttlMs: 60_000, signal, what: 'volume v on this host' };
}

describe('withLease', () => {
  it('waits for a dead holder on this host whose command still runs, even past its lease, and takes the lease once the command ended', async () => {
    const { store, rows } = memoryLocks();
    const killed = await killedWithCommand({ timeoutMs: 20_000 });
    try {
      // Its lease has passed (a replica's short lease that nobody renews any more).
      rows.set('k', { owner: `${killed.pid}@${hostname()}/token`, acquiredAt: new Date().toISOString(), expiresAt: new Date(Date.now() - 1_000).toISOString() });
      let taken = false;
      let looks = 0;
      const tryAcquire = store.locks.tryAcquire.bind(store.locks);
      store.locks.tryAcquire = async (...args) => {
        looks += 1;
        return tryAcquire(...args);
      };
      const taking = withLease(store, 'k', options(AbortSignal.timeout(20_000)), async () => {
        taken = true;
        return processRunsSync(killed.command);
      });
      // It looked at the holder three times and waited (before: taken at once, beside the command).
      await vi.waitFor(() => expect(looks).toBeGreaterThanOrEqual(3), { timeout: 10_000 });
      expect(taken).toBe(false);
      await killed.finish();
      expect(await taking).toBe(false);
    } finally {
      await killed.dispose();
    }
  }, 30_000);


  it('runs holders of one key one after another, and releases the lease', async () => {
    const { store, rows } = memoryLocks();
    const events: string[] = [];
    let release!: () => void;
    const first = withLease(store, 'k', options(), async () => {
      events.push('first in');
      await new Promise<void>((resolve) => (release = resolve));
      events.push('first out');
    });
    await new Promise((resolve) => setImmediate(resolve));
    const second = withLease(store, 'k', options(), async () => {
      events.push('second in');
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(events).toEqual(['first in']);
    release();
    await Promise.all([first, second]);
    expect(events).toEqual(['first in', 'first out', 'second in']);
    expect(rows.size).toBe(0);
  });

  it('takes over a lease whose holder is a dead process on this host, or expired', async () => {
    const { store, rows } = memoryLocks();
    rows.set('dead', { owner: `999999999@${hostname()}/token`, acquiredAt: '', expiresAt: '2999-01-01T00:00:00.000Z' });
    rows.set('expired', { owner: `1@${hostname()}/token`, acquiredAt: '', expiresAt: '2000-01-01T00:00:00.000Z' });
    expect(await withLease(store, 'dead', options(), async () => rows.get('dead')?.owner.startsWith(self))).toBe(true);
    expect(await withLease(store, 'expired', options(), async () => rows.get('expired')?.owner.startsWith(self))).toBe(true);
  });

  it('takes a lease whose first insert took effect though its answer was lost (the store retried it) at once', async () => {
    const { store, rows } = memoryLocks();
    const locks = store.locks;
    let lost = true;
    const retried = {
      ...store,
      locks: {
        ...locks,
        async tryAcquire(key: string, owner: string, expiresAt: string) {
          const held = await locks.tryAcquire(key, owner, expiresAt);
          if (!lost) return held;
          lost = false;
          // Inserted, then the connection went: retryable, as the PostgreSQL store says after 57P01.
          throw new BerthError('UNAVAILABLE', 'terminating connection due to administrator command', { details: { retryable: true } });
        },
      },
    } as Store;
    // Without the check it would wait for its own row to expire (the 60 s ttl), past this deadline.
    expect(await withLease(retried, 'k', options(AbortSignal.timeout(2_000)), async () => rows.get('k')?.owner.startsWith(self))).toBe(true);
    expect(rows.size).toBe(0);
  });

  it('takes over at once a lease this process let go of without its release reaching the store (a full disk), but waits for one it still holds', async () => {
    const { store, rows } = memoryLocks();
    const locks = store.locks;
    let failRelease = true;
    const full = {
      ...store,
      locks: {
        ...locks,
        async release(key: string, owner: string) {
          if (!failRelease) return locks.release(key, owner);
          throw new BerthError('HOST_UNSUPPORTED', 'the disk is full');
        },
      },
    } as Store;
    await withLease(full, 'k', options(), async () => 'ran');
    // The row stays, naming this (live) process: without the check the next lease waited on it until the deadline.
    expect(rows.get('k')?.owner.startsWith(`${self}/`)).toBe(true);
    failRelease = false;
    const started = Date.now();
    expect(await withLease(full, 'k', options(AbortSignal.timeout(2_000)), async () => 'again')).toBe('again');
    expect(Date.now() - started).toBeLessThan(1_500);
    expect(rows.size).toBe(0);

    // One this process holds now, in another flow, is waited for as before.
    let release: () => void = () => undefined;
    const holding = withLease(store, 'held', options(), () => new Promise<void>((resolve) => (release = resolve)));
    await vi.waitFor(() => expect(rows.has('held')).toBe(true));
    const error = await withLease(store, 'held', options(AbortSignal.timeout(100)), async () => 'ran').catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    release();
    await holding;
  });

  it('a flow whose acquire answer comes late is not taken for a leftover by another flow of this process: one holder at a time', async () => {
    const { store, rows } = memoryLocks();
    const locks = store.locks;
    let delayed = false;
    const slow = {
      ...store,
      locks: {
        ...locks,
        async tryAcquire(key: string, owner: string, expiresAt: string) {
          const held = await locks.tryAcquire(key, owner, expiresAt);
          if (!delayed) {
            delayed = true;
            // The row is in; the answer is not back yet.
            await new Promise((resolve) => setImmediate(resolve));
            await vi.waitFor(() => expect(attempts).toBeGreaterThan(1), { timeout: 2_000, interval: 1 });
          }
          attempts += 1;
          return held;
        },
      },
    } as Store;
    let attempts = 0;
    let inside = 0;
    let most = 0;
    const work = async (): Promise<void> => {
      inside += 1;
      most = Math.max(most, inside);
      await new Promise((resolve) => setTimeout(resolve, 20));
      inside -= 1;
    };
    await Promise.all([withLease(slow, 'k', options(), work), withLease(slow, 'k', options(), work)]);
    expect(most).toBe(1);
    expect(rows.size).toBe(0);
  });

  it('waits for a live holder on another host until the deadline, and says who holds it', async () => {
    const { store, rows } = memoryLocks();
    rows.set('busy', { owner: '42@another-host/token', acquiredAt: '', expiresAt: '2999-01-01T00:00:00.000Z' });
    const error = await withLease(store, 'busy', options(AbortSignal.timeout(100)), async () => 'ran').catch((e: unknown) => e);
    expect(BerthError.is(error) && error.message).toMatch(/gave up waiting for volume v on this host: process 42@another-host holds it/);
    expect(BerthError.is(error) && error.hint).toMatch(/operation list --state running/);
  });

  it('renews a short lease while its holder works (replicas), so another machine never takes it from a live holder', async () => {
    const { store, rows } = memoryLocks();
    const expiries: string[] = [];
    const renewed = await withLease(store, 'short', { ...options(), ttlMs: 1_000, renewEveryMs: 5 }, async () => {
      // Work until the lease was renewed twice (each renewal moves its expiry on).
      for (;;) {
        const expiresAt = rows.get('short')?.expiresAt ?? '';
        if (expiries.at(-1) !== expiresAt) expiries.push(expiresAt);
        if (expiries.length >= 3) return rows.get('short')?.owner.startsWith(self);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    });
    expect(renewed).toBe(true);
    expect(rows.size).toBe(0);
  });
});

describe('withLease, paused past its lease', () => {
  it("a holder that resumes after another process took its lease over commits nothing with `releaseWith`", async () => {
    const store = createMemoryStore();
    const volume = await store.volumes.create({ name: 'v', projectId: 'p', sizeBytes: 1024, backend: 'file', multiattach: false, status: 'available' });
    const outcome = withLease(store, 'k', { ...options(), ttlMs: 1_000 }, async (lease) => {
      // Frozen here past the lease; another replica's recovery took it over (the holder on another host).
      const held = await store.locks.holder('k');
      expect(await store.locks.takeOver('k', 'other@elsewhere/1', held!.owner, new Date(Date.now() + 60_000).toISOString())).toBe(true);
      return lease.releaseWith((tx) => tx.volumes.transition(volume.id, ['available'], 'error'));
    });
    await expect(outcome).rejects.toMatchObject({ code: 'CONFLICT', details: { leaseLost: true } });
    expect((await store.volumes.require(volume.id)).status).toBe('available');
    expect((await store.locks.holder('k'))?.owner).toBe('other@elsewhere/1');
  });
});
