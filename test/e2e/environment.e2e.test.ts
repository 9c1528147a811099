import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger, type BerthService } from '@berth/core';
import { createHostServices } from '@berth/host';
import { openBerth } from '@berth/runtime';
import { loopDevicesUnder } from '../support/loop-devices.js';
import { createTestBerth, linkTarget, rejection, type TestBerth } from '../support/test-berth.js';

// Issue 9's findings 7 and 8: the environment berth runs in, broken for real. losetup missing from
// PATH; the data dir on a read-only bind mount; the data dir on a tmpfs that is full. Each gets its
// own message and hint, nothing is left behind, and what people look at keeps working.

const MiB = 1024 * 1024;
let t: TestBerth | undefined;
const mounts: string[] = [];
const dirs: string[] = [];
const services: BerthService[] = [];

afterEach(async () => {
  for (const service of services.splice(0)) await service.close().catch(() => undefined);
  for (const dir of dirs) for (const device of loopDevicesUnder(dir)) execFileSync('losetup', ['--detach', device]);
  for (const mount of mounts.splice(0).reverse()) execFileSync('umount', [mount]);
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  await t?.cleanup();
  t = undefined;
});


async function open(dataDir: string): Promise<BerthService> {
  const service = await openBerth({ dataDir, logger: silentLogger });
  services.push(service);
  return service;
}

function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'berth-env-'));
  dirs.push(dir);
  return dir;
}

/** Write zeros into `<dir>/filler` until the file system is full; its path. */
function fillDisk(dir: string): string {
  const filler = path.join(dir, 'filler');
  const fd = openSync(filler, 'w');
  try {
    for (;;) writeSync(fd, Buffer.alloc(256 * 1024));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    closeSync(fd);
  }
  return filler;
}

describe('the environment berth runs in', () => {
  it('losetup missing: the attach says how to install it, its undo succeeds, nothing is left, and reconcile has nothing to do (finding 7)', async () => {
    t = await createTestBerth();
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    await berth.close();
    // A PATH with neither losetup nor blockdev, as on a machine without util-linux's mount package.
    const empty = path.join(t.dataDir, 'empty-bin');
    mkdirSync(empty);
    const bare = await openBerth({ dataDir: t.dataDir, logger: silentLogger, host: createHostServices({ env: { PATH: empty } }) });
    services.push(bare);
    const error = await rejection(bare.attach({ volume: 'v' }));
    expect(error.code).toBe('HOST_UNSUPPORTED');
    expect(error.message).toMatch(/losetup is not installed/);
    expect(error.hint).toMatch(/apt-get install -y mount/);
    expect(error.message).not.toMatch(/rollback failed/);
    expect((await bare.getVolume('v')).status).toBe('available');
    expect(await bare.listAttachments({ volume: 'v' })).toEqual([]);
    const [operation] = await bare.listOperations();
    expect(operation).toMatchObject({ kind: 'attach', state: 'rolled_back' });
    expect((await bare.reconcile!({ dryRun: true })).differences).toEqual([]);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
  });

  it('a read-only data dir: lists and shows work, every write says the directory is read-only and what to do (finding 8)', async () => {
    const dataDir = tempDir();
    const setup = await open(dataDir);
    const volume = await setup.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const { attachment } = await setup.attach({ volume: 'v' });
    await setup.close();
    execFileSync('mount', ['--bind', dataDir, dataDir]);
    mounts.push(dataDir);
    execFileSync('mount', ['-o', 'remount,ro,bind', dataDir]);

    const berth = await open(dataDir);
    expect((await berth.listVolumes()).map((v) => `${v.name}:${v.status}`)).toEqual(['v:in-use']);
    expect((await berth.getVolume('v')).id).toBe(volume.id);
    expect((await berth.listAttachments()).map((a) => a.id)).toEqual([attachment!.id]);
    const create = await rejection(berth.createVolume({ name: 'w', sizeBytes: 16 * MiB }));
    expect(create.code).toBe('PERMISSION_DENIED');
    expect(create.details.reason).toBe('read-only');
    expect(create.message).not.toMatch(/not a berth database/);
    expect(create.hint).toMatch(/findmnt -T/);
    const detach = await rejection(berth.detach({ volume: 'v' }));
    expect(detach.details.reason).toBe('read-only');
    // Nothing happened to the device: the detach could not even be recorded, so it never started.
    expect(loopDevicesUnder(dataDir)).toEqual([attachment!.device!.path]);
    await berth.close();

    execFileSync('mount', ['-o', 'remount,rw,bind', dataDir]);
    const again = await open(dataDir);
    await again.detach({ volume: 'v' });
    expect(loopDevicesUnder(dataDir)).toEqual([]);
  });

  it('a disk that filled up while the volume was attached: the writes the kernel dropped are reported at the detach, which leaves the volume attached; the next detach goes on', async () => {
    // A real fault. The volume's file is on a 16 MiB tmpfs; while it is attached the disk fills
    // up, 8 MiB is written through the device (closed without fsync, as `dd` without
    // conv=fsync does), and the kernel's write-back of it into the file fails (ENOSPC): the
    // pages are dropped, the writer's close reports nothing. Space is freed again (log rotation),
    // so the detach's own bookkeeping can be written. Before, the detach reported a clean detach
    // of a volume missing what was written to it.
    const dataDir = tempDir();
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'berth-env-lost', dataDir]);
    mounts.push(dataDir);
    const berth = await open(dataDir);
    await berth.createVolume({ name: 'v', sizeBytes: 32 * MiB });
    const { attachment } = await berth.attach({ volume: 'v' });
    const device = attachment!.device!.path;
    const filler = fillDisk(dataDir);
    const writer = openSync(device, 'r+');
    try {
      const chunk = Buffer.alloc(MiB, 0x5a);
      for (let i = 0; i < 8; i += 1) writeSync(writer, chunk, 0, chunk.length, i * MiB);
    } finally {
      closeSync(writer);
    }
    rmSync(filler);

    const detach = await rejection(berth.detach({ volume: 'v' }));
    expect(detach.message).toMatch(/did not reach/);
    expect(JSON.stringify(detach.toJSON())).toContain('writeback-failed');
    expect(detach.hint).toMatch(/full or failing/);
    expect((await berth.getVolume('v')).status).toBe('in-use');
    expect((await berth.listAttachments({ volume: 'v' })).map((a) => a.status)).toEqual(['attached']);
    expect(loopDevicesUnder(dataDir)).toEqual([device]);
    expect(await berth.listOperations({ state: 'running' })).toEqual([]);

    // Told once: the next detach goes on.
    await berth.detach({ volume: 'v' });
    expect((await berth.getVolume('v')).status).toBe('available');
    expect(loopDevicesUnder(dataDir)).toEqual([]);
  });

  it('a full disk: lists work, a write says the disk is full; once space is freed the next command goes on (finding 8)', async () => {
    const dataDir = tempDir();
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'berth-env-full', dataDir]);
    mounts.push(dataDir);
    const setup = await open(dataDir);
    await setup.createVolume({ name: 'v', sizeBytes: 8 * MiB });
    await setup.close();
    const filler = fillDisk(dataDir);

    const berth = await open(dataDir);
    expect((await berth.listVolumes()).map((v) => v.name)).toEqual(['v']);
    const attach = await rejection(berth.attach({ volume: 'v' }));
    expect(attach.code).toBe('HOST_UNSUPPORTED');
    expect(attach.details.reason).toBe('disk-full');
    expect(attach.hint).toMatch(/df -h/);
    expect(loopDevicesUnder(dataDir)).toEqual([]);
    await berth.close();

    rmSync(filler);
    const again = await open(dataDir);
    expect(await again.listOperations({ state: 'running' })).toEqual([]);
    expect((await again.getVolume('v')).status).toBe('available');
    await again.attach({ volume: 'v' });
    await again.detach({ volume: 'v' });
    expect(loopDevicesUnder(dataDir)).toEqual([]);
  });
});
