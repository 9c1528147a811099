import { hostChannel, parseWorkDoneNotice, WORK_DONE_CHANNEL } from '../agent-protocol.js';
import { BerthError, toBerthError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { StoreNotifications, WorkItemRepository } from '../store.js';
import type { WorkItem } from '../work-item.js';

/** What the waiter needs of the store (the many-hosts members). */
export interface WaiterStore {
  workItems: WorkItemRepository;
  notifications: StoreNotifications;
}

interface Waiting {
  resolve(item: WorkItem): void;
  reject(error: unknown): void;
}

/**
 * Waits for work items to finish, without polling: one `listen(work_done)` per process wakes the
 * waiter of the item named in the notification, with the finished item the notification carries
 * (sent in the reporting transaction, so it is what was committed), or re-reads it when the
 * notification carries only its id. After a lost connection (`''`) every waited item is re-read. While an item is
 * claimed, a timer at its lease's end runs `workItems.expire()` — an agent that died holding it
 * lost its lease — and wakes the host's agents to claim it again.
 */
export class WorkItemWaiter {
  private readonly waiting = new Map<string, Set<Waiting>>();
  private readonly leaseTimers = new Map<string, NodeJS.Timeout>();
  private listening: Promise<() => Promise<void>> | undefined;
  /** `listening` has resolved: `work_done` is listened to. */
  private listens = false;

  constructor(
    private readonly store: WaiterStore,
    private readonly logger: Logger,
    /** The agents' lease: a pending item is looked at again after this long (an agent may have claimed it and died). */
    private readonly leaseMs: number,
  ) {}

  /**
   * Resolve with the item once it is `done` or `failed`; reject with `signal`'s reason when it
   * fires first. `justCreated`: the caller committed the item and calls this at once, with no I/O
   * in between; when this process already listens, no notification of it can have been missed
   * (one arrives as I/O, after the waiter is in place), so the first read is skipped and the item
   * looked at one lease later, as a pending one.
   */
  async wait(id: string, signal: AbortSignal, justCreated = false): Promise<WorkItem> {
    // Listening already (not about to): this call waits on no I/O before the waiter is in place.
    const listened = this.listens;
    if (this.listening === undefined) {
      const listening = this.store.notifications.listen(WORK_DONE_CHANNEL, (payload) => this.wake(payload));
      this.listening = listening;
      // A LISTEN that failed (the database was down) is tried again by the next wait, not kept:
      // kept, every later wait of this process would fail with that old error.
      listening.catch(() => {
        if (this.listening === listening) this.listening = undefined;
      });
    }
    await this.listening;
    this.listens = true;
    signal.throwIfAborted();
    const finished = new Promise<WorkItem>((resolve, reject) => {
      const entry: Waiting = {
        resolve: (item) => {
          signal.removeEventListener('abort', onAbort);
          resolve(item);
        },
        reject,
      };
      const onAbort = (): void => {
        this.forget(id, entry);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      let set = this.waiting.get(id);
      if (!set) this.waiting.set(id, (set = new Set()));
      set.add(entry);
    });
    // It may have finished before the listener was in place (or before this call).
    if (justCreated && listened) this.armLease(id, Date.now() + this.leaseMs);
    else void this.check(id);
    return finished;
  }

  /** Stop listening and the lease timers (the process is closing); waiters are left to their signals. */
  async close(): Promise<void> {
    for (const timer of this.leaseTimers.values()) clearTimeout(timer);
    this.leaseTimers.clear();
    const listening = this.listening;
    this.listening = undefined;
    this.listens = false;
    // A LISTEN that failed has nothing to stop, and must not keep the caller from closing the store.
    if (listening) await listening.then((stop) => stop()).catch(() => undefined);
  }

  /** A `work_done` notification: `''` (a lost connection) re-reads every waited item. */
  private wake(payload: string): void {
    if (payload === '') {
      for (const id of [...this.waiting.keys()]) void this.check(id);
      return;
    }
    const { id, item } = parseWorkDoneNotice(payload);
    if (!this.waiting.has(id)) return;
    // The finished item came whole: no read. Otherwise (too large, or an older replica's id) read it.
    if (item !== undefined && (item.state === 'done' || item.state === 'failed')) this.settle(id, (w) => w.resolve(item));
    else void this.check(id);
  }

  /** Re-read one waited item: hand it to its waiters when finished, else arm its lease timer. */
  private async check(id: string): Promise<void> {
    let item: WorkItem | undefined;
    try {
      item = await this.store.workItems.get(id);
    } catch (error) {
      // A store hiccup: the next notification (or the lease timer) reads it again.
      this.logger.warn({ workItemId: id, err: toBerthError(error).message }, 'could not read a work item');
      return;
    }
    const set = this.waiting.get(id);
    if (!set) return;
    if (!item) {
      this.settle(id, (w) => w.reject(new BerthError('NOT_FOUND', `work item ${id} is gone`)));
      return;
    }
    if (item.state === 'done' || item.state === 'failed') {
      this.settle(id, (w) => w.resolve(item));
      return;
    }
    // Claimed: look again when its lease ends. Pending: a claim sends no notification, so look again
    // one lease later (the agent that claims it may die holding it).
    const at = item.state === 'claimed' && item.leaseExpiresAt ? Date.parse(item.leaseExpiresAt) : Date.now() + this.leaseMs;
    this.armLease(item.id, Number.isNaN(at) ? Date.now() + this.leaseMs : at);
  }

  private armLease(id: string, at: number): void {
    clearTimeout(this.leaseTimers.get(id));
    // A little past the lease, so the store's clock agrees it passed.
    const timer = setTimeout(() => void this.expire(id), Math.max(0, at - Date.now()) + 50);
    timer.unref();
    this.leaseTimers.set(id, timer);
  }

  /** The lease of a waited item passed: put every expired item back and wake their hosts' agents. */
  private async expire(id: string): Promise<void> {
    this.leaseTimers.delete(id);
    try {
      const expired = await this.store.workItems.expire();
      for (const hostId of new Set(expired.map((i) => i.hostId))) await this.store.notifications.notify(hostChannel(hostId));
      if (expired.length > 0) this.logger.warn({ workItems: expired.map((i) => i.id) }, 'an agent lost the lease of its work items; they are pending again');
    } catch (error) {
      this.logger.warn({ err: toBerthError(error).message }, 'could not expire work items');
    }
    // Renewed meanwhile, or just requeued: re-read (and re-arm when claimed again).
    if (this.waiting.has(id)) await this.check(id);
  }

  private settle(id: string, fn: (w: Waiting) => void): void {
    const set = this.waiting.get(id);
    this.waiting.delete(id);
    const timer = this.leaseTimers.get(id);
    if (timer) clearTimeout(timer);
    this.leaseTimers.delete(id);
    for (const w of set ?? []) fn(w);
  }

  private forget(id: string, entry: Waiting): void {
    const set = this.waiting.get(id);
    set?.delete(entry);
    if (set?.size === 0) {
      this.waiting.delete(id);
      clearTimeout(this.leaseTimers.get(id));
      this.leaseTimers.delete(id);
    }
  }
}
