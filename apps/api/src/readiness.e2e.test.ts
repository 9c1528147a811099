import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fillFileSystem } from '@berth/host/testing';
import { silentLogger, type BerthService } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { afterEach, describe, expect, it } from 'vitest';
import { createApiApp, type ApiApp } from './app.js';
import { TokenTable } from './auth.js';
import { testTokenEntries } from './test-support.js';

// /readyz on a store that reads but cannot write, for real: the data dir on a small tmpfs, filled.
// Before, readiness only read (a listing), and said ready while every attach failed.

const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function serve(dataDir: string): Promise<{ app: ApiApp; url: string; service: BerthService }> {
  const service = await openBerth({ dataDir, env: {}, logger: silentLogger });
  const app = await createApiApp({ service, tokens: TokenTable.fromConfig(testTokenEntries(), {}), defaultProject: 'default', logger: false, defaultMetrics: false });
  cleanups.push(async () => {
    await app.close();
    await service.close();
  });
  return { app, url: await app.listen('127.0.0.1', 0), service };
}

describe('GET /readyz', () => {
  it('is ready on a writable store, and 503 (without the store\'s words) once the data dir\'s disk is full; ready again once it has room', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'berth-readyz-'));
    cleanups.push(() => {
      rmSync(dataDir, { recursive: true, force: true });
    });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'berth-readyz', dataDir]);
    cleanups.push(() => {
      execFileSync('umount', ['--lazy', dataDir]);
    });
    const { url, service } = await serve(dataDir);
    expect((await fetch(`${url}/readyz`)).status).toBe(200);

    const filler = fillFileSystem(dataDir);
    const full = await fetch(`${url}/readyz`);
    expect(full.status).toBe(503);
    expect(await full.json()).toEqual({ status: 'store unavailable' });
    // Reads still answer: liveness and listings are not readiness.
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect(await service.listVolumes()).toEqual([]);

    rmSync(filler, { force: true });
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
  }, 60_000);
});
