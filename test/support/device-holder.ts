import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { expect } from 'vitest';
import type { AttachRequest, BerthService } from '@berth/core';
import { linkTarget, rejection } from './test-berth.js';

// Real holders of a device for the "a held device is not detached" tests: a process with the
// device open, a mount of a filesystem on it. Each returns a `release` that is safe to call twice
// (tests call it in `finally` as well as before the detach that must succeed).

/** A `sleep` with `device` open on its stdin, as `sleep 1000 < /dev/berth/<id>` would. */
export function holdOpen(device: string): { pid: number; release(): Promise<void> } {
  const fd = openSync(device, 'r');
  let child: ChildProcess | undefined;
  try {
    child = spawn('sleep', ['1000'], { stdio: [fd, 'ignore', 'ignore'] });
  } finally {
    closeSync(fd);
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    pid: child.pid!,
    async release() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** `mkfs.ext4` on `device` (unless `keep`: its filesystem as it is), mounted on a new temporary directory. */
export function mountFresh(device: string, options: { keep?: boolean } = {}): { dir: string; release(): void } {
  if (options.keep !== true) {
    const mkfs = spawnSync('mkfs.ext4', ['-q', '-F', device], { encoding: 'utf8' });
    if (mkfs.status !== 0) throw new Error(`mkfs.ext4 ${device}: ${mkfs.stderr}`);
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'berth-held-mnt-'));
  const mount = spawnSync('mount', [device, dir], { encoding: 'utf8' });
  if (mount.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`mount ${device}: ${mount.stderr}`);
  }
  let mounted = true;
  return {
    dir,
    release() {
      if (mounted) {
        const umount = spawnSync('umount', [dir], { encoding: 'utf8' });
        if (umount.status !== 0) spawnSync('umount', ['-l', dir]);
        mounted = false;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The "a held device is not detached" story for one transport: attach `volume`, mount a fresh
 * filesystem on its link and write a file, detach → refused `CONFLICT` busy untouched naming the
 * mount, the attachment still `attached`, the link as it was, the filesystem still writable;
 * unmount, hold the device open with a process, detach → refused naming it; let go, the data is
 * still on the disk; detach → it goes, the link with it. `leftovers` is checked empty at the end.
 * Every holder is released even when an expectation fails.
 */
export async function detachOfHeldDevice(berth: BerthService, attach: AttachRequest, expectNothingLeft: () => void | Promise<void>): Promise<void> {
  const volumeName = attach.volume;
  const { attachment } = await berth.attach(attach);
  const volume = await berth.getVolume(volumeName);
  const link = `/dev/berth/${volume.id}`;
  const target = linkTarget(link);
  expect(target).toBeDefined();
  const stillAttached = async (): Promise<void> => {
    expect(await berth.listAttachments({ volume: volumeName })).toEqual([expect.objectContaining({ id: attachment!.id, status: 'attached' })]);
    expect((await berth.getVolume(volumeName)).status).toBe('in-use');
    expect(linkTarget(link)).toBe(target);
  };
  const mount = mountFresh(link);
  let holder: ReturnType<typeof holdOpen> | undefined;
  try {
    writeFileSync(path.join(mount.dir, 'data'), 'kept\n');
    const refused = await rejection(berth.detach({ volume: volumeName }));
    expect(refused.code).toBe('CONFLICT');
    expect(refused.details).toMatchObject({ reason: 'busy', untouched: true });
    expect(refused.message).toContain(`mounted at ${mount.dir}`);
    await stillAttached();
    // The filesystem still works: no I/O errors under the mount.
    writeFileSync(path.join(mount.dir, 'after'), 'written after the refusal\n');
    mount.release();

    holder = holdOpen(link);
    const busy = await rejection(berth.detach({ volume: volumeName }));
    expect(busy.code).toBe('CONFLICT');
    expect(busy.details).toMatchObject({ reason: 'busy', untouched: true });
    expect(busy.message).toContain(`process ${holder.pid} (sleep) has it open`);
    await stillAttached();
    await holder.release();

    // What was written through the mount is on the disk.
    const again = mountFresh(link, { keep: true });
    try {
      expect(readFileSync(path.join(again.dir, 'data'), 'utf8')).toBe('kept\n');
      expect(readFileSync(path.join(again.dir, 'after'), 'utf8')).toBe('written after the refusal\n');
    } finally {
      again.release();
    }
    await berth.detach({ volume: volumeName });
    expect((await berth.getVolume(volumeName)).status).toBe('available');
    expect(linkTarget(link)).toBeUndefined();
    await berth.deleteVolume(volumeName);
    await expectNothingLeft();
  } finally {
    await holder?.release();
    mount.release();
  }
}
