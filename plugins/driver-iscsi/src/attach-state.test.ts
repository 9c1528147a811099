import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AttachStateStore, type AttachState } from './attach-state.js';

const VOLUME = '0b0e2c55-6a1f-4c61-9d0e-4a4b8f1f9f10';

function state(overrides: Partial<AttachState> = {}): AttachState {
  return {
    version: 1,
    volumeId: VOLUME,
    target_iqn: 'iqn.2026-01.test.berth:vol1',
    target_portal: '127.0.0.1:3260',
    target_lun: 1,
    kernel_lun: 1,
    iface: 'default',
    sid: 3,
    hctl: '2:0:0:1',
    device: '/dev/sdb',
    scsi_wwn: '360000000000000000e00000000010001',
    connectedAt: '2026-01-01T00:00:00.000Z',
    ...overrides,
  };
}

describe('AttachStateStore', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-state-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes one file per volume, readable after a restart (a new store)', async () => {
    const store = new AttachStateStore(path.join(dir, 'driver-iscsi', 'attachments'));
    await store.save(state());
    const file = path.join(dir, 'driver-iscsi', 'attachments', `${VOLUME}.json`);
    expect(JSON.parse(await readFile(file, 'utf8'))).toMatchObject({ device: '/dev/sdb', target_lun: 1 });
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const again = new AttachStateStore(path.join(dir, 'driver-iscsi', 'attachments'));
    expect(await again.load(VOLUME)).toEqual(state());
    expect(await again.list()).toEqual([state()]);
  });

  it('replaces a state atomically and leaves no temporary file', async () => {
    const store = new AttachStateStore(dir);
    await store.save(state());
    await store.save(state({ device: '/dev/sdc' }));
    expect((await store.load(VOLUME))?.device).toBe('/dev/sdc');
    expect(await readdir(dir)).toEqual([`${VOLUME}.json`]);
  });

  it('forgets a volume, and forgetting twice is fine', async () => {
    const store = new AttachStateStore(dir);
    await store.save(state());
    await store.remove(VOLUME);
    await store.remove(VOLUME);
    expect(await store.load(VOLUME)).toBeUndefined();
    expect(await store.list()).toEqual([]);
  });

  it('skips files that are not states (a torn write from another tool, an old format)', async () => {
    const store = new AttachStateStore(dir);
    await store.save(state());
    await writeFile(path.join(dir, 'broken.json'), '{"version":1,');
    await writeFile(path.join(dir, 'old.json'), JSON.stringify({ version: 0 }));
    expect((await store.list()).map((s) => s.volumeId)).toEqual([VOLUME]);
    expect(await store.load('broken')).toBeUndefined();
  });

  it('refuses a volume id that would leave the directory', async () => {
    const store = new AttachStateStore(dir);
    expect(() => store.fileOf('../etc/passwd')).toThrow(/cannot name an attach-state file/);
    await expect(store.save(state({ volumeId: '../x' }))).rejects.toThrow();
  });

  it('holds no secret: its schema has no place for one', async () => {
    const store = new AttachStateStore(dir);
    await store.save({ ...state(), auth_password: 'pw' } as AttachState);
    expect(await readFile(path.join(dir, `${VOLUME}.json`), 'utf8')).not.toContain('pw');
  });
});
