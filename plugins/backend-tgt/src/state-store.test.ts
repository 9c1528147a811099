import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { TgtStateStore, type VolumeRecord } from './state-store.js';

let base: string;
let dir: string;

beforeEach(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'berth-tgt-state-'));
  dir = path.join(base, 'backend-tgt');
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

function record(tid: number): VolumeRecord {
  return {
    tid,
    iqn: `iqn.2026-11.io.berth:volume-${tid}`,
    file: `/luns/${tid}.img`,
    sizeBytes: 1 << 20,
    chap: { username: `berth-${tid}`, password: `Secret${tid}Secret${tid}xx` },
    initiators: [],
    createdAt: '2026-11-26T00:00:00.000Z',
  };
}

describe('TgtStateStore', () => {
  it('reads an empty state when there is no file', async () => {
    expect(await new TgtStateStore(dir).read()).toEqual({ version: 1, volumes: {} });
  });

  it('writes state.json private to its owner (0600 in a 0700 directory), leaving no temp or lock file', async () => {
    const store = new TgtStateStore(dir);
    await store.transaction(undefined, async (state) => {
      state.volumes.a = record(1);
    });
    expect((await stat(store.file)).mode & 0o777).toBe(0o600);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect(await readdir(dir)).toEqual(['state.json']);
    expect((await new TgtStateStore(dir).read()).volumes.a).toEqual(record(1));
  });

  it('loses no update when many callers of two stores change it at once', async () => {
    const stores = [new TgtStateStore(dir), new TgtStateStore(dir)];
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        stores[i % 2]?.transaction(undefined, async (state) => {
          // A yield between the read and the write is where an unlocked store loses updates.
          await new Promise((resolve) => setImmediate(resolve));
          state.volumes[`v${i}`] = record(i + 1);
        }),
      ),
    );
    expect(Object.keys((await stores[0]?.read())?.volumes ?? {})).toHaveLength(40);
  });

  it('keeps what a change did before it threw', async () => {
    const store = new TgtStateStore(dir);
    const error = await store
      .transaction(undefined, async (state) => {
        state.volumes.kept = record(1);
        throw new BerthError('BACKEND_ERROR', 'tgtadm failed half way');
      })
      .catch((e: unknown) => e);
    expect(BerthError.is(error)).toBe(true);
    expect(Object.keys((await store.read()).volumes)).toEqual(['kept']);
  });

  it('does not rewrite the file when nothing changed', async () => {
    const store = new TgtStateStore(dir);
    await store.transaction(undefined, async (state) => {
      state.volumes.a = record(1);
    });
    const before = (await stat(store.file)).mtimeMs;
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await store.transaction(undefined, async (state) => Object.keys(state.volumes))).toEqual(['a']);
    expect((await stat(store.file)).mtimeMs).toBe(before);
  });

  it('reports a damaged file without echoing what is in it', async () => {
    const store = new TgtStateStore(dir);
    await store.ensureDir();
    const secret = 'Hunter2Hunter2Hunter2abc';
    await writeFile(store.file, `{"version":1,"volumes":{"a":{"chap":{"password":"${secret}"`);
    const torn = await store.read().catch((e: unknown) => e);
    expect(BerthError.is(torn) && torn.code).toBe('BACKEND_ERROR');
    expect(String((torn as Error).message)).not.toContain(secret);
    expect((torn as Error).cause).toBeUndefined();

    await writeFile(store.file, JSON.stringify({ version: 1, volumes: { a: { ...record(1), tid: secret } } }));
    const wrong = await store.read().catch((e: unknown) => e);
    expect(BerthError.is(wrong) && wrong.code).toBe('BACKEND_ERROR');
    expect(JSON.stringify((wrong as BerthError).toJSON())).not.toContain(secret);
    expect(await readFile(store.file, 'utf8')).toContain(secret);
  });
});
