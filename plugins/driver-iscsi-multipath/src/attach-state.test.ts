import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AttachStateStore, type AttachState } from './attach-state.js';

let dir: string | undefined;
afterEach(async () => {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

function sample(volumeId: string): AttachState {
  return {
    version: 1,
    volumeId,
    mode: 'multipath',
    device: '/dev/dm-0',
    dm: 'dm-0',
    mapName: '360000000000000000e00000000010001',
    scsi_wwn: '360000000000000000e00000000010001',
    target_iqn: 'iqn.2026-01.test:v',
    target_portal: '127.0.0.1:3260',
    target_lun: 1,
    paths: [
      { target_iqn: 'iqn.2026-01.test:v', target_portal: '127.0.0.1:3260', target_lun: 1, kernel_lun: 1, state: 'active', sid: 1, hctl: '0:0:0:1', device: '/dev/sda' },
      { target_iqn: 'iqn.2026-01.test:v', target_portal: '127.0.0.2:3260', target_lun: 1, kernel_lun: 1, state: 'failed' },
    ],
    connectedAt: new Date(0).toISOString(),
  };
}

describe('AttachStateStore', () => {
  it('saves atomically (0600, no temp file left), loads, lists and removes', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'berth-mp-state-'));
    const store = new AttachStateStore(path.join(dir, 'states'));
    await store.save(sample('vol-a'));
    await store.save(sample('vol-b'));
    expect(await store.load('vol-a')).toEqual(sample('vol-a'));
    expect((await store.list()).map((s) => s.volumeId)).toEqual(['vol-a', 'vol-b']);
    expect(await readdir(path.join(dir, 'states'))).toEqual(['vol-a.json', 'vol-b.json']);
    expect((await stat(path.join(dir, 'states', 'vol-a.json'))).mode & 0o777).toBe(0o600);
    await store.remove('vol-a');
    await store.remove('vol-a');
    expect(await store.load('vol-a')).toBeUndefined();
  });

  it('skips a damaged file and refuses ids that would leave its directory', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'berth-mp-state-'));
    const store = new AttachStateStore(dir);
    await writeFile(path.join(dir, 'broken.json'), '{not json');
    expect(await store.list()).toEqual([]);
    for (const id of ['../x', '/etc/passwd', '..', '']) expect(() => store.fileOf(id)).toThrow(/cannot name an attach-state file/);
  });

  it('reads a state written before left logins existed, and keeps the ones written now', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'berth-mp-state-'));
    const store = new AttachStateStore(dir);
    await writeFile(path.join(dir, 'old.json'), JSON.stringify(sample('old')));
    expect(await store.load('old')).toEqual(sample('old'));
    const left = { target_iqn: 'iqn.2026-01.test:v', target_portal: '127.0.0.2:3260', target_lun: 1, kernel_lun: 1, started_at: new Date(0).toISOString(), until: new Date(10_000).toISOString() };
    await store.save({ ...sample('new'), left_logins: [left] });
    expect((await store.load('new'))?.left_logins).toEqual([left]);
  });

  it('has no field a secret could go in', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'berth-mp-state-'));
    const store = new AttachStateStore(dir);
    await store.save({ ...sample('v'), ...({ auth_password: 'pw' } as object) } as AttachState);
    expect(await readFile(path.join(dir, 'v.json'), 'utf8')).not.toContain('pw');
  });
});
