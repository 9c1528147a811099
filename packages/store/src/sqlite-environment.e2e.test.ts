import { execFileSync, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { BerthError, type NewVolume } from '@berth/core';
import { openSqliteStore, openSqliteStoreForUse } from './open-sqlite-store.js';
import { WAL_CHECKPOINT_PAGES, WAL_SIZE_LIMIT_BYTES } from './sqlite-dialect.js';

// The environment failures a user hits (finding 8 of issue 9): a full disk and a read-only data
// dir each get their own error and hint, and the database can still be read. Both are real: a
// small tmpfs filled by a file, and a read-only bind mount, made here and unmounted in afterEach.

const mounts: string[] = [];
const dirs: string[] = [];

afterEach(() => {
  for (const mount of mounts.splice(0).reverse()) execFileSync('umount', [mount]);
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'berth-store-env-'));
  dirs.push(dir);
  return dir;
}

function volume(name: string): NewVolume {
  return { name, projectId: 'p', sizeBytes: 1 << 20, backend: 'file', multiattach: false, status: 'available' };
}

/** Write zeros into `file` until the file system says it is full. */
function fill(file: string): void {
  const fd = openSync(file, 'w');
  const chunk = Buffer.alloc(64 * 1024);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    closeSync(fd);
  }
}

async function rejection(promise: Promise<unknown>): Promise<BerthError> {
  const outcome = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  if (!BerthError.is(outcome)) throw new Error(`expected a BerthError, got ${String(outcome)}`);
  return outcome;
}

describe('the database on a full disk and on a read-only data dir', () => {
  it('a full disk: writes fail as a full disk (retryable, with a hint), reads work, and writes work again once space is freed', async () => {
    const dir = tempDir();
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'berth-store-full', dir]);
    mounts.push(dir);
    const filename = join(dir, 'berth.db');
    const setup = await openSqliteStore({ filename });
    const kept = await setup.volumes.create(volume('kept'));
    await setup.close();

    // Opening for writing needs space for SQLite's -shm file: on a full disk it opens for reading.
    fill(join(dir, 'filler'));
    const { store, readOnly } = await openSqliteStoreForUse({ filename });
    try {
      expect(readOnly?.details.reason).toBe('disk-full');
      expect(readOnly?.hint).toMatch(/df -h/);
      expect(await store.volumes.require(kept.id)).toEqual(kept);
      expect((await rejection(store.volumes.create(volume('refused')))).details.reason).toBe('disk-full');
    } finally {
      await store.close();
    }
    rmSync(join(dir, 'filler'));

    // A store opened before the disk filled up: its writes fail as a full disk and leave nothing half done.
    const writer = await openSqliteStore({ filename });
    fill(join(dir, 'filler'));
    try {
      const full = await rejection(
        writer.transaction(async (tx) => {
          for (let i = 0; i < 500; i += 1) await tx.volumes.create({ ...volume(`v${i}`), name: `v${i}-${'x'.repeat(50)}` });
        }),
      );
      expect(full.code).toBe('HOST_UNSUPPORTED');
      expect(full.message).toContain(dir);
      expect(full.details).toMatchObject({ retryable: true, reason: 'disk-full', outage: true });
      expect((await writer.volumes.list()).map((v) => v.name)).toEqual(['kept']);
    } finally {
      await writer.close();
    }

    rmSync(join(dir, 'filler'));
    const again = await openSqliteStore({ filename });
    try {
      await again.volumes.create(volume('after'));
      expect((await again.volumes.list()).map((v) => v.name)).toEqual(['kept', 'after']);
    } finally {
      await again.close();
    }
  });

  it('a small disk: the WAL is checkpointed and kept near 1 MiB, so it never fills the disk with what the database already holds', async () => {
    const dir = tempDir();
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=3m', 'berth-store-small', dir]);
    mounts.push(dir);
    const filename = join(dir, 'berth.db');
    const store = await openSqliteStore({ filename });
    try {
      // ~16 KiB of WAL per commit: SQLite's own 4 MiB threshold filled this disk after ~190 and
      // never checkpointed; each commit here is its own, as berth's journal writes are.
      for (let i = 0; i < 600; i += 1) await store.volumes.create(volume(`small-${i}`));
      expect(statSync(`${filename}-wal`).size).toBeLessThanOrEqual(WAL_SIZE_LIMIT_BYTES + WAL_CHECKPOINT_PAGES * 8192);
      expect(statSync(filename).size).toBeGreaterThan(4096);
    } finally {
      await store.close();
    }
  });

  it('a read-only data dir: the store opens for reading, every write fails as read-only with its hint', async () => {
    const dir = tempDir();
    const filename = join(dir, 'berth.db');
    const setup = await openSqliteStore({ filename });
    const kept = await setup.volumes.create(volume('kept'));
    await setup.close();
    execFileSync('mount', ['--bind', dir, dir]);
    mounts.push(dir);
    execFileSync('mount', ['-o', 'remount,ro,bind', dir]);

    const direct = await rejection(openSqliteStore({ filename }));
    expect(direct.code).toBe('PERMISSION_DENIED');
    expect(direct.details.reason).toBe('read-only');
    expect(direct.hint).toMatch(/findmnt -T/);

    const { store, readOnly } = await openSqliteStoreForUse({ filename });
    try {
      expect(readOnly?.details.reason).toBe('read-only');
      expect(await store.volumes.list()).toEqual([kept]);
      const write = await rejection(store.volumes.create(volume('new')));
      expect(write.details.reason).toBe('read-only');
      expect(write.hint).toMatch(/volume list/);
    } finally {
      await store.close();
    }
  });

  it('the private copy a killed read-only process left is removed by the next read-only open', async () => {
    const dir = tempDir();
    const filename = join(dir, 'berth.db');
    const setup = await openSqliteStore({ filename });
    await setup.volumes.create(volume('kept'));
    await setup.close();
    execFileSync('mount', ['--bind', dir, dir]);
    mounts.push(dir);
    execFileSync('mount', ['-o', 'remount,ro,bind', dir]);
    const copies = (pid: number): string[] => readdirSync(tmpdir()).filter((name) => name.startsWith(`berth-db-read-${pid}-`));

    // A real process opens it read-only (a private copy: the dir is read-only and has no -wal) and is killed.
    const dist = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'index.js');
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { openSqliteStoreForUse } = await import(${JSON.stringify(dist)});
      const { store } = await openSqliteStoreForUse({ filename: ${JSON.stringify(filename)} });
      await store.volumes.list();
      process.stdout.write('open\\n');
      setInterval(() => {}, 60_000);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((opened, failed) => {
        child.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('open') && opened());
        child.on('exit', (code) => failed(new Error(`the child exited (${code}) before it opened the store`)));
      });
      expect(copies(child.pid!)).toHaveLength(1);
    } finally {
      child.kill('SIGKILL');
      await new Promise((ended) => (child.exitCode === null && child.signalCode === null ? child.on('exit', ended) : ended(undefined)));
    }
    // Its copy outlived it (a killed process runs no close) until the next read-only open.
    expect(copies(child.pid!)).toHaveLength(1);
    const { store, readOnly } = await openSqliteStoreForUse({ filename });
    try {
      expect(readOnly?.details.reason).toBe('read-only');
      expect(copies(child.pid!)).toEqual([]);
      // Its own copy stays while it is open, and goes with its close.
      expect(copies(process.pid)).toHaveLength(1);
    } finally {
      await store.close();
    }
    expect(copies(process.pid)).toEqual([]);
  });
});
