import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostServices, type HostServices } from '@berth/host';
import { addFuseExport, removeFuseExport } from './fuse-export.js';
import { attachFuseLoop, detachFuseLoop, loopInfo, LOOP_DETACH_HELPER } from './fuse-loop.js';
import { unmountFuseUnder } from './fuse-mounts.js';
import { zEmptyReturn } from './qmp-schemas.js';
import { StorageDaemon } from './storage-daemon.js';

// detachFuseLoop on a real FUSE export of qemu-storage-daemon with a loop device another process
// holds open: `held-open`, and the device stays attached after the holder closes it (no autoclear
// left behind for the kernel to detach it at the last close, while berth's record still names it).

const MiB = 1024 * 1024;
const host = createHostServices();
let dir: string;
let daemon: StorageDaemon;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'berth-fuse-loop-'));
  daemon = new StorageDaemon({ dir: path.join(dir, 'qsd'), waiter: host.waiter, startTimeoutMs: 20_000 });
  await daemon.ensureRunning();
});

afterAll(async () => {
  try {
    await daemon.stop();
  } finally {
    await unmountFuseUnder(host, dir, 10_000);
    await rm(dir, { recursive: true, force: true });
  }
});

/** A child process (`sleep`) holding `device` open on its stdin. */
function holder(device: string): ChildProcess {
  const fd = openSync(device, 'r');
  try {
    return spawn('sleep', ['600'], { stdio: [fd, 'ignore', 'ignore'] });
  } finally {
    closeSync(fd);
  }
}

/** `host` with a runner that notes the name of every command it runs. */
function tapped(commands: string[]): HostServices {
  return { ...host, runner: { run: (file, args, options) => (commands.push(path.basename(file)), host.runner.run(file, args, options)) } };
}

async function release(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  // The kernel closes a process's files before its parent learns that it exited.
  await exited;
}

describe('detachFuseLoop on a held device (real qemu-storage-daemon, FUSE and loop)', () => {
  it('berth-loop-detach was built with the package (this machine has a C compiler)', () => {
    expect(LOOP_DETACH_HELPER).toMatch(/berth-loop-detach$/);
  });

  it.each([
    ['with berth-loop-detach', LOOP_DETACH_HELPER],
    ['without it (holders looked for first: the default)', undefined],
  ] as const)('%s: a held device is reported held-open and stays attached, autoclear off, after the holder closes it', async (_, helper) => {
    const name = helper === undefined ? 'plain' : 'native';
    const image = path.join(dir, `${name}.img`);
    await writeFile(image, '');
    await truncate(image, 4 * MiB);
    const mountpoint = path.join(dir, 'exports', `${name}.fuse`);
    const qmp = await daemon.connect({ timeoutMs: 10_000 });
    let device: string | undefined;
    let child: ChildProcess | undefined;
    try {
      await qmp.request('blockdev-add', { driver: 'file', 'node-name': name, filename: image }, zEmptyReturn);
      await addFuseExport(qmp, { id: `${name}-exp`, nodeName: name, mountpoint, writable: true });
      device = await attachFuseLoop(host.runner, mountpoint, { readOnly: false, timeoutMs: 10_000 });
      child = holder(device);
      await once(child, 'spawn');
      const options = { timeoutMs: 10_000, holderGraceMs: 300, ...(helper === undefined ? {} : { helper }) };
      const commands: string[] = [];
      expect(await detachFuseLoop(tapped(commands), device, mountpoint, options)).toBe('held-open');
      // The kernel answered "held" (berth-loop-detach), or fuser saw the holder before any losetup --detach.
      expect(commands).toContain(helper === undefined ? 'fuser' : 'berth-loop-detach');
      expect(await loopInfo(host.fs, device)).toMatchObject({ backingFile: mountpoint, autoclear: false });
      await release(child);
      // Closed by its last opener: a device left with autoclear would be gone now.
      expect(await loopInfo(host.fs, device)).toMatchObject({ backingFile: mountpoint, autoclear: false });
      // Nobody holds it now: the detach goes through.
      expect(await detachFuseLoop(host, device, mountpoint, options)).toBe('detached');
      expect((await loopInfo(host.fs, device))?.backingFile).toBeUndefined();
      device = undefined;
      await removeFuseExport(qmp, `${name}-exp`, { timeoutMs: 10_000 });
      await qmp.request('blockdev-del', { 'node-name': name }, zEmptyReturn);
    } finally {
      if (child) await release(child);
      if (device) await host.runner.run('losetup', ['--detach', device], { reject: false });
      qmp.close();
    }
  });

  it('without berth-loop-detach: a number detached by hand and bound to another file during the holder check is left alone', async () => {
    const image = path.join(dir, 'rebound.img');
    await writeFile(image, '');
    await truncate(image, 4 * MiB);
    const elsewhere = path.join(dir, 'elsewhere.img');
    await writeFile(elsewhere, '');
    await truncate(elsewhere, 4 * MiB);
    const mountpoint = path.join(dir, 'exports', 'rebound.fuse');
    const qmp = await daemon.connect({ timeoutMs: 10_000 });
    let device: string | undefined;
    try {
      await qmp.request('blockdev-add', { driver: 'file', 'node-name': 'rebound', filename: image }, zEmptyReturn);
      await addFuseExport(qmp, { id: 'rebound-exp', nodeName: 'rebound', mountpoint, writable: true });
      device = await attachFuseLoop(host.runner, mountpoint, { readOnly: false, timeoutMs: 10_000 });
      const number = device;
      let rebound = false;
      // While fuser walks /proc, someone detaches the device and binds its number to another file.
      const racing: HostServices = {
        ...host,
        runner: {
          async run(file, args, options) {
            if (!rebound && path.basename(file) === 'fuser') {
              rebound = true;
              await host.runner.run('losetup', ['--detach', number], { timeoutMs: 10_000 });
              await host.runner.run('losetup', [number, elsewhere], { timeoutMs: 10_000 });
            }
            return host.runner.run(file, args, options);
          },
        },
      };
      expect(await detachFuseLoop(racing, number, mountpoint, { timeoutMs: 10_000, holderGraceMs: 300 })).toBe('not-attached');
      expect(rebound).toBe(true);
      expect((await loopInfo(host.fs, number))?.backingFile).toBe(elsewhere);
      await removeFuseExport(qmp, 'rebound-exp', { timeoutMs: 10_000 });
      await qmp.request('blockdev-del', { 'node-name': 'rebound' }, zEmptyReturn);
    } finally {
      if (device) await host.runner.run('losetup', ['--detach', device], { reject: false });
      qmp.close();
    }
  });
});
