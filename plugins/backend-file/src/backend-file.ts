import { constants as fsConstants } from 'node:fs';
import { access, mkdir, open, rm, stat, statfs, truncate, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { z } from '@berth/core/zod';
import { errnoOf, hostFacts, isMissing } from '@berth/host';
import {
  BerthError,
  lazySchema,
  parseWith,
  toBerthError,
  zConnector,
  zId,
  zSizeBytes,
  type BackendExport,
  type BackendVolume,
  type CheckResult,
  type ConnectionInfo,
  type Connector,
  type CreatedVolume,
  type PluginContext,
  type VolumeBackend,
} from '@berth/core';

/** The backend's registered name (also the `driver_volume_type` it exports). */
export const NAME = 'file';

/** Options of the `file` backend (from the config's plugin options). */
export const zFileBackendOptions = lazySchema(() => z.object({
  /** Where volume files live; relative paths are taken from the data dir (default `<dataDir>/volumes`). */
  directory: z.string().min(1).optional(),
  /** Hand out connections to connectors on other hosts (a shared filesystem); off by default. */
  allowRemoteHosts: z.boolean().default(false),
}));

/** Parsed options of the `file` backend. */
export type FileBackendOptions = z.output<typeof zFileBackendOptions>;


const VOLUME_FILE_SUFFIX = '.img';

/**
 * Volumes as sparse files `<directory>/<volume id>.img`, exported as `file` connections that the
 * `loop` transport attaches. The file name comes only from the volume's UUID, never from its name.
 */
export function createFileBackend(context: PluginContext<Partial<FileBackendOptions>>): VolumeBackend {
  const options = parseWith(zFileBackendOptions, context.options ?? {}, 'file backend options');
  const directory = path.resolve(context.dataDir, options.directory ?? 'volumes');
  const logger = context.logger.child({ backend: NAME });

  /** The file of a volume, after proving the id is a UUID and the path stays in `directory`. */
  function fileOf(volume: BackendVolume): string {
    const id = parseWith(zId, volume.id, 'volume id');
    const file = path.resolve(directory, `${id}${VOLUME_FILE_SUFFIX}`);
    // A UUID cannot hold a separator, but the check keeps that true if the id rule ever loosens.
    if (path.dirname(file) !== directory) {
      throw new BerthError('VALIDATION', `volume ${id} would be stored outside ${directory}`);
    }
    return file;
  }

  function sizeOf(volume: BackendVolume): number {
    return parseWith(zSizeBytes, volume.sizeBytes, 'volume size');
  }

  async function ensureDirectory(): Promise<void> {
    try {
      await mkdir(directory, { recursive: true, mode: 0o700 });
    } catch (error) {
      throw fsError(error, `cannot create the volume directory ${directory}`);
    }
  }

  /**
   * A sparse file takes no space until it is written: a volume larger than the free space is
   * created, and writes to it fail with ENOSPC once the disk fills. Say so when it is created.
   */
  async function spaceWarning(sizeBytes: number): Promise<string | undefined> {
    const fsStats = await statfs(directory).catch(() => undefined);
    if (!fsStats) return undefined;
    const free = fsStats.bavail * fsStats.bsize;
    if (sizeBytes <= free) return undefined;
    // MiB below a GiB: a 32 MiB volume on a 16 MiB tmpfs read "0.0 GiB but only 0.0 GiB is free".
    const gib = (bytes: number): string => (bytes < 2 ** 30 ? `${(bytes / 2 ** 20).toFixed(1)} MiB` : `${(bytes / 2 ** 30).toFixed(1)} GiB`);
    return `the volume is ${gib(sizeBytes)} but only ${gib(free)} is free on the file system holding ${directory}: it is sparse, so writes to it fail once the disk fills up; free space or use a smaller size`;
  }

  return {
    name: NAME,

    async create(volume, signal): Promise<CreatedVolume> {
      const file = fileOf(volume);
      const sizeBytes = sizeOf(volume);
      throwIfAborted(signal);
      await ensureDirectory();
      let handle: FileHandle;
      try {
        handle = await open(file, 'wx', 0o600);
      } catch (error) {
        if (errnoOf(error) !== 'EEXIST') throw fsError(error, `cannot create ${file}`);
        // A retried create finds its own file: same size is success, anything else is someone else's.
        const existing = await stat(file);
        if (existing.size !== sizeBytes) {
          throw new BerthError('CONFLICT', `volume file ${file} already exists with ${existing.size} bytes, not ${sizeBytes}`, {
            hint: 'delete the volume (or the file) first, or create it with the size it has',
            details: { volumeId: volume.id, existingBytes: existing.size, requestedBytes: sizeBytes },
          });
        }
        return { providerLocation: file };
      }
      try {
        // ftruncate only sets the length: no blocks are written, so the file stays sparse.
        await handle.truncate(sizeBytes);
      } catch (error) {
        await handle.close().catch(() => undefined);
        await unlink(file).catch(() => undefined);
        throw fsError(error, `cannot size ${file} to ${sizeBytes} bytes`);
      }
      await handle.close();
      logger.info({ volumeId: volume.id, file, sizeBytes }, 'volume file created');
      const warning = await spaceWarning(sizeBytes);
      return { providerLocation: file, ...(warning ? { warnings: [warning] } : {}) };
    },

    async delete(volume, signal): Promise<void> {
      const file = fileOf(volume);
      throwIfAborted(signal);
      try {
        await unlink(file);
        logger.info({ volumeId: volume.id, file }, 'volume file deleted');
      } catch (error) {
        if (errnoOf(error) === 'ENOENT') return;
        const failed = fsError(error, `cannot delete ${file}`);
        // Refused before anything happened: the file is whole, and the volume can be used as before.
        // Not EIO or a timeout: on a network file system the server may have removed it all the same.
        if (!['EROFS', 'EACCES', 'EPERM', 'EBUSY'].includes(errnoOf(error) ?? '')) throw failed;
        throw new BerthError(failed.code, failed.message, { ...(failed.hint === undefined ? {} : { hint: failed.hint }), details: { ...failed.details, untouched: true }, cause: error });
      }
    },

    async extend(volume, newSizeBytes, signal): Promise<void> {
      const file = fileOf(volume);
      const target = parseWith(zSizeBytes, newSizeBytes, 'new size');
      throwIfAborted(signal);
      const current = await statVolumeFile(file, volume.id);
      if (target < current) {
        throw new BerthError('VALIDATION', `cannot shrink volume ${volume.id} from ${current} to ${target} bytes`, {
          hint: 'a volume can only grow; give a size larger than the current one',
          details: { volumeId: volume.id, currentBytes: current, requestedBytes: target },
        });
      }
      if (target === current) return;
      try {
        await truncate(file, target);
      } catch (error) {
        throw fsError(error, `cannot grow ${file} to ${target} bytes`);
      }
      logger.info({ volumeId: volume.id, file, fromBytes: current, toBytes: target }, 'volume file extended');
    },

    async initializeConnection(volume, connector, signal): Promise<ConnectionInfo> {
      const file = fileOf(volume);
      const parsed: Connector = parseWith(zConnector, connector, 'connector');
      throwIfAborted(signal);
      if (!options.allowRemoteHosts) {
        const here = hostFacts().hostname;
        if (parsed.host.toLowerCase() !== here.toLowerCase()) {
          throw new BerthError(
            'UNPROCESSABLE',
            `volume ${volume.id} is a file on host ${here}; it cannot be attached on host ${parsed.host}`,
            {
              hint: `attach it on ${here}, or set allowRemoteHosts: true in the file backend's options when ${directory} is a filesystem shared by both hosts`,
              details: { volumeId: volume.id, volumeHost: here, connectorHost: parsed.host },
            },
          );
        }
      }
      const bytes = await statVolumeFile(file, volume.id);
      const sizeBytes = sizeOf(volume);
      // A file cut short behind berth (truncate, a restore gone wrong): attached, the guest would
      // see a smaller disk than its file system says, and writes past the end would fail.
      if (bytes < sizeBytes) {
        throw new BerthError('BACKEND_ERROR', `the file of volume ${volume.id} is ${bytes} bytes, smaller than the volume's ${sizeBytes}: it was cut short behind berth (${file})`, {
          hint: 'restore the file from a backup; `berth volume extend` would only grow it with zeros where the data was',
          details: { volumeId: volume.id, fileBytes: bytes, volumeBytes: sizeBytes },
        });
      }
      return {
        driver_volume_type: NAME,
        data: { device_path: file, volume_id: volume.id, access_mode: 'rw' },
      };
    },

    async terminateConnection(volume, _connector, signal): Promise<void> {
      // Nothing is exported for a file: validating the id keeps bad input from passing silently.
      fileOf(volume);
      throwIfAborted(signal);
    },

    async exports(): Promise<BackendExport[]> {
      return [];
    },

    /**
     * Volumes whose file is gone (ENOENT: deleted behind berth, or the volume directory's file
     * system not mounted). A file that cannot be looked at (EACCES, EIO) is not called gone.
     */
    async missingStorage(volumes, signal): Promise<string[]> {
      const gone = async (file: string): Promise<boolean> =>
        stat(file).then(
          () => false,
          (error: unknown) => isMissing(error),
        );
      const missing: string[] = [];
      for (const volume of volumes) {
        throwIfAborted(signal);
        const file = fileOf(volume);
        if (!(await gone(file))) continue;
        // Made under another `directory` option, and still there: the configuration moved, the
        // data did not go (a `volume delete` now would drop the record and orphan the file).
        const recorded = volume.providerLocation;
        if (recorded && path.resolve(recorded) !== file && !(await gone(recorded))) continue;
        missing.push(volume.id);
      }
      return missing;
    },

    /**
     * Volumes whose file is there but smaller than the volume (`truncate`, a bad copy): an attach
     * refuses it, an attached loop device reads zeros past the cut. The file an attach would use
     * (the volume directory's, else the recorded one); a file that is gone or cannot be looked at
     * is not short.
     */
    async shortStorage(volumes, signal): Promise<Array<{ id: string; sizeBytes: number }>> {
      const sizeOf = (file: string): Promise<number | undefined> =>
        stat(file).then(
          (s) => (s.isFile() ? s.size : undefined),
          () => undefined,
        );
      const short: Array<{ id: string; sizeBytes: number }> = [];
      for (const volume of volumes) {
        throwIfAborted(signal);
        const file = fileOf(volume);
        const recorded = volume.providerLocation;
        const size = (await sizeOf(file)) ?? (recorded && path.resolve(recorded) !== file ? await sizeOf(recorded) : undefined);
        if (size !== undefined && size < volume.sizeBytes) short.push({ id: volume.id, sizeBytes: size });
      }
      return short;
    },

    async check(): Promise<CheckResult> {
      const checks: NonNullable<CheckResult['checks']> = [];
      try {
        await mkdir(directory, { recursive: true, mode: 0o700 });
        checks.push({ name: 'volume directory exists', ok: true, detail: directory });
      } catch (error) {
        checks.push({ name: 'volume directory exists', ok: false, detail: messageOf(error) });
        return {
          ok: false,
          summary: `file backend: cannot create ${directory}`,
          checks,
          fix: `create ${directory} (or set the file backend's directory option to a writable path)`,
        };
      }
      const probe = path.join(directory, `.berth-check-${randomUUID()}`);
      try {
        await access(directory, fsConstants.W_OK);
        // access() says yes to root even on a read-only mount: writing a file is the real test.
        const handle = await open(probe, 'wx', 0o600);
        await handle.close();
        checks.push({ name: 'volume directory writable', ok: true });
      } catch (error) {
        checks.push({ name: 'volume directory writable', ok: false, detail: messageOf(error) });
        return {
          ok: false,
          summary: `file backend: ${directory} is not writable`,
          checks,
          fix: `make ${directory} writable by the user berth runs as, or point the directory option elsewhere`,
        };
      } finally {
        await rm(probe, { force: true }).catch(() => undefined);
      }
      return { ok: true, summary: `file backend: volumes in ${directory}`, checks };
    },
  };
}

async function statVolumeFile(file: string, volumeId: string): Promise<number> {
  try {
    const info = await stat(file);
    if (!info.isFile()) throw new BerthError('BACKEND_ERROR', `${file} is not a regular file`);
    return info.size;
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') {
      throw new BerthError('NOT_FOUND', `the file of volume ${volumeId} does not exist: ${file}`, {
        hint: 'it was removed behind berth, or the file backend\'s directory option changed: restore the file (or the option), or delete the volume with `berth volume delete`',
        details: { volumeId },
      });
    }
    throw fsError(error, `cannot read ${file}`);
  }
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw toBerthError(signal.reason ?? new DOMException('aborted', 'AbortError'), 'CANCELLED');
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function fsError(error: unknown, what: string): BerthError {
  if (BerthError.is(error)) return error;
  const code = errnoOf(error);
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new BerthError('PERMISSION_DENIED', `${what}: ${messageOf(error)}`, {
      hint: 'run berth as a user that may write the volume directory, or change the directory option',
      cause: error,
    });
  }
  if (code === 'EFBIG') {
    // Not a matter of free space: a sparse file takes none. The file system's largest file is
    // smaller than the size asked for (ext4 with 4 KiB blocks: 16 TiB).
    return new BerthError('BACKEND_ERROR', `${what}: ${messageOf(error)}`, {
      hint: 'the file system that holds the volume directory cannot hold a file this large (ext4: 16 TiB at most); use a smaller size or a directory on a file system that can (xfs)',
      details: { reason: 'file-too-large' },
      cause: error,
    });
  }
  if (code === 'ENOSPC') {
    return new BerthError('BACKEND_ERROR', `${what}: ${messageOf(error)}`, {
      hint: 'free space on the filesystem that holds the volume directory, or use a smaller size',
      cause: error,
    });
  }
  return new BerthError('BACKEND_ERROR', `${what}: ${messageOf(error)}`, { cause: error });
}
