import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { BerthError, toBerthError } from './errors.js';
import type { Logger } from './logger.js';
import { ownerState } from './owner.js';
import { withStoreRetry } from './pipeline/store-retry.js';
import { withDeferredDurability, type Store } from './store.js';

/** Who takes a lease, and how long to wait for it. */
export interface LeaseOptions {
  /** This process (`pid@host`); each lease taken gets its own token after it. */
  owner: string;
  /** This machine's host name (dead holders are only recognised here). */
  hostname: string;
  /** How long a lease counts before others may take it over (a backstop for a reused pid). */
  ttlMs: number;
  /** Give up waiting when this fires. */
  signal: AbortSignal;
  /** What the lease guards, for messages: `volume db1 on this host`. */
  what: string;
  logger?: Logger;
  /**
   * Renew the lease this often while `fn` runs (replicas: a short `ttlMs` that a dead holder's
   * successor on another machine waits out, kept alive by its live holder).
   */
  renewEveryMs?: number;
  /**
   * Do not wait for a live holder: throw CONFLICT (`details.leaseHeld`) at once (a dead or expired
   * one is still taken over). For recovery passes, which leave live work alone.
   */
  noWait?: boolean;
}

/** A lease held by `withLease`'s `fn`. */
export interface HeldLease {
  /**
   * Run `work` as one transaction that also confirms the lease is still this holder's and
   * releases it: the last writes under the lease and its release in one commit. Once it committed
   * the lease is gone (`fn` must write nothing more under it). When it fails for another reason,
   * the lease is still held and released when `fn` settles; when another process took the lease
   * over (this one paused past it), nothing of `work` is written and it throws CONFLICT with
   * `details.leaseLost` — the lease is that process's, and is left to it.
   */
  releaseWith<T>(work: (store: Store) => Promise<T>, options?: ReleaseWithOptions): Promise<T>;
  /**
   * Inside a transaction `tx` of the caller's (last, just before its commit): confirm the lease is
   * still this holder's, so that the transaction's writes never land after another process took
   * the lease over (this one paused past it). Throws CONFLICT with `details.leaseLost` otherwise.
   * The lease stays held (released when `fn` settles).
   */
  confirm(tx: Store): Promise<void>;
}

/** How `releaseWith` commits. */
export interface ReleaseWithOptions {
  /**
   * Commit deferred-durable (`Store.deferDurability`): for a caller whose next write is durable
   * and comes before anything acts on what `work` wrote.
   */
  deferred?: boolean;
}

const FIRST_WAIT_MS = 2;
const MAX_WAIT_MS = 100;

/** The lease key that serialises the host-side steps of one volume on one host. */
export function deviceLeaseKey(hostId: string, volumeId: string): string {
  return `device:${hostId}:${volumeId}`;
}

/**
 * The lease key that serialises the decisions on one volume's exports: an attach's `initialize`
 * (the backend's export, then its record) and a detach's `terminate` (who else uses the export,
 * then the backend's removal). Per volume, not per host: which connectors are "the same host" is
 * decided by initiator or by name (`exportSharers`), and two keys for one host would not exclude
 * each other (a record without an initiator beside a new connector with one).
 */
export function exportLeaseKey(volumeId: string): string {
  return `export:${volumeId}`;
}

/**
 * The lease a volume's delete or extend holds while the volume is `deleting` / `extending`: a
 * volume in one of them whose lease is free or held by a dead process was left by a killed
 * command, and recovery finishes it (`recoverVolumeLifecycles`).
 */
export function volumeLeaseKey(volumeId: string): string {
  return `volume:${volumeId}`;
}

/**
 * The lease a volume's create holds from before its row exists (`creating`) until the row is
 * `available` or gone: keyed by project and name (a hash: names are long), which the row carries.
 */
export function volumeCreateLeaseKey(projectId: string, name: string): string {
  return `volume-create:${createHash('sha256').update(`${projectId}\0${name}`).digest('hex')}`;
}

/** How long past its lease a dead holder's still-running commands hold it (the default command timeout, 30 s, and the 2 s to SIGKILL, with room). */
const COMMANDS_PAST_LEASE_MS = 35_000;

/**
 * The leases this process holds now (their holder tokens, `owner/<INSTANCE>-uuid`): from before
 * the acquire's insert until `fn` settled and its release was tried. A row that names this process with a token not here is
 * one this process let go of without its release reaching the store (a full disk, the database
 * gone for the release's retries): nothing holds it, and waiting on it would wait on ourselves
 * until the deadline.
 */
const heldHere = new Set<string>();
/**
 * This copy of the module's mark in its tokens: only rows carrying it are ones `heldHere` can
 * vouch for. Another thread of this process (worker threads: replicas in the fleet bench) has the
 * same owner but its own set, and its rows are waited for as another process's.
 */
const INSTANCE = randomUUID().slice(0, 8);

/**
 * Run `fn` holding the lease `key` in the store: the cross-process lock two `berth attach`
 * processes need (the in-process keyed lock does not see the other process). A holder that is a
 * dead process on this host, or whose lease expired, is taken over by compare-and-swap; a live one
 * is waited for (queued, with a short backoff) until `signal` fires. The lease is released when
 * `fn` settles; if the release cannot be written, the lease ends with this process, at expiry, or
 * at this process's next lease of the key (which takes its own leftover over at once).
 */
export async function withLease<T>(store: Store, key: string, options: LeaseOptions, fn: (lease: HeldLease) => Promise<T>): Promise<T> {
  const me = `${options.owner}/${INSTANCE}-${randomUUID()}`;
  // Held from before the insert: a reply that comes late must not let another flow of this
  // process see the row as a leftover and take it over while this one goes on to hold it too.
  heldHere.add(me);
  try {
    return await holding(store, key, options, me, fn);
  } finally {
    heldHere.delete(me);
  }
}

async function holding<T>(store: Store, key: string, options: LeaseOptions, me: string, fn: (lease: HeldLease) => Promise<T>): Promise<T> {
  const expiry = (): string => new Date(Date.now() + options.ttlMs).toISOString();
  const retry = { what: `lease ${key}`, signal: options.signal, ...(options.logger ? { logger: options.logger } : {}) };
  let wait = FIRST_WAIT_MS;
  let last: string | undefined;
  for (;;) {
    if (options.signal.aborted) {
      const reason = toBerthError(options.signal.reason);
      throw new BerthError(reason.code, `gave up waiting for ${options.what}: ${last ? `process ${last.split('/')[0]} holds it` : 'it stayed busy'}`, {
        hint: 'another berth command is connecting or disconnecting this volume on this host; wait for it (`berth operation list --state running`) and retry',
        details: { lease: key, holder: last ?? null },
        cause: reason,
      });
    }
    // A lease serialises live processes, which a power cut ends with it: its rows need not reach
    // the disk before the work it guards (that work journals itself), so they are deferred-durable.
    const holder = await withDeferredDurability(store, () => withStoreRetry(() => store.locks.tryAcquire(key, me, expiry()), retry));
    if (holder === undefined) break;
    // Our own row: an earlier attempt's insert took effect though its answer was lost (a
    // connection the database ended; the store's retry ran it again). The lease is ours.
    if (holder.owner === me) break;
    last = holder.owner;
    // A dead holder on this host whose commands still run (its spawner stays for them) holds on,
    // past its lease by up to `COMMANDS_PAST_LEASE_MS`: what it started must end before another
    // process acts on the device — but one stuck in the kernel past its SIGKILL must not hold it for good.
    // Our own process's row that no `withLease` of ours holds: a release that never reached the store.
    const leftover = holder.owner.startsWith(`${options.owner}/${INSTANCE}-`) && !heldHere.has(holder.owner);
    const left = holder.owner === '' || leftover ? 'dead' : ownerState(holder.owner, options.hostname, options.owner).state;
    const expired = Date.parse(holder.expiresAt) + (left === 'commands' ? COMMANDS_PAST_LEASE_MS : 0) < Date.now();
    const stale = holder.owner === '' || expired || left === 'dead';
    if (stale && holder.owner !== '' && (await withStoreRetry(() => store.locks.takeOver(key, me, holder.owner, expiry()), retry))) {
      options.logger?.warn({ lease: key, from: holder.owner }, leftover ? 'took over a lease this process held before and could not release' : 'took over a lease its dead holder left');
      break;
    }
    if (stale) continue;
    if (options.noWait === true) {
      throw new BerthError('CONFLICT', `${options.what} is held by process ${holder.owner.split('/')[0]}`, {
        details: { lease: key, holder: holder.owner, leaseHeld: true },
      });
    }
    await sleep(wait, undefined, { signal: options.signal }).catch(() => undefined);
    wait = Math.min(wait * 2, MAX_WAIT_MS);
  }
  const renew = async (): Promise<void> => {
    const kept = await store.locks.takeOver(key, me, me, expiry()).catch(() => false);
    if (!kept) options.logger?.warn({ lease: key }, 'could not renew a lease; another process may take it over when it passes');
  };
  const renewal = options.renewEveryMs === undefined ? undefined : setInterval(() => void renew(), options.renewEveryMs);
  renewal?.unref();
  let released = false;
  const confirm = async (tx: Store): Promise<void> => {
    if (await tx.locks.takeOver(key, me, me, expiry())) return;
    throw new BerthError('CONFLICT', `lost the lease of ${options.what}: another process took it over while this one could not renew it (a long pause?)`, {
      hint: 'nothing of this step was recorded; the process that took the lease over finishes or undoes it',
      details: { lease: key, leaseLost: true },
    });
  };
  const lease: HeldLease = {
    confirm,
    async releaseWith<R>(work: (store: Store) => Promise<R>, releaseOptions: ReleaseWithOptions = {}): Promise<R> {
      const commit = (): Promise<R> =>
        store.transaction(async (tx) => {
          const result = await work(tx);
          // Still ours, confirmed in this commit (a renewal, a compare-and-swap on our own row): a
          // holder paused past its lease (SIGSTOP, a VM stall) resumes here before its renewal
          // could tell it, and must not write over what the process that took the lease over did.
          // Confirmed after `work`, just before the release: the lease's row is locked only for
          // the end of the commit, never while `work` waits on other rows (renewals wait on it).
          await confirm(tx);
          await tx.locks.release(key, me);
          return result;
        });
      const value = releaseOptions.deferred === true ? await withDeferredDurability(store, commit) : await commit();
      released = true;
      clearInterval(renewal);
      return value;
    },
  };
  try {
    return await fn(lease);
  } finally {
    clearInterval(renewal);
    if (!released) await withDeferredDurability(store, () => withStoreRetry(() => store.locks.release(key, me), { what: `release lease ${key}`, budgetMs: 10_000 })).catch((error: unknown) =>
      options.logger?.warn({ lease: key, err: toBerthError(error).message }, 'could not release a lease; this process takes it over when it needs it again, others when it ends or expires'),
    );
  }
}
