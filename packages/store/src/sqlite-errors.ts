import { accessSync, constants, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import { BerthError } from '@berth/core';

/** What the mapping needs to word its messages. */
export interface SqliteErrorContext {
  filename: string;
  busyTimeoutMs: number;
}

function codeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Whether `error` is SQLite saying the database stayed locked past the busy timeout. */
export function isSqliteBusy(error: unknown): boolean {
  const code = codeOf(error);
  return code !== undefined && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'));
}

/** Whether `error` says the disk holding the database is full (SQLite or the file system). */
export function isDiskFull(error: unknown): boolean {
  const code = codeOf(error);
  return code === 'SQLITE_FULL' || code === 'ENOSPC' || code === 'EDQUOT';
}

/** Whether `error` says the database (or its directory) cannot be written: read-only mount or no permission. */
export function isReadOnly(error: unknown): boolean {
  const code = codeOf(error);
  return code !== undefined && (code.startsWith('SQLITE_READONLY') || code === 'EROFS' || code === 'EACCES' || code === 'EPERM' || code === 'SQLITE_PERM');
}

/**
 * What a vague SQLite failure (cannot open, an I/O error while growing a file) means, found by
 * looking at the directory: no space left, or no way to write there. SQLite reports a full disk
 * as SQLITE_IOERR_SHMSIZE or SQLITE_CANTOPEN when it cannot make its `-shm` and `-wal` files.
 */
function probeDirectory(error: unknown, dir: string): 'full' | 'read-only' | undefined {
  const code = codeOf(error);
  if (code === undefined || !(code.startsWith('SQLITE_CANTOPEN') || code.startsWith('SQLITE_IOERR'))) return undefined;
  try {
    const stats = statfsSync(dir);
    if (stats.bavail === 0) return 'full';
  } catch {
    // No such directory: not an environment failure this can name.
    return undefined;
  }
  try {
    accessSync(dir, constants.W_OK);
  } catch (probe) {
    const probeCode = codeOf(probe);
    if (probeCode === 'EROFS' || probeCode === 'EACCES' || probeCode === 'EPERM') return 'read-only';
  }
  return undefined;
}

/**
 * The BerthError a user can act on for an environment failure of the database, each with its own
 * message, hint and `details.reason`: another process holding the write lock past the busy
 * timeout (TIMEOUT, `database-locked`), a full disk (HOST_UNSUPPORTED, `disk-full`), a read-only or
 * unwritable data dir (PERMISSION_DENIED, `read-only`); undefined for anything else. Busy and full
 * are `retryable`: the same write may succeed a moment later. All three are an `outage`
 * (`isStoreOutage`): the database could not be written, it did not refuse the write.
 */
export function environmentError(error: unknown, context: SqliteErrorContext): BerthError | undefined {
  const { filename, busyTimeoutMs } = context;
  const dir = filename === ':memory:' ? filename : dirname(filename);
  if (isSqliteBusy(error)) {
    return new BerthError('TIMEOUT', `the berth database ${filename} stayed locked by another process for more than ${busyTimeoutMs} ms`, {
      hint: 'another berth command is writing to the same database; retry, or raise the store busy timeout (store.busyTimeoutMs)',
      details: { filename, busyTimeoutMs, reason: 'database-locked', retryable: true, outage: true },
      cause: error,
    });
  }
  const probed = dir === ':memory:' ? undefined : probeDirectory(error, dir);
  if (isDiskFull(error) || probed === 'full') {
    return new BerthError('HOST_UNSUPPORTED', `the disk holding the berth database (${dir}) is full`, {
      hint: `free space on that file system (see \`df -h ${dir}\`), then run the command again; \`berth volume list\` and \`berth attachment list\` still work`,
      details: { filename, reason: 'disk-full', retryable: true, outage: true },
      cause: error,
    });
  }
  if (isReadOnly(error) || probed === 'read-only') {
    return new BerthError('PERMISSION_DENIED', `the berth database ${filename} cannot be written: its directory is read-only or this user may not write it`, {
      hint: `make ${dir} writable for this user (check \`findmnt -T ${dir}\` for a read-only mount and \`ls -ld ${dir}\`); \`berth volume list\` and \`berth attachment list\` still work`,
      details: { filename, reason: 'read-only', retryable: false, outage: true },
      cause: error,
    });
  }
  return undefined;
}

/** The `details.reason` of the error for a full disk. */
export const DISK_FULL = 'disk-full';
/** The `details.reason` of the error for a read-only data dir. */
export const READ_ONLY = 'read-only';

/** Whether `error` is the store's full-disk or read-only error (the ones a read-only open works around). */
export function isEnvironmentError(error: unknown): error is BerthError {
  return BerthError.is(error) && (error.details.reason === DISK_FULL || error.details.reason === READ_ONLY);
}
