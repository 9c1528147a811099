import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { z } from '@berth/core/zod';
import { BerthError, KeyedLock, lazySchema } from '@berth/core';
import { acquireFileLock, LockTimeoutError } from '@berth/host';

/** What a volume id must look like to name a state file (berth's ids are UUIDs). */
export const zStateVolumeId = lazySchema(() => z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/, 'must be letters, digits, ".", "_" or "-" (at most 200)')
  .refine((id) => !id.includes('..'), 'must not contain ".."'));

/**
 * What `AttachStateFileStore.update`'s change makes of a volume's state: a state to write, `null`
 * to remove the file, `undefined` to leave the file as it is.
 */
export type AttachStateChange<S> = S | null | undefined;

/** How long `update` waits by default for another process's hold of a volume's state lock. */
export const STATE_LOCK_TIMEOUT_MS = 60_000;

// One queue per state file for the whole process, shared by every store (and every transport
// instance) on it: a process never waits on its own lock file, which it would take for another
// process's until the timeout.
const stateQueues = new KeyedLock();

/**
 * Attach states as one JSON file per volume under `dir` (`<dir>/<volumeId>.json`), each checked
 * against `schema` and written atomically (a temporary file renamed over the old one), so a crash
 * leaves the old state or the new, never half of one. What a state holds is the transport's:
 * the store only keeps files.
 *
 * A change that depends on what the file holds (add a left login, take one out, drop the device a
 * disconnect removed) goes through `update`: the read, the change and the write of one volume's
 * file are atomic against every other `update` of it, in this process (a queue per file) and in any
 * other berth process on the host (`<dir>/<volumeId>.lock`, `acquireFileLock`; a holder that died
 * is broken by the next taker). The lock is held only around the file's read-modify-write, never
 * around host work, and nothing is locked under it: it is the innermost lock of every path, so it
 * orders against none of the transports' own (per LUN, per volume) locks. Without it, the LUN
 * locks being per target and per process, a watcher forgetting a left login at one target and a
 * connect at another (or a CLI and `berth serve`) each wrote what it had read before the other's
 * write: the last writer won, and a left login or a device record was lost.
 * `save` and `remove` are blind writes, for a state nothing else can be changing (tests, tools).
 */
export class AttachStateFileStore<S extends { volumeId: string }> {
  constructor(
    readonly dir: string,
    private readonly schema: z.ZodType<S>,
    /** How long `update` waits for another process's hold of a volume's lock, in ms. */
    private readonly lockTimeoutMs: number = STATE_LOCK_TIMEOUT_MS,
  ) {}

  /** The file of `volumeId` (throws VALIDATION for an id that cannot be a file name). */
  fileOf(volumeId: string): string {
    const id = zStateVolumeId.safeParse(volumeId);
    if (!id.success) {
      throw new BerthError('VALIDATION', `volume id ${JSON.stringify(volumeId)} cannot name an attach-state file: ${id.error.issues[0]?.message ?? 'invalid'}`);
    }
    return path.join(this.dir, `${id.data}.json`);
  }

  /** Write `state` (replacing any earlier state of the volume). */
  async save(state: S): Promise<void> {
    const valid = this.schema.parse(state);
    const file = this.fileOf(valid.volumeId);
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const temp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    const handle = await fsp.open(temp, 'w', 0o600);
    try {
      await handle.writeFile(JSON.stringify(valid, null, 2) + '\n');
      // The rename must not land before the bytes: a crash would leave an empty state file.
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await fsp.rename(temp, file);
    } catch (error) {
      await fsp.rm(temp, { force: true });
      throw error;
    }
  }

  /** The state of `volumeId`; `undefined` when there is none or it cannot be read as a state. */
  async load(volumeId: string): Promise<S | undefined> {
    return this.readState(this.fileOf(volumeId));
  }

  /** Forget `volumeId` (no error when there was nothing). */
  async remove(volumeId: string): Promise<void> {
    // One unlink: `rm` would lstat first and check its options on every detach.
    try {
      await fsp.unlink(this.fileOf(volumeId));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }

  /**
   * Read-modify-write `volumeId`'s state atomically (see the class): `change` gets the state as it
   * is now (`undefined`: none, or unreadable) and says what it becomes (`AttachStateChange`); it
   * must only compute (no host work, no other lock: it runs holding the volume's lock), and may be
   * called twice (first on no state when the directory is missing, which is then created only for
   * a write). Resolves
   * with the state as left. A TIMEOUT BerthError when another live process holds the lock past
   * `lockTimeoutMs`; the signal's reason when it fires while waiting.
   */
  async update(volumeId: string, change: (current: S | undefined) => AttachStateChange<S>, signal?: AbortSignal): Promise<S | undefined> {
    const file = this.fileOf(volumeId);
    return stateQueues.withLock(
      file,
      async () => {
        // No directory, no state: a change that writes nothing (a forget of a state gone, the
        // watcher of a process whose data dir was removed) must not create it.
        if (!(await exists(this.dir))) {
          const next = change(undefined);
          if (next === undefined || next === null) return undefined;
          await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
        }
        const release = await this.lock(volumeId, file, signal);
        try {
          const current = await this.readState(file);
          const next = change(current);
          if (next === undefined) return current;
          if (next === null) {
            await this.remove(volumeId);
            return undefined;
          }
          if (next.volumeId !== volumeId) throw new BerthError('INTERNAL', `an update of volume ${volumeId}'s attach state made one of volume ${next.volumeId}`);
          await this.save(next);
          return next;
        } finally {
          await release();
        }
      },
      signal,
    );
  }

  /** `<dir>/<volumeId>.lock`, beside the state (`list` reads `.json` files only). */
  private lock(volumeId: string, file: string, signal: AbortSignal | undefined): Promise<() => Promise<void>> {
    const what = `the attach state of volume ${volumeId}`;
    return acquireFileLock(`${file.slice(0, -'.json'.length)}.lock`, { timeoutMs: this.lockTimeoutMs, what, ...(signal === undefined ? {} : { signal }) }).catch((error: unknown) => {
      if (!(error instanceof LockTimeoutError)) throw error;
      const holder = error.holderPid === undefined ? 'a process still writing the lock' : `pid ${error.holderPid}`;
      throw new BerthError('TIMEOUT', `${what} stayed locked by another berth process on this host (${holder}) for more than ${error.timeoutMs} ms`, {
        hint: 'another berth process on this host is changing that volume\'s attach state (held for a file write only): try again. A lock whose process is gone is broken by the next taker, once the commands that process started have ended.',
        details: { volumeId, lockPath: error.lockPath, ...(error.holderPid === undefined ? {} : { holderPid: error.holderPid }) },
        cause: error,
      });
    });
  }

  /** Every readable state, in file-name order (temporary and unreadable files are skipped). */
  async list(): Promise<S[]> {
    let entries: string[];
    try {
      entries = await fsp.readdir(this.dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const states: S[] = [];
    for (const entry of entries.filter((e) => e.endsWith('.json')).sort()) {
      const state = await this.readState(path.join(this.dir, entry));
      if (state !== undefined) states.push(state);
    }
    return states;
  }

  private async readState(file: string): Promise<S | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    try {
      const parsed = this.schema.safeParse(JSON.parse(text));
      return parsed.success ? parsed.data : undefined;
    } catch {
      return undefined;
    }
  }
}

async function exists(dir: string): Promise<boolean> {
  try {
    await fsp.access(dir);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}
