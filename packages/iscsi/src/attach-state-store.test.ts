import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { z } from '@berth/core/zod';
import { AttachStateFileStore } from './attach-state-store.js';

const zState = z.object({ version: z.literal(1), volumeId: z.string(), device: z.string() });
type State = z.output<typeof zState>;
const VOLUME = '0b0e2c55-6a1f-4c61-9d0e-4a4b8f1f9f10';
const state = (device = '/dev/sdb'): State => ({ version: 1, volumeId: VOLUME, device });

describe('AttachStateFileStore', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-state-store-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes one 0600 file per volume, readable by a new store', async () => {
    await new AttachStateFileStore(path.join(dir, 'a'), zState).save(state());
    const file = path.join(dir, 'a', `${VOLUME}.json`);
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual(state());
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const again = new AttachStateFileStore(path.join(dir, 'a'), zState);
    expect(await again.load(VOLUME)).toEqual(state());
    expect(await again.list()).toEqual([state()]);
  });

  it('replaces a state atomically, leaves no temporary file, forgets twice without error', async () => {
    const store = new AttachStateFileStore(dir, zState);
    await store.save(state());
    await store.save(state('/dev/sdc'));
    expect((await store.load(VOLUME))?.device).toBe('/dev/sdc');
    expect(await readdir(dir)).toEqual([`${VOLUME}.json`]);
    await store.remove(VOLUME);
    await store.remove(VOLUME);
    expect(await store.load(VOLUME)).toBeUndefined();
    expect(await store.list()).toEqual([]);
  });

  it('skips files its schema does not accept, and writes only what the schema keeps', async () => {
    const store = new AttachStateFileStore(dir, zState);
    await store.save({ ...state(), ...({ auth_password: 'pw' } as object) } as State);
    await writeFile(path.join(dir, 'broken.json'), '{"version":1,');
    await writeFile(path.join(dir, 'old.json'), JSON.stringify({ version: 0 }));
    expect((await store.list()).map((s) => s.volumeId)).toEqual([VOLUME]);
    expect(await readFile(path.join(dir, `${VOLUME}.json`), 'utf8')).not.toContain('pw');
  });

  it('refuses a volume id that would leave the directory', async () => {
    const store = new AttachStateFileStore(dir, zState);
    for (const id of ['../x', '/etc/passwd', '..', '']) expect(() => store.fileOf(id)).toThrow(/cannot name an attach-state file/);
    await expect(store.save({ ...state(), volumeId: '../x' })).rejects.toThrow(/cannot name an attach-state file/);
  });

  it('update: a change on the file as it is, written or removed; one that writes nothing does not create the directory', async () => {
    const store = new AttachStateFileStore(path.join(dir, 'u'), zState);
    expect(await store.update(VOLUME, () => null)).toBeUndefined();
    expect(await store.update(VOLUME, () => undefined)).toBeUndefined();
    await expect(stat(path.join(dir, 'u'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await store.update(VOLUME, (current) => current ?? state())).toEqual(state());
    expect(await store.update(VOLUME, (current) => ({ ...current!, device: `${current!.device}x` }))).toEqual(state('/dev/sdbx'));
    expect(await store.load(VOLUME)).toEqual(state('/dev/sdbx'));
    await expect(store.update(VOLUME, () => ({ ...state(), volumeId: 'other' }))).rejects.toMatchObject({ code: 'INTERNAL' });
    expect(await store.update(VOLUME, () => null)).toBeUndefined();
    // No state, no lock file left.
    expect(await readdir(path.join(dir, 'u'))).toEqual([]);
  });
});

