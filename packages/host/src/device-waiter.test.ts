import { mkdir, mkdtemp, rm, rmdir, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createDeviceWaiter, deviceWaiterHandles } from './device-waiter.js';
import { WaitTimeoutError } from './errors.js';
import { createHostFs } from './host-fs.js';
import type { DeviceWaiter, HostFs } from './types.js';

let root: string;
let fs: HostFs;
let waiter: DeviceWaiter;
const timers: NodeJS.Timeout[] = [];

/** Run `action` after `ms`: plays the kernel/udev making a device appear later. */
function later(ms: number, action: () => Promise<unknown>): void {
  timers.push(setTimeout(() => void action(), ms));
}

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'berth-waiter-'));
  fs = createHostFs(root);
  waiter = createDeviceWaiter(fs);
});
afterEach(async () => {
  for (const t of timers.splice(0)) clearTimeout(t);
  await rm(root, { recursive: true, force: true });
  expect(deviceWaiterHandles()).toEqual({ watchers: 0, timers: 0 });
});

describe('waitForPath', () => {
  it('resolves at once when the path is there', async () => {
    await mkdir(path.join(root, 'dev'));
    await writeFile(path.join(root, 'dev/sdb'), '');
    await waiter.waitForPath('/dev/sdb', { timeoutMs: 1000 });
  });

  it('wakes when the path is created, well before the deadline', async () => {
    await mkdir(path.join(root, 'dev'));
    later(30, () => writeFile(path.join(root, 'dev/sdb'), ''));
    const started = performance.now();
    await waiter.waitForPath('/dev/sdb', { timeoutMs: 5000 });
    expect(performance.now() - started).toBeLessThan(4000);
    expect(await fs.exists('/dev/sdb')).toBe(true);
  });

  it('wakes on events alone, moving its watch down as missing directories appear', async () => {
    // A poll this slow never fires during the test: only inotify events can end the wait.
    later(20, async () => {
      await mkdir(path.join(root, 'dev/disk/by-path'), { recursive: true });
      await writeFile(path.join(root, 'dev/sdb'), '');
      later(20, () => symlink('../../sdb', path.join(root, 'dev/disk/by-path/ip-lun-1')));
    });
    await mkdir(path.join(root, 'dev'));
    const started = performance.now();
    await waiter.waitForPath('/dev/disk/by-path/ip-lun-1', { timeoutMs: 5000, pollMs: 60_000 });
    expect(performance.now() - started).toBeLessThan(4000);
    expect(await fs.realpath('/dev/disk/by-path/ip-lun-1')).toBe('/dev/sdb');
  });

  it('finds by polling what no event announces, as in sysfs', async () => {
    // The state lives outside the watched directory, so no inotify event can report it.
    let attached = false;
    later(30, async () => {
      attached = true;
    });
    const found = await waiter.waitUntil('/sys/block', async () => (attached ? 'sdc' : undefined), { timeoutMs: 5000, pollMs: 20 });
    expect(found).toBe('sdc');
  });

  it('follows a watched directory that is replaced', async () => {
    await mkdir(path.join(root, 'sys/block'), { recursive: true });
    later(30, async () => {
      await rmdir(path.join(root, 'sys/block'));
      await mkdir(path.join(root, 'sys/block'));
      await writeFile(path.join(root, 'sys/block/sdc'), '');
    });
    await waiter.waitForPath('/sys/block/sdc', { timeoutMs: 5000, pollMs: 20 });
  });

  it('rejects with WaitTimeoutError at the deadline', async () => {
    const error = await waiter.waitForPath('/dev/sdq', { timeoutMs: 60 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(WaitTimeoutError);
    expect(error).toMatchObject({ what: '/dev/sdq to appear', timeoutMs: 60 });
    expect((error as Error).message).toBe('timed out after 60 ms waiting for /dev/sdq to appear');
  });

  it('names what it waited for when told', async () => {
    await expect(waiter.waitForPath('/dev/sdq', { timeoutMs: 10, what: 'LUN 1 of iqn.x' })).rejects.toThrow(
      'waiting for LUN 1 of iqn.x',
    );
  });

  it('rejects with the reason of its signal', async () => {
    const controller = new AbortController();
    later(30, async () => controller.abort());
    const error = await waiter.waitForPath('/dev/sdq', { timeoutMs: 5000, signal: controller.signal }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DOMException);
    expect((error as DOMException).name).toBe('AbortError');

    const given = new Error('operation cancelled');
    await expect(waiter.waitForPath('/dev/sdq', { timeoutMs: 5000, signal: AbortSignal.abort(given) })).rejects.toBe(given);
  });

  it('refuses a relative path', async () => {
    await expect(waiter.waitForPath('dev/sdq', { timeoutMs: 100 })).rejects.toThrow(/absolute/);
  });
});

describe('waitForGone', () => {
  it('wakes when the path is removed', async () => {
    await fs.symlink('../sdb', '/dev/berth/vol-1');
    await writeFile(path.join(root, 'dev/sdb'), '');
    later(30, () => fs.unlink('/dev/berth/vol-1'));
    const started = performance.now();
    await waiter.waitForGone('/dev/berth/vol-1', { timeoutMs: 5000, pollMs: 60_000 });
    expect(performance.now() - started).toBeLessThan(4000);
    expect(await fs.stat('/dev/berth/vol-1')).toBeUndefined();
  });

  it('counts a link to a device that is gone as gone', async () => {
    await fs.mkdir('/dev');
    await writeFile(path.join(root, 'dev/sdb'), '');
    await fs.symlink('../../sdb', '/dev/disk/by-id/wwn-0x1');
    later(30, () => fs.unlink('/dev/sdb'));
    await waiter.waitForGone('/dev/disk/by-id/wwn-0x1', { timeoutMs: 5000 });
  });

  it('times out while the path stays', async () => {
    await fs.mkdir('/sys/block/sdb');
    await expect(waiter.waitForGone('/sys/block/sdb', { timeoutMs: 50 })).rejects.toMatchObject({
      name: 'WaitTimeoutError',
      what: '/sys/block/sdb to disappear',
    });
  });
});

describe('waitUntil', () => {
  it('resolves with the first value the probe finds', async () => {
    await fs.mkdir('/sys/class/scsi_host');
    later(30, () => fs.mkdir('/sys/class/scsi_host/host3'));
    later(60, () => fs.mkdir('/sys/class/scsi_host/host4'));
    const hosts = await waiter.waitUntil(
      '/sys/class/scsi_host',
      async () => {
        const entries = await fs.readdir('/sys/class/scsi_host');
        return entries.length >= 2 ? entries.sort() : undefined;
      },
      { timeoutMs: 5000 },
    );
    expect(hosts).toEqual(['host3', 'host4']);
  });

  it('watches a directory that does not exist yet', async () => {
    later(30, async () => {
      await fs.mkdir('/sys/class/iscsi_session/session1');
    });
    const session = await waiter.waitUntil(
      '/sys/class/iscsi_session',
      async () => (await fs.readdir('/sys/class/iscsi_session'))[0],
      { timeoutMs: 5000, pollMs: 60_000 },
    );
    expect(session).toBe('session1');
  });

  it('never runs two probes at once', async () => {
    await fs.mkdir('/sys/block');
    let running = 0;
    let most = 0;
    let calls = 0;
    // Many events and a fast poll while each probe takes a while.
    for (let i = 0; i < 20; i++) later(i * 5, () => fs.mkdir(`/sys/block/sd${String.fromCharCode(97 + i)}`));
    const result = await waiter.waitUntil(
      '/sys/block',
      async () => {
        running++;
        most = Math.max(most, running);
        calls++;
        await new Promise((resolve) => setTimeout(resolve, 15));
        running--;
        return (await fs.readdir('/sys/block')).length >= 20 ? calls : undefined;
      },
      { timeoutMs: 5000, pollMs: 1 },
    );
    expect(result).toBeGreaterThan(1);
    expect(most).toBe(1);
  });

  it('rejects with the error of a failing probe', async () => {
    const failure = new Error('iscsiadm broke');
    await expect(
      waiter.waitUntil('/sys', async () => {
        throw failure;
      }, { timeoutMs: 5000 }),
    ).rejects.toBe(failure);
  });

  it('times out with a WaitTimeoutError', async () => {
    await expect(waiter.waitUntil('/sys', async () => undefined, { timeoutMs: 40 })).rejects.toBeInstanceOf(WaitTimeoutError);
  });
});

describe('handles', () => {
  it('leaves no watcher or timer behind after many waits of every outcome', async () => {
    await fs.mkdir('/dev');
    await writeFile(path.join(root, 'dev/here'), '');
    const waits: Promise<unknown>[] = [];
    for (let i = 0; i < 30; i++) {
      const controller = new AbortController();
      waits.push(waiter.waitForPath('/dev/here', { timeoutMs: 1000 }));
      waits.push(waiter.waitForPath(`/dev/missing-${i}`, { timeoutMs: 20 }).catch(() => undefined));
      waits.push(waiter.waitForPath(`/dev/later-${i}`, { timeoutMs: 5000 }));
      waits.push(waiter.waitForGone(`/dev/missing-${i}`, { timeoutMs: 1000 }));
      waits.push(waiter.waitForPath(`/dev/nested/${i}/x`, { timeoutMs: 5000, signal: controller.signal }).catch(() => undefined));
      later(10, async () => controller.abort());
      later(15, () => writeFile(path.join(root, `dev/later-${i}`), ''));
    }
    // Timers start at once; watchers a moment later (the watched directory is looked up first).
    expect(deviceWaiterHandles().timers).toBeGreaterThan(0);
    await Promise.all(waits);
    expect(deviceWaiterHandles()).toEqual({ watchers: 0, timers: 0 });
  });
});
