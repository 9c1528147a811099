import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync, lstatSync, readlinkSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError, silentLogger, type BerthService } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { loopDevicesUnder } from './loop-devices.js';

/** A private berth on a temp data dir (real loop devices, real /dev/berth links). */
export interface TestBerth {
  dataDir: string;
  /** What a child berth of this test needs in its environment to open the same store (empty for SQLite). */
  env: Record<string, string>;
  open(env?: Record<string, string>): Promise<BerthService>;
  /** Detach loop devices backed by files in the data dir, remove links made for them, delete the dir. */
  cleanup(): Promise<void>;
}

/** Options of a test berth. */
export interface TestBerthOptions {
  /** A PostgreSQL database for the store (a throwaway cluster's); SQLite in the data dir without it. */
  storeUrl?: string;
}

/** Make a test berth; call `cleanup` in afterEach/afterAll. */
export async function createTestBerth(options: TestBerthOptions = {}): Promise<TestBerth> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-test-'));
  const opened: BerthService[] = [];
  const storeEnv: Record<string, string> = options.storeUrl === undefined ? {} : { BERTH_STORE_URL: options.storeUrl };
  return {
    dataDir,
    env: storeEnv,
    async open(env = {}) {
      const service = await openBerth({ dataDir, env: { ...storeEnv, ...env }, logger: silentLogger });
      opened.push(service);
      return service;
    },
    async cleanup() {
      const volumeIds: string[] = [];
      for (const service of opened) {
        try {
          for (const v of await service.listVolumes()) volumeIds.push(v.id);
          // Each attachment has its own link too.
          for (const a of await service.listAttachments()) volumeIds.push(a.id);
        } catch {
          // closed already
        }
        await service.close().catch(() => undefined);
      }
      for (const device of loopDevicesUnder(dataDir)) {
        try {
          execFileSync('losetup', ['--detach', device]);
        } catch {
          // already gone
        }
      }
      for (const id of volumeIds) {
        const link = `/dev/berth/${id}`;
        if (existsSync(link) || isLink(link)) rmSync(link, { force: true });
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

function isLink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Where a stable link points, or undefined. */
export function linkTarget(p: string): string | undefined {
  try {
    return readlinkSync(p);
  } catch {
    return undefined;
  }
}

/** Await `promise`, which must reject with a BerthError; returns it. */
export async function rejection(promise: Promise<unknown>): Promise<BerthError> {
  const outcome = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  if (!BerthError.is(outcome)) throw new Error(`expected a BerthError, got ${String(outcome)}`);
  return outcome;
}
