import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, open, readFile, readlink, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHostFs } from './host-fs.js';
import type { HostFs } from './types.js';

let root: string;
let fs: HostFs;

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'berth-hostfs-'));
  fs = createHostFs(root);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('resolve and toHostPath', () => {
  it('maps host paths under the root and back', () => {
    expect(fs.resolve('/sys/block/sda')).toBe(path.join(root, 'sys/block/sda'));
    expect(fs.resolve('/dev//disk/./by-path/../by-id')).toBe(path.join(root, 'dev/disk/by-id'));
    expect(fs.resolve('/')).toBe(root);
    expect(fs.toHostPath(path.join(root, 'dev/sdb'))).toBe('/dev/sdb');
    expect(fs.toHostPath(root)).toBe('/');
  });

  it('refuses relative paths, escapes from the root and real paths outside it', () => {
    expect(() => fs.resolve('dev/sda')).toThrow(/absolute/);
    expect(() => fs.resolve('/dev/../../etc/passwd')).toThrow(/escapes/);
    expect(() => fs.resolve('/..')).toThrow(/escapes/);
    expect(() => fs.toHostPath('/etc/passwd')).toThrow(/not under/);
    expect(() => fs.toHostPath(`${root}-other/x`)).toThrow(/not under/);
  });

  it('is the identity at /', () => {
    const slash = createHostFs();
    expect(slash.root).toBe('/');
    expect(slash.resolve('/dev/sda')).toBe('/dev/sda');
    expect(slash.toHostPath('/dev/sda')).toBe('/dev/sda');
  });
});

describe('files and directories', () => {
  it('writes, reads and removes files', async () => {
    await fs.mkdir('/etc/iscsi');
    await fs.writeFile('/etc/iscsi/initiatorname.iscsi', 'InitiatorName=iqn.2004-10.com.example:host\n', { mode: 0o600 });
    expect(await readFile(path.join(root, 'etc/iscsi/initiatorname.iscsi'), 'utf8')).toBe('InitiatorName=iqn.2004-10.com.example:host\n');
    expect(await fs.readFile('/etc/iscsi/initiatorname.iscsi')).toContain('iqn.2004-10');
    expect(await fs.exists('/etc/iscsi/initiatorname.iscsi')).toBe(true);
    expect(await fs.stat('/etc/iscsi/initiatorname.iscsi')).toMatchObject({ isFile: true, isDirectory: false, size: 43 });
    await fs.unlink('/etc/iscsi/initiatorname.iscsi');
    await fs.unlink('/etc/iscsi/initiatorname.iscsi');
    expect(await fs.readFileIfExists('/etc/iscsi/initiatorname.iscsi')).toBeUndefined();
    expect(await fs.exists('/etc/iscsi/initiatorname.iscsi')).toBe(false);
    expect(await fs.stat('/etc/iscsi/initiatorname.iscsi')).toBeUndefined();
  });

  it('does not create parents when writing, like a sysfs attribute of a missing host', async () => {
    await expect(fs.writeFile('/sys/class/scsi_host/host3/scan', '- - -')).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await fs.exists('/sys/class/scsi_host')).toBe(false);
  });

  it('lists directories, [] when missing', async () => {
    await fs.mkdir('/sys/block/sda');
    await fs.mkdir('/sys/block/sdb');
    expect((await fs.readdir('/sys/block')).sort()).toEqual(['sda', 'sdb']);
    expect(await fs.readdir('/sys/class/iscsi_host')).toEqual([]);
  });

  it('removes trees without complaint when gone, but never the root', async () => {
    await fs.mkdir('/var/lib/berth/a');
    await fs.rm('/var/lib/berth');
    await fs.rm('/var/lib/berth');
    expect(await readdir(path.join(root, 'var/lib'))).toEqual([]);
    await expect(fs.rm('/')).rejects.toThrow(/root/);
  });
});

describe('symlinks', () => {
  it('creates a link with its parents and replaces it atomically', async () => {
    await fs.symlink('/dev/sdb', '/dev/berth/vol-1');
    expect(await readlink(path.join(root, 'dev/berth/vol-1'))).toBe('/dev/sdb');
    expect(await fs.readlink('/dev/berth/vol-1')).toBe('/dev/sdb');
    await fs.symlink('/dev/sdc', '/dev/berth/vol-1');
    expect(await fs.readlink('/dev/berth/vol-1')).toBe('/dev/sdc');
    // No temporary link is left beside it.
    expect(await readdir(path.join(root, 'dev/berth'))).toEqual(['vol-1']);
    expect(await fs.stat('/dev/berth/vol-1')).toMatchObject({ isSymbolicLink: true, isFile: false });
  });

  it('removes the temporary link a killed process left beside a link (publish or unpublish), and a live one\'s never', async () => {
    // A process that has exited: its pid is gone (reused pids keep their link: cautious).
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const deadPid = Number(dead.stdout);
    await fs.symlink('/dev/sdb', '/dev/berth/vol-1');
    const dir = path.join(root, 'dev/berth');
    await symlink('/dev/sdb', path.join(dir, `vol-1.berth-${deadPid}-0a1b2c3d`));
    await symlink('/dev/sdb', path.join(dir, `vol-1.berth-${process.ppid}-0a1b2c3d`));
    await symlink('/dev/sdb', path.join(dir, `vol-2.berth-${deadPid}-0a1b2c3d`));
    await fs.symlink('/dev/sdc', '/dev/berth/vol-1');
    expect((await readdir(dir)).sort()).toEqual(['vol-1', `vol-1.berth-${process.ppid}-0a1b2c3d`, `vol-2.berth-${deadPid}-0a1b2c3d`]);
    // Unpublish of the other volume drops its dead temporary link too.
    await fs.unlink('/dev/berth/vol-2');
    expect((await readdir(dir)).sort()).toEqual(['vol-1', `vol-1.berth-${process.ppid}-0a1b2c3d`]);
  });

  it('reads undefined for a path that is not a link', async () => {
    await fs.mkdir('/dev');
    await writeFile(path.join(root, 'dev/sda'), '');
    expect(await fs.readlink('/dev/sda')).toBeUndefined();
    expect(await fs.readlink('/dev/missing')).toBeUndefined();
  });

  it('resolves absolute and relative links under the root', async () => {
    await mkdir(path.join(root, 'dev/disk/by-path'), { recursive: true });
    await mkdir(path.join(root, 'dev/mapper'), { recursive: true });
    await writeFile(path.join(root, 'dev/sdb'), '');
    await writeFile(path.join(root, 'dev/dm-0'), '');
    // As udev makes them: relative to the link's directory.
    await symlink('../../sdb', path.join(root, 'dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.x-lun-1'));
    await symlink('../dm-0', path.join(root, 'dev/mapper/mpatha'));
    // As berth's publish makes them: an absolute host path, pointing at a link in turn.
    await fs.symlink('/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.x-lun-1', '/dev/berth/vol-1');
    await fs.symlink('/dev/mapper/mpatha', '/dev/berth/vol-2');

    expect(await fs.realpath('/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.x-lun-1')).toBe('/dev/sdb');
    expect(await fs.realpath('/dev/berth/vol-1')).toBe('/dev/sdb');
    expect(await fs.realpath('/dev/berth/vol-2')).toBe('/dev/dm-0');
    expect(await fs.realpath('/dev/sdb')).toBe('/dev/sdb');
    expect(await fs.exists('/dev/berth/vol-1')).toBe(true);
  });

  it('resolves a link through a linked directory, as /sys/block/sdX is', async () => {
    await mkdir(path.join(root, 'sys/devices/platform/host3/target3:0:0/3:0:0:1/block/sdb'), { recursive: true });
    await mkdir(path.join(root, 'sys/block'), { recursive: true });
    await symlink('../devices/platform/host3/target3:0:0/3:0:0:1/block/sdb', path.join(root, 'sys/block/sdb'));
    await symlink('../../../3:0:0:1', path.join(root, 'sys/devices/platform/host3/target3:0:0/3:0:0:1/block/sdb/device'));
    expect(await fs.realpath('/sys/block/sdb/device')).toBe('/sys/devices/platform/host3/target3:0:0/3:0:0:1');
  });

  it('treats dangling and looping links as missing for exists, and realpath throws', async () => {
    await fs.symlink('/dev/sdz', '/dev/berth/gone');
    await fs.symlink('/dev/berth/loop-b', '/dev/berth/loop-a');
    await fs.symlink('/dev/berth/loop-a', '/dev/berth/loop-b');
    expect(await fs.exists('/dev/berth/gone')).toBe(false);
    expect(await fs.stat('/dev/berth/gone')).toMatchObject({ isSymbolicLink: true });
    expect(await fs.exists('/dev/berth/loop-a')).toBe(false);
    await expect(fs.realpath('/dev/berth/gone')).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(fs.realpath('/dev/berth/loop-a')).rejects.toMatchObject({ code: 'ELOOP' });
  });

  it('treats a path through a file as missing (ENOTDIR), whether a link or the file is on the way', async () => {
    await fs.mkdir('/sys/block');
    await fs.writeFile('/sys/block/size', '8');
    await fs.symlink('/sys/block/size', '/sys/block/sdq');
    for (const through of ['/sys/block/size/device', '/sys/block/sdq/device']) {
      expect(await fs.exists(through)).toBe(false);
      await expect(fs.realpath(through)).rejects.toMatchObject({ code: 'ENOTDIR' });
    }
    expect(await fs.realpath('/sys/block/sdq')).toBe('/sys/block/size');
  });

  it('a link another process removes or replaces while it is being resolved: missing or followed, never an error', async () => {
    // /sys/block/sdX goes when the kernel deletes the disk, at any moment: between the resolver's
    // lstat of the link and its readlink. A child process flips the link (gone, a link, a plain
    // directory) as fast as it can while this one resolves it; on the old resolver the readlink
    // then threw ENOENT/EINVAL out of exists(), which a detach's "wait for the disk to go" took as
    // a failure (the recovery of a killed attach left the volume in error).
    await mkdir(path.join(root, 'sys/devices/sdz'), { recursive: true });
    await mkdir(path.join(root, 'sys/block'), { recursive: true });
    const link = path.join(root, 'sys/block/sdz');
    const flipper = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('node:fs'); const [link] = process.argv.slice(1);
         process.stdout.write('ready\\n');
         for (let i = 0; ; i++) {
           try { fs.symlinkSync('../devices/sdz', link); } catch {}
           try { fs.unlinkSync(link); } catch {}
           if (i % 3 === 0) { try { fs.mkdirSync(link); fs.rmdirSync(link); } catch {} }
         }`,
        link,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        flipper.stdout.once('data', () => resolve());
        flipper.once('error', reject);
      });
      const seen = new Set<boolean>();
      for (let i = 0; i < 30_000; i++) seen.add(await fs.exists('/sys/block/sdz'));
      // Both answers came up: the link really was changing under the resolver.
      expect([...seen].sort()).toEqual([false, true]);
    } finally {
      flipper.kill('SIGKILL');
    }
  });

  it('keeps .. in a link target inside the root', async () => {
    await mkdir(path.join(root, 'dev'), { recursive: true });
    await writeFile(path.join(root, 'dev/sda'), '');
    await symlink('../../../../../../dev/sda', path.join(root, 'dev/up'));
    expect(await fs.realpath('/dev/up')).toBe('/dev/sda');
  });
});

describe('at /', () => {
  it('realpath follows the machine links', async () => {
    const slash = createHostFs('/');
    const link = path.join(root, 'link');
    await symlink(path.join(root, 'target'), link);
    await writeFile(path.join(root, 'target'), 'x');
    expect(await slash.realpath(link)).toBe(path.join(await import('node:fs/promises').then((m) => m.realpath(root)), 'target'));
    expect(await slash.stat('/dev/null')).toMatchObject({ isFile: false, isBlockDevice: false });
  });
});

describe('writeFile on a FIFO (a write-only attribute something reacts to)', () => {
  it('delivers each write to the reader and fails at once when nobody reads', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-fifo-'));
    try {
      const fifo = path.join(dir, 'scan');
      execFileSync('mkfifo', [fifo]);
      const fs = createHostFs(dir);
      await expect(fs.writeFile('/scan', '0 0 1')).rejects.toMatchObject({ code: 'ENXIO' });
      const reader = await open(fifo, 'r+');
      try {
        await fs.writeFile('/scan', '0 0 1\n');
        await fs.writeFile('/scan', '0 0 2\n');
        const buf = Buffer.alloc(64);
        const { bytesRead } = await reader.read(buf, 0, 64, null);
        expect(buf.subarray(0, bytesRead).toString()).toBe('0 0 1\n0 0 2\n');
      } finally {
        await reader.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
