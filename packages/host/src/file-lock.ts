import { randomBytes } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { link, open, readFile, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { createFileWhole } from './atomic-file.js';
import { processRuns, processStartTicks } from './daemon.js';
import { errnoOf, LockTimeoutError } from './errors.js';
import { commandsOutlive } from './spawner.js';

/** Who holds a lock file: a process named for good by its pid and start time. */
interface LockHolder {
  pid: number;
  startTicks: string;
  /** Unique per acquisition, so a release never removes someone else's lock. */
  token: string;
}

/** Options of `acquireFileLock`. */
export interface FileLockOptions {
  /** Give up after this many ms with a `LockTimeoutError`. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** What the lock protects, for the timeout message. */
  what: string;
}

/** Releases a held lock (idempotent). */
export type ReleaseLock = () => Promise<void>;

// A lock file with no holder in it (left by an older berth, which created it empty and wrote it
// after) is only called abandoned after this long.
const UNWRITTEN_GRACE_MS = 2_000;
// A breaker holds `<lock>.break` for a few reads and an unlink: one older than this is stranded
// (its breaker, alive, lost it to a race one level down), whoever it names.
const BREAK_STALE_MS = 30_000;
const FIRST_POLL_MS = 5;
const MAX_POLL_MS = 100;

/**
 * Take an exclusive lock between processes: `lockPath` appears holding `{pid, startTicks, token}`
 * (`tryCreate`). While another live process holds it, wait — woken by the directory's events when
 * the file goes, with a short poll as fallback — until `timeoutMs`. A lock whose holder is dead
 * (crashed CLI) and whose commands ended (`commandsOutlive`) is broken, by one breaker at a time
 * (`breakLock`).
 */
export async function acquireFileLock(lockPath: string, options: FileLockOptions): Promise<ReleaseLock> {
  const deadline = Date.now() + options.timeoutMs;
  const me = await selfHolder();
  let watcher: FSWatcher | undefined;
  let wake: (() => void) | undefined;
  // Set by the watcher: an event that came while this loop was not waiting must not be lost.
  let changed = false;
  try {
    let pollMs = FIRST_POLL_MS;
    for (;;) {
      options.signal?.throwIfAborted();
      changed = false;
      if (await tryCreate(lockPath, me)) return releaser(lockPath, me.token);
      const holder = await readHolder(lockPath);
      if (holder === 'gone') continue;
      // Broken (or gone meanwhile): try again at once. Another breaker at work: wait below.
      if ((await isAbandoned(lockPath, holder)) && (await breakLock(lockPath, holder))) continue;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new LockTimeoutError(lockPath, options.what, options.timeoutMs, holder === 'unwritten' ? undefined : holder.pid);
      }
      if (!watcher) {
        try {
          watcher = watch(path.dirname(lockPath), (_event, name) => {
            if (name !== null && name !== path.basename(lockPath)) return;
            changed = true;
            wake?.();
          });
          watcher.on('error', () => undefined);
          // The lock may have gone between the last look and the watch: look again at once.
          continue;
        } catch {
          // No inotify (a full watch table): the poll alone still works.
        }
      }
      if (changed) continue;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(done, Math.min(pollMs, left));
        const onAbort = (): void => {
          clearTimeout(timer);
          wake = undefined;
          reject(options.signal?.reason instanceof Error ? options.signal.reason : new DOMException('the lock wait was aborted', 'AbortError'));
        };
        function done(): void {
          clearTimeout(timer);
          options.signal?.removeEventListener('abort', onAbort);
          wake = undefined;
          resolve();
        }
        wake = done;
        options.signal?.addEventListener('abort', onAbort, { once: true });
      });
      pollMs = Math.min(pollMs * 2, MAX_POLL_MS);
    }
  } finally {
    watcher?.close();
  }
}

async function selfHolder(): Promise<LockHolder> {
  const startTicks = await processStartTicks(process.pid);
  return { pid: process.pid, startTicks: startTicks ?? '', token: randomBytes(8).toString('hex') };
}

/**
 * Create `lockPath` naming `me`, whole from its first moment (`createFileWhole`; false: taken).
 * A lock file made by open() and written after could be read empty by a waiter while its writer
 * stalled (its write queued behind fsyncs on a loaded host), and broken as abandoned after the
 * grace while its writer went on: two holders.
 */
function tryCreate(lockPath: string, me: LockHolder): Promise<boolean> {
  return createFileWhole(lockPath, JSON.stringify(me), { mode: 0o600 });
}

async function readHolder(lockPath: string): Promise<LockHolder | 'unwritten' | 'gone'> {
  let text: string;
  try {
    text = await readFile(lockPath, 'utf8');
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return 'gone';
    throw error;
  }
  try {
    const value = JSON.parse(text) as Partial<LockHolder>;
    if (typeof value.pid === 'number' && typeof value.startTicks === 'string' && typeof value.token === 'string') {
      return { pid: value.pid, startTicks: value.startTicks, token: value.token };
    }
  } catch {
    // Empty or torn: its writer is between open() and write(), or died there.
  }
  return 'unwritten';
}

async function isAbandoned(lockPath: string, holder: LockHolder | 'unwritten'): Promise<boolean> {
  if (holder === 'unwritten') return olderThan(lockPath, UNWRITTEN_GRACE_MS);
  // A dead holder's commands may outlive it (a SIGKILLed berth's `iscsiadm --logout`): its lock
  // stands until they ended.
  return !(await processRuns(holder.pid, holder.startTicks)) && !commandsOutlive(holder.pid, holder.startTicks);
}

/**
 * Remove a dead holder's lock without removing a live one. Breakers take turns (`<lock>.break`,
 * itself a lock file): the holder is read again under it, and the lock removed only while it still
 * names the dead holder — only a breaker can remove a dead holder's file, so it cannot change
 * between that reading and the unlink. (Renaming the lock aside to look at it, the old way, could
 * move a live holder's lock: released meanwhile by its holder, which then found nothing to
 * remove, and linked back by the breaker — a lock nobody would ever release.) False when another
 * breaker is at it: the caller waits. A `<lock>.break` whose breaker died, or older than
 * `BREAK_STALE_MS` (stranded), is cleared the old way one level down, where the rename is safe
 * enough: only breakers take that file, for a few reads, and each removes the lock only while the
 * turn is still its own.
 */
async function breakLock(lockPath: string, dead: LockHolder | 'unwritten'): Promise<boolean> {
  const breakPath = `${lockPath}.break`;
  const me = await selfHolder();
  if (!(await tryCreate(breakPath, me))) {
    const breaker = await readHolder(breakPath);
    if (breaker !== 'gone' && ((await isAbandoned(breakPath, breaker)) || (await olderThan(breakPath, BREAK_STALE_MS)))) await moveAsideIfStill(breakPath, breaker);
    return false;
  }
  try {
    const now = await readHolder(lockPath);
    if (now === 'gone') return true;
    const same = dead === 'unwritten' ? now === 'unwritten' && (await isAbandoned(lockPath, now)) : now !== 'unwritten' && now.token === dead.token;
    // Still this breaker's turn (a stranded turn is cleared by others after BREAK_STALE_MS).
    const mine = await readHolder(breakPath);
    if (same && mine !== 'gone' && mine !== 'unwritten' && mine.token === me.token) {
      await unlink(lockPath).catch((error: unknown) => {
        if (errnoOf(error) !== 'ENOENT') throw error;
      });
    }
    return true;
  } finally {
    await releaser(breakPath, me.token)();
  }
}

/** Remove `lockPath` if it still names `dead`: renamed aside, checked, and linked back when it is not. */
async function moveAsideIfStill(lockPath: string, dead: LockHolder | 'unwritten'): Promise<void> {
  const aside = `${lockPath}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await rename(lockPath, aside);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return;
    throw error;
  }
  const moved = await readHolder(aside);
  const same = dead === 'unwritten' ? moved === 'unwritten' : moved !== 'gone' && moved !== 'unwritten' && moved.token === dead.token;
  if (!same) await link(aside, lockPath).catch(() => undefined);
  await unlink(aside).catch(() => undefined);
}

/** Whether `file` was last written more than `ms` ago (false when it is gone). */
async function olderThan(file: string, ms: number): Promise<boolean> {
  const info = await open(file, 'r').then(
    async (handle) => {
      try {
        return await handle.stat();
      } finally {
        await handle.close();
      }
    },
    () => undefined,
  );
  return info !== undefined && Date.now() - info.mtimeMs > ms;
}

function releaser(lockPath: string, token: string): ReleaseLock {
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    const holder = await readHolder(lockPath);
    if (holder !== 'gone' && holder !== 'unwritten' && holder.token === token) await unlink(lockPath).catch(() => undefined);
  };
}
