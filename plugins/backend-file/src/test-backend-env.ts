import { mkdtemp, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createHostServices } from '@berth/host';
import { silentLogger, type VolumeBackend } from '@berth/core';
import { createFileBackend, type FileBackendOptions } from './backend-file.js';

/** A file backend over a fresh temp data dir; `dispose` removes the dir. */
export interface FileBackendTestEnv {
  dataDir: string;
  backend: VolumeBackend;
  /** Another backend instance on the same data dir with other options. */
  backendWith(options: Partial<FileBackendOptions>): VolumeBackend;
  dispose(): Promise<void>;
}

/** Make a test environment (the caller must `dispose` it in `finally`/`afterEach`). */
export async function createFileBackendTestEnv(): Promise<FileBackendTestEnv> {
  const dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-file-')));
  const host = createHostServices();
  const backendWith = (options: Partial<FileBackendOptions>): VolumeBackend =>
    createFileBackend({ host, dataDir, options, logger: silentLogger });
  return {
    dataDir,
    backend: backendWith({}),
    backendWith,
    dispose: () => rm(dataDir, { recursive: true, force: true }),
  };
}
