import { open, type FileHandle } from 'node:fs/promises';
import { fstatSync, realpathSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/**
 * Group commit for a SQLite database in WAL mode: the connection commits at `synchronous =
 * NORMAL` (SQLite writes the commit's frames to the `-wal` file and returns without syncing it) and
 * a durable commit then waits for an `fdatasync` of the WAL that began after its COMMIT returned.
 * That is what `synchronous = FULL` does at every commit, with two differences:
 *
 * - the sync runs on libuv's thread pool, not on the event loop: a FULL commit blocks the whole
 *   process for the length of an fsync (milliseconds, and up to seconds on a disk busy with other
 *   writes), stalling every HTTP request, heartbeat and long-poll of `berth serve` with it;
 * - commits that wait at the same time share one sync: while one runs, every durable commit made
 *   meanwhile waits for the next, one for all of them.
 *
 * Why the commit is then as durable as at FULL: fdatasync works on the file, whatever descriptor
 * asks, and flushes every frame written before it began — this commit's and every earlier one's,
 * deferred ones included (the WAL is recovered as a prefix, so a power cut still loses only a
 * suffix of the commits). A checkpoint at NORMAL syncs the WAL before copying it into the
 * database and the database before resetting the WAL. The directory is synced once per process, the first
 * time, as SQLite does for a WAL it created: the file's name must survive a power cut too.
 *
 * The WAL stays open between syncs (an open and a close cost twice the CPU of the sync itself):
 * while a connection of this process is open on the database, SQLite neither removes the WAL nor
 * makes a new one (it truncates or rewrites it in place), so the descriptor is the WAL's. It is
 * closed when the last store of this process on the file lets go of it (`releaseWalSync`).
 */
export class WalSync {
  readonly #walPath: string;
  readonly #dir: string;
  #directorySynced = false;
  /** The WAL, open while stores of this process use the database. */
  #handle: Promise<FileHandle> | undefined;
  /** The drivers of this process that use this WalSync (`acquireWalSync`). */
  users = 0;
  /** The sync running now. */
  #running: Promise<void> | undefined;
  /** The sync that starts when the running one ends: the one a commit made meanwhile waits for. */
  #next: Promise<void> | undefined;
  /** How many syncs started (commits that waited together share one). */
  started = 0;
  /** What one sync does: flush the files at these paths (the tests hold it to see commits wait). */
  flush: (paths: { wal: string; directory?: string }) => Promise<void> = (paths) => this.#flushFiles(paths);

  /** The first failed flush (but one that could not open a file): every sync after it fails too (below). */
  #failed: Error | undefined;

  /** The database file's real path when made: its key among this process's WalSyncs. */
  readonly key: string;

  constructor(databaseFile: string) {
    this.key = databaseFile;
    this.#walPath = `${databaseFile}-wal`;
    this.#dir = dirname(databaseFile);
  }

  /** Resolves once every frame written to the WAL before this call is on the disk. */
  sync(): Promise<void> {
    // After a failed fdatasync the kernel may have marked the pages it could not write clean: a
    // later sync would succeed without them, and SQLite recovers the WAL only up to the first
    // frame missing, so every commit after the hole would be lost with it ("fsyncgate";
    // PostgreSQL stops for the same reason). Nothing after a failure counts as durable.
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    if (this.#running === undefined) return this.#start();
    // The running sync may have begun before this commit's frames were written.
    this.#next ??= this.#running.then(
      () => this.#afterRunning(),
      () => this.#afterRunning(),
    );
    return this.#next;
  }

  #afterRunning(): Promise<void> {
    this.#next = undefined;
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    // A sync begun since the last one ended began after this commit too.
    return this.#running ?? this.#start();
  }

  #start(): Promise<void> {
    this.started += 1;
    const run = this.#flush()
      .catch((error: unknown) => {
        if (isStickySyncFailure(error)) this.#failed ??= error instanceof Error ? error : new Error(String(error));
        throw error;
      })
      .finally(() => {
      if (this.#running === run) this.#running = undefined;
    });
    this.#running = run;
    return run;
  }

  async #flush(): Promise<void> {
    await this.flush({ wal: this.#walPath, ...(this.#directorySynced ? {} : { directory: this.#dir }) });
    this.#directorySynced = true;
  }

  /** fdatasync of the WAL through the kept descriptor and, when given, fsync of the directory, side by side. */
  async #flushFiles(paths: { wal: string; directory?: string }): Promise<void> {
    // Both settle before the sync ends: a next sync must not start while this one's WAL open is
    // still in flight (it would take that open's failure for its own).
    const results = await Promise.allSettled([this.#syncWal(paths.wal), ...(paths.directory === undefined ? [] : [syncDirectory(paths.directory)])]);
    const reasons = results.flatMap((result) => (result.status === 'rejected' ? [result.reason as unknown] : []));
    // A failed sync outranks a failed open: it is the one that sticks.
    if (reasons.length > 0) throw reasons.find((reason) => isStickySyncFailure(reason)) ?? reasons[0];
  }

  async #syncWal(path: string): Promise<void> {
    // While a connection of this process is open the WAL exists (the commit waiting wrote to
    // it): a missing one is an error, never "nothing to flush".
    this.#handle ??= open(path, 'r');
    let kept = this.#handle;
    try {
      let handle = await kept;
      // A WAL removed under the kept descriptor (every connection closed without this store's
      // driver letting go): open the one there now.
      // (fstat on the loop: a metadata read of an open file, no thread-pool round trip.)
      if (fstatSync(handle.fd).nlink === 0) {
        await handle.close();
        kept = this.#handle = open(path, 'r');
        handle = await kept;
      }
      await handle.datasync();
    } catch (error) {
      // Opened again next time (an error may come from this descriptor).
      if (this.#handle === kept) this.#handle = undefined;
      await kept.then((handle) => handle.close()).catch(() => undefined);
      throw error;
    }
  }

  /** Close the kept WAL descriptor (the last store of this process on the database closed). */
  async close(): Promise<void> {
    const kept = this.#handle;
    this.#handle = undefined;
    await kept?.then((handle) => handle.close()).catch(() => undefined);
  }
}

/**
 * Codes only an `open` fails with (the WAL or its directory could not be opened for the sync: too
 * many files open in the process or the system): no sync ran, so no page was dropped, and the next
 * sync flushes this commit's frames with the later ones. The commit that waited still fails (it
 * was not confirmed durable), but the failure does not stick.
 */
const OPEN_ONLY_CODES = new Set(['EMFILE', 'ENFILE']);

/** Whether a failed flush makes every later one fail (`WalSync.sync`): any but an open's `EMFILE`/`ENFILE`. */
export function isStickySyncFailure(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return typeof code !== 'string' || !OPEN_ONLY_CODES.has(code);
}

/** fsync of a directory: the names in it reach the disk. */
async function syncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}



/**
 * The database file's real path: SQLite resolves symbolic links and puts the WAL beside the file
 * itself, not beside a link to it.
 */
function realPath(databaseFile: string): string {
  try {
    return realpathSync(databaseFile);
  } catch {
    return resolve(databaseFile);
  }
}

/** One WalSync per database file per process: every store opened on the file shares its syncs. */
const syncs = new Map<string, WalSync>();

/** The WalSync of `databaseFile` (resolved), made on first use. */
export function walSyncFor(databaseFile: string): WalSync {
  const key = realPath(databaseFile);
  let sync = syncs.get(key);
  if (sync === undefined) {
    sync = new WalSync(key);
    syncs.set(key, sync);
  }
  return sync;
}

/** The WalSync of `databaseFile` for a driver that will use it until `releaseWalSync`. */
export function acquireWalSync(databaseFile: string): WalSync {
  const sync = walSyncFor(databaseFile);
  sync.users += 1;
  return sync;
}

/**
 * A driver is done with `sync` (its connection closed). The last one closes the kept WAL
 * descriptor: once no connection of this process is open, SQLite may remove the WAL and make a
 * new one, which an old descriptor would not reach.
 */
export async function releaseWalSync(sync: WalSync): Promise<void> {
  sync.users = Math.max(0, sync.users - 1);
  if (sync.users > 0) return;
  // Its own key, not the path resolved again: the file may be gone or renamed by now.
  if (syncs.get(sync.key) === sync) syncs.delete(sync.key);
  await sync.close();
}
