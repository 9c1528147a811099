import { randomUUID } from 'node:crypto';
import { readdir, stat, statfs, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hostFacts } from '@berth/host';
import { BerthError, PLUGIN_API_VERSION, type BackendVolume, type BackendFactory } from '@berth/core';
import plugin from './index.js';
import { createFileBackendTestEnv, type FileBackendTestEnv } from './test-backend-env.js';

const MiB = 1024 * 1024;
const here = { host: hostFacts().hostname };

function volume(sizeBytes = 16 * MiB, id: string = randomUUID()): BackendVolume {
  return { id, name: 'data', sizeBytes, providerLocation: null };
}

function signal(): AbortSignal {
  return AbortSignal.timeout(10_000);
}

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  return promise.then(
    () => undefined,
    (error: unknown) => (BerthError.is(error) ? error.code : `not a BerthError: ${String(error)}`),
  );
}

describe('file backend', () => {
  let env: FileBackendTestEnv;

  beforeEach(async () => {
    env = await createFileBackendTestEnv();
  });

  afterEach(async () => {
    await env.dispose();
  });

  it('a size past the file system\'s largest file (1 PiB on ext4: EFBIG) fails saying so, not "free space"', async () => {
    const fsType = (await statfs(env.dataDir)).type;
    // ext4's magic (0xEF53): its largest file with 4 KiB blocks is 16 TiB. Elsewhere (xfs, tmpfs) a 1 PiB sparse file may fit.
    if (fsType !== 0xef53) return;
    const error = await env.backend.create(volume(2 ** 50), signal()).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.details.reason).toBe('file-too-large');
    expect(BerthError.is(error) && error.hint).toMatch(/cannot hold a file this large/);
    expect(await readdir(path.join(env.dataDir, 'volumes')).catch(() => [])).toEqual([]);
  });

  it('creates <dataDir>/volumes/<id>.img of the volume size, private to its owner', async () => {
    const v = volume(16 * MiB);
    const { providerLocation } = await env.backend.create(v, signal());
    expect(providerLocation).toBe(path.join(env.dataDir, 'volumes', `${v.id}.img`));
    const file = await stat(providerLocation);
    expect(file.size).toBe(16 * MiB);
    expect(file.mode & 0o777).toBe(0o600);
    expect((await stat(path.join(env.dataDir, 'volumes'))).mode & 0o777).toBe(0o700);
  });

  it('keeps a 1 GiB volume sparse (about no blocks on disk)', async () => {
    const { providerLocation } = await env.backend.create(volume(1024 * MiB), signal());
    const file = await stat(providerLocation);
    expect(file.size).toBe(1024 * MiB);
    expect(file.blocks).toBeLessThanOrEqual(8);
  });

  it('warns when a sparse volume is larger than the free space, and only then', async () => {
    const free = await statfs(path.join(env.dataDir));
    const beyond = Math.ceil((free.bavail * free.bsize * 2) / 512) * 512 + 512;
    const big = await env.backend.create(volume(Math.min(beyond, 2 ** 50)), signal());
    expect(big.warnings).toHaveLength(1);
    expect(big.warnings![0]).toMatch(/is free on the file system holding .*volumes: it is sparse, so writes to it fail once the disk fills up/);
    expect((await env.backend.create(volume(16 * MiB), signal())).warnings).toBeUndefined();
  });

  it('takes a retried create of the same size, refuses another size', async () => {
    const v = volume(16 * MiB);
    const first = await env.backend.create(v, signal());
    expect(await env.backend.create(v, signal())).toEqual(first);
    expect(await codeOf(env.backend.create({ ...v, sizeBytes: 32 * MiB }, signal()))).toBe('CONFLICT');
    expect((await stat(first.providerLocation)).size).toBe(16 * MiB);
  });

  it('names the file after the id only, whatever the name says', async () => {
    const v = { ...volume(), name: '../../etc/evil' };
    const { providerLocation } = await env.backend.create(v, signal());
    expect(path.dirname(providerLocation)).toBe(path.join(env.dataDir, 'volumes'));
    expect(await readdir(path.join(env.dataDir, 'volumes'))).toEqual([`${v.id}.img`]);
  });

  it('refuses ids that are not UUIDs and sizes that are not whole sectors', async () => {
    for (const id of ['../x', 'x/../../y', '', 'not-a-uuid', `${randomUUID()}/..`]) {
      expect(await codeOf(env.backend.create(volume(MiB, id), signal()))).toBe('VALIDATION');
    }
    expect(await codeOf(env.backend.create(volume(1000), signal()))).toBe('VALIDATION');
    expect(await codeOf(env.backend.create(volume(0), signal()))).toBe('VALIDATION');
    expect(await readdir(env.dataDir)).toEqual([]);
  });

  it('deletes, and deleting again or what never existed succeeds', async () => {
    const v = volume();
    const { providerLocation } = await env.backend.create(v, signal());
    await env.backend.delete(v, signal());
    await expect(stat(providerLocation)).rejects.toThrow(/ENOENT/);
    await env.backend.delete(v, signal());
    await env.backend.delete(volume(), signal());
  });

  it('grows a volume, refuses to shrink it, and says NOT_FOUND for a missing one', async () => {
    const v = volume(16 * MiB);
    const { providerLocation } = await env.backend.create(v, signal());
    await env.backend.extend?.(v, 48 * MiB, signal());
    expect((await stat(providerLocation)).size).toBe(48 * MiB);
    await env.backend.extend?.(v, 48 * MiB, signal());
    expect(await codeOf(env.backend.extend?.(v, 8 * MiB, signal()) ?? Promise.resolve())).toBe('VALIDATION');
    expect((await stat(providerLocation)).size).toBe(48 * MiB);
    expect(await codeOf(env.backend.extend?.(volume(), 48 * MiB, signal()) ?? Promise.resolve())).toBe('NOT_FOUND');
  });

  it('exports a file connection for this host', async () => {
    const v = volume();
    const { providerLocation } = await env.backend.create(v, signal());
    expect(await env.backend.initializeConnection(v, here, signal())).toEqual({
      driver_volume_type: 'file',
      data: { device_path: providerLocation, volume_id: v.id, access_mode: 'rw' },
    });
    await env.backend.terminateConnection(v, here, signal());
    await env.backend.terminateConnection(v, here, signal());
  });

  it('refuses a connector on another host unless allowRemoteHosts is set', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const other = { host: `not-${here.host}` };
    const refused = await env.backend.initializeConnection(v, other, signal()).catch((error: unknown) => error);
    expect(BerthError.is(refused) && refused.code).toBe('UNPROCESSABLE');
    expect(BerthError.is(refused) && refused.hint).toContain('allowRemoteHosts');
    const remote = env.backendWith({ allowRemoteHosts: true });
    expect((await remote.initializeConnection(v, other, signal())).driver_volume_type).toBe('file');
  });

  it('refuses to export a volume whose file was cut short behind berth (BACKEND_ERROR), and leaves the file as it is', async () => {
    const v = volume();
    const { providerLocation } = await env.backend.create(v, signal());
    await truncate(providerLocation, 1 * MiB);
    const refused = await env.backend.initializeConnection(v, here, signal()).catch((error: unknown) => error);
    expect(BerthError.is(refused) && refused.code).toBe('BACKEND_ERROR');
    expect(BerthError.is(refused) && refused.details).toMatchObject({ fileBytes: 1 * MiB, volumeBytes: v.sizeBytes });
    expect((await stat(providerLocation)).size).toBe(1 * MiB);
    // Larger (an extend whose record a crash lost) is attached as it is.
    await truncate(providerLocation, v.sizeBytes + 1 * MiB);
    expect((await env.backend.initializeConnection(v, here, signal())).driver_volume_type).toBe('file');
  });

  it('says NOT_FOUND when exporting a volume whose file is gone', async () => {
    expect(await codeOf(env.backend.initializeConnection(volume(), here, signal()))).toBe('NOT_FOUND');
  });

  it('stops on an aborted signal before touching anything', async () => {
    const controller = new AbortController();
    controller.abort();
    expect(await codeOf(env.backend.create(volume(), controller.signal))).toBe('CANCELLED');
    expect(await readdir(env.dataDir)).toEqual([]);
  });

  it('uses the directory option, relative to the data dir', async () => {
    const backend = env.backendWith({ directory: 'elsewhere/vols' });
    const v = volume();
    const { providerLocation } = await backend.create(v, signal());
    expect(providerLocation).toBe(path.join(env.dataDir, 'elsewhere/vols', `${v.id}.img`));
  });

  it('check() passes on a writable directory and says how to fix one it cannot create', async () => {
    const ok = await env.backend.check();
    expect(ok).toMatchObject({ ok: true });
    expect(await readdir(path.join(env.dataDir, 'volumes'))).toEqual([]);

    await writeFile(path.join(env.dataDir, 'a-file'), '');
    const broken = await env.backendWith({ directory: 'a-file/volumes' }).check();
    expect(broken.ok).toBe(false);
    expect(broken.fix).toMatch(/\S/);
  });

  it('is a plugin that registers the file backend and validates its options', async () => {
    expect(plugin.apiVersion).toBe(PLUGIN_API_VERSION);
    const factories = new Map<string, BackendFactory>();
    plugin.register({
      backend: (name, factory) => factories.set(name, factory as BackendFactory),
      transport: () => {
        throw new Error('the file plugin registers no transport');
      },
      consumer: () => {
        throw new Error('the file plugin registers no consumer');
      },
    });
    expect([...factories.keys()]).toEqual(['file']);
    expect(plugin.optionsSchema?.safeParse({ directory: 5 }).success).toBe(false);
    expect(plugin.optionsSchema?.parse({})).toEqual({ allowRemoteHosts: false });
  });
});
