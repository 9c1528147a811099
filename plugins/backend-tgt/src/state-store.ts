import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { z } from '@berth/core/zod';
import { BerthError, KeyedLock, lazySchema } from '@berth/core';
import { acquireFileLock, errnoOf, LockTimeoutError } from '@berth/host';

const zChap = lazySchema(() => z.object({ username: z.string().min(1), password: z.string().min(1) }));

/** What the backend keeps about one volume: enough to re-create its export on a fresh tgtd. */
export const zVolumeRecord = lazySchema(() => z.object({
  /** tgtd's target number; kept so a restored target has the same SCSI identity (WWN). */
  tid: z.number().int().positive(),
  iqn: z.string().min(1),
  /** The LUN's backing file. */
  file: z.string().min(1),
  sizeBytes: z.number().int().positive(),
  /** Incoming CHAP: the initiator proves itself with these. */
  chap: zChap.optional(),
  /** Outgoing CHAP (mutual): the target proves itself with these. */
  mutualChap: zChap.optional(),
  /** Initiator IQNs allowed to log in (one ACL entry each). */
  initiators: z.array(z.string()),
  createdAt: z.string(),
  /**
   * The LUN's own SCSI identity, set as tgtd's `scsi_id`: the volume id's 32 hex digits, so its
   * WWN (`naa.6` and the last 31) is the volume's, whatever tid the target gets (the unit serial,
   * page 0x80, stays tgtd's `beaf<tid><lun>`: hosts key on the WWN, and the simulated host reads
   * the tid from the serial). By
   * default tgtd derives it from tid and LUN alone: a volume created after another was deleted (the
   * smallest free tid) got the deleted one's WWN, and two backends' first volumes the same one.
   * Absent on a volume an older berth created: its WWN stays tid-derived (a host may hold it).
   */
  scsiId: z.string().regex(/^[0-9a-f]{32}$/).optional(),
}));

/** One volume's record. */
export type VolumeRecord = z.output<typeof zVolumeRecord>;

/** The whole state file. */
export const zTgtState = lazySchema(() => z.object({
  version: z.literal(1),
  volumes: z.record(z.string(), zVolumeRecord),
}));

/** The backend's state: every volume it exports. */
export type TgtState = z.output<typeof zTgtState>;

/** An empty state. */
export function emptyState(): TgtState {
  return { version: 1, volumes: {} };
}

// One queue per state file for the whole process, shared by every backend instance on it, so a
// process never waits on its own lock file.
const queues = new KeyedLock();

/**
 * `<dir>/state.json`, mode 0600: the volumes' targets, files, CHAP secrets and ACLs. Changes go
 * through `transaction`, which queues callers of this process, then takes `<dir>/state.lock`
 * against other processes (concurrent CLI invocations), reads, runs the change and writes the file
 * atomically (temp file, fsync, rename).
 */
export class TgtStateStore {
  readonly file: string;
  readonly lockFile: string;

  constructor(
    readonly dir: string,
    private readonly lockTimeoutMs: number = 30_000,
  ) {
    this.file = path.join(dir, 'state.json');
    this.lockFile = path.join(dir, 'state.lock');
  }

  /** The state as last written (no lock: the file is replaced atomically, never torn). */
  async read(): Promise<TgtState> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return emptyState();
      throw new BerthError('BACKEND_ERROR', `cannot read the tgt backend's state ${this.file}: ${messageOf(error)}`, { cause: error });
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      // JSON.parse quotes the text around the fault, which may be a secret: neither it nor the cause is kept.
      throw corrupt(this.file, 'it is not JSON');
    }
    const parsed = zTgtState.safeParse(value);
    // The issue list names paths and rules only: the file holds secrets, which must not be echoed.
    if (!parsed.success) throw corrupt(this.file, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.code}`).join('; '));
    return parsed.data;
  }

  /**
   * Run `change` on the current state with this store locked against other callers and
   * processes; the state is written back when `change` modified it — also when it then threw, so
   * what was done before the failure stays recorded.
   */
  async transaction<T>(signal: AbortSignal | undefined, change: (state: TgtState) => Promise<T>): Promise<T> {
    return queues.withLock(
      this.file,
      async () => {
        await this.ensureDir();
        const release = await acquireFileLock(this.lockFile, {
          timeoutMs: this.lockTimeoutMs,
          what: 'tgt backend state',
          ...(signal ? { signal } : {}),
        }).catch((error: unknown) => {
          if (!(error instanceof LockTimeoutError)) throw error;
          throw new BerthError('TIMEOUT', error.message, {
            hint: 'another berth command is still working on this backend; wait for it, or remove the lock file if that process is gone',
            details: { lockPath: error.lockPath, ...(error.holderPid === undefined ? {} : { holderPid: error.holderPid }) },
            cause: error,
          });
        });
        try {
          const state = await this.read();
          const before = JSON.stringify(state);
          try {
            return await change(state);
          } finally {
            if (JSON.stringify(state) !== before) await this.write(state);
          }
        } finally {
          await release();
        }
      },
      signal,
    );
  }

  /** Create the directory (0700: the state holds secrets). */
  async ensureDir(): Promise<void> {
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
    } catch (error) {
      throw new BerthError('BACKEND_ERROR', `cannot create ${this.dir}: ${messageOf(error)}`, {
        hint: "make berth's data directory writable by the user berth runs as",
        cause: error,
      });
    }
  }

  private async write(state: TgtState): Promise<void> {
    const temp = path.join(this.dir, `.state.json.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    try {
      const handle = await open(temp, 'wx', 0o600);
      try {
        await handle.writeFile(`${JSON.stringify(state, null, 2)}\n`, 'utf8');
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, this.file);
      // The rename is durable only once the directory is synced.
      const dir = await open(this.dir, 'r');
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
    } catch (error) {
      await rm(temp, { force: true }).catch(() => undefined);
      throw new BerthError('BACKEND_ERROR', `cannot write the tgt backend's state ${this.file}: ${messageOf(error)}`, { cause: error });
    }
  }
}

function corrupt(file: string, why: string): BerthError {
  return new BerthError('BACKEND_ERROR', `the tgt backend's state ${file} is damaged: ${why}`, {
    hint: 'restore it from a backup; without it berth cannot re-create its targets or know their CHAP secrets',
  });
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
