import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostServices, daemonStatus } from '@berth/host';
import { addFuseExport, listExports, removeFuseExport } from './fuse-export.js';
import { attachFuseLoop, detachFuseLoop, flushLoop, loopInfo } from './fuse-loop.js';
import { fuseMountsUnder, unmountFuseUnder } from './fuse-mounts.js';
import { StorageDaemon } from './storage-daemon.js';
import { zEmptyReturn } from './qmp-schemas.js';

// A real qemu-storage-daemon (7.2 on the build machine): started and supervised through
// @berth/host, driven over QMP, a plain file node exported through FUSE with a loop device on it
// (no direct I/O), bytes checked in the image file; then a SIGKILL and the clean-up of what it left.

const MiB = 1024 * 1024;
const host = createHostServices();
let dir: string;
let daemon: StorageDaemon;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'berth-qsd-'));
  daemon = new StorageDaemon({ dir: path.join(dir, 'qsd'), waiter: host.waiter, startTimeoutMs: 20_000 });
});

afterAll(async () => {
  try {
    await daemon.stop();
  } finally {
    await unmountFuseUnder(host, dir, 10_000);
    await rm(dir, { recursive: true, force: true });
  }
});

function writeAt(device: string, data: Buffer, offset: number): void {
  const fd = openSync(device, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function readAt(file: string, length: number, offset: number): Buffer {
  const out = Buffer.alloc(length);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, out, 0, length, offset);
  } finally {
    closeSync(fd);
  }
  return out;
}

describe('StorageDaemon (real qemu-storage-daemon)', () => {
  it('starts once, answers QMP, and is found running by a second look', async () => {
    const first = await daemon.ensureRunning();
    expect(first.started).toBe(true);
    const again = await daemon.ensureRunning();
    expect(again).toEqual({ pid: first.pid, started: false });
    expect((await stat(daemon.pidFile)).isFile()).toBe(true);
    const qmp = await daemon.connect({ timeoutMs: 5_000 });
    try {
      expect(qmp.greeting?.QMP.version.qemu.major).toBeGreaterThanOrEqual(7);
      expect(await listExports(qmp)).toEqual([]);
    } finally {
      qmp.close();
    }
  });

  it('exports a file node through FUSE, with a loop device on it that writes the right bytes', async () => {
    const image = path.join(dir, 'disk.img');
    await (await import('node:fs/promises')).writeFile(image, '');
    await truncate(image, 16 * MiB);
    const mountpoint = path.join(dir, 'exports', 'disk.fuse');
    const qmp = await daemon.connect();
    let device: string | undefined;
    try {
      await qmp.request('blockdev-add', { driver: 'file', 'node-name': 'disk', filename: image, cache: { direct: false } }, zEmptyReturn);
      await addFuseExport(qmp, { id: 'disk-exp', nodeName: 'disk', mountpoint, writable: true });
      expect((await fuseMountsUnder(host.fs, dir)).map((m) => m.target)).toEqual([mountpoint]);
      device = await attachFuseLoop(host.runner, mountpoint, { readOnly: false, timeoutMs: 10_000 });
      const info = await loopInfo(host.fs, device);
      expect(info).toMatchObject({ backingFile: mountpoint, directIo: false, readOnly: false, sizeBytes: 16 * MiB });
      expect(info?.rdev).toMatch(/^7:\d+$/);
      const pattern = randomBytes(3 * MiB + 4096);
      writeAt(device, pattern, 5 * MiB - 512);
      await flushLoop(host.runner, device, { timeoutMs: 10_000 });
      expect(readAt(image, pattern.length, 5 * MiB - 512).equals(pattern)).toBe(true);
      expect(await detachFuseLoop(host, device, mountpoint, { timeoutMs: 10_000 })).toBe('detached');
      expect(await detachFuseLoop(host, device, mountpoint, { timeoutMs: 10_000 })).toBe('not-attached');
      device = undefined;
      await removeFuseExport(qmp, 'disk-exp', { timeoutMs: 10_000 });
      expect(await fuseMountsUnder(host.fs, dir)).toEqual([]);
      await removeFuseExport(qmp, 'disk-exp', { timeoutMs: 10_000 });
      await qmp.request('blockdev-del', { 'node-name': 'disk' }, zEmptyReturn);
    } finally {
      if (device) await host.runner.run('losetup', ['--detach', device], { reject: false });
      qmp.close();
    }
  });

  it('after a SIGKILL: seen as not running, its dead FUSE mounts unmounted, started anew', async () => {
    const image = path.join(dir, 'gone.img');
    await (await import('node:fs/promises')).writeFile(image, '');
    await truncate(image, 4 * MiB);
    const mountpoint = path.join(dir, 'exports', 'gone.fuse');
    const qmp = await daemon.connect();
    await qmp.request('blockdev-add', { driver: 'file', 'node-name': 'gone', filename: image }, zEmptyReturn);
    await addFuseExport(qmp, { id: 'gone-exp', nodeName: 'gone', mountpoint, writable: true });
    const { pid } = await daemon.ensureRunning();
    process.kill(pid, 'SIGKILL');
    await qmp.closed;
    expect(qmp.isClosed).toBe(true);
    await host.waiter.waitUntil('/proc', async () => ((await daemonStatus(daemon.pidFile)).running ? undefined : true), { timeoutMs: 10_000 });
    expect((await fuseMountsUnder(host.fs, dir)).map((m) => m.target)).toEqual([mountpoint]);
    expect(await unmountFuseUnder(host, dir, 10_000)).toEqual([mountpoint]);
    expect(await fuseMountsUnder(host.fs, dir)).toEqual([]);
    const restarted = await daemon.ensureRunning();
    expect(restarted.started).toBe(true);
    expect(restarted.pid).not.toBe(pid);
    const stopped = await daemon.stop();
    expect(stopped).toMatchObject({ wasRunning: true, killed: false });
    expect((await daemon.stop()).wasRunning).toBe(false);
    expect(await readFile(daemon.logFile, 'utf8')).toContain('--- berth: starting qemu-storage-daemon');
  });
});
