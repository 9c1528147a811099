import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, lstatSync, readlinkSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BerthError, silentLogger, type BerthService } from '@berth/core';
import { stopManagedTgtd } from '@berth/backend-tgt';
import { createHostServices, daemonStatus } from '@berth/host';
import { StorageDaemon, unmountFuseUnder } from '@berth/qemu';
import { openBerth } from '@berth/runtime';
import { writeAt } from '../support/host-state.js';
import { berthLinkExists, loopDevicesUnder } from '../support/loop-devices.js';
import { freeControlPort, freePort } from '../support/ports.js';
import { detachOfHeldDevice } from '../support/device-holder.js';
import { linkTarget } from '../support/test-berth.js';

// berth on this machine as a user runs it, without --simulate: the kernel has no iSCSI initiator,
// so a tgt volume attaches through iscsi-user by default — a real /dev/loopN whose bytes reach
// tgtd's LUN file. A SIGKILLed qemu-storage-daemon is noticed by the next command and restored;
// `--transport iscsi` forces the kernel transport, which fails clearly here and leaves nothing.

const MiB = 1024 * 1024;

/** Where `link` leads, or undefined when it went away meanwhile. */
function readlinkOrNone(link: string): string | undefined {
  try {
    return readlinkSync(link);
  } catch {
    return undefined;
  }
}
const host = createHostServices();
let dataDir: string;
let controlPort: number;
let berth: BerthService;
// The kernel transport's target lock directory (`@berth/iscsi`), which its attempt below makes on
// this machine's /run: removed again when this file made it.
const TARGET_FILES = '/run/berth/iscsi';
const hadTargetFiles = existsSync('/run/berth');

beforeAll(async () => {
  dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-iu-rt-')));
  controlPort = await freeControlPort();
  const portals = [`127.0.0.1:${await freePort()}`];
  writeFileSync(path.join(dataDir, 'config.json'), JSON.stringify({ defaultBackend: 'tgt', pluginOptions: { '@berth/backend-tgt': { portals, controlPort } } }));
  berth = await openBerth({ dataDir, logger: silentLogger });
});

afterAll(async () => {
  await berth?.close().catch(() => undefined);
  for (const device of loopDevicesUnder(dataDir)) await host.runner.run('losetup', ['--detach', device], { reject: false });
  await new StorageDaemon({ dir: path.join(dataDir, 'driver-iscsi-user', 'qsd'), waiter: host.waiter }).stop().catch(() => undefined);
  await unmountFuseUnder(host, dataDir, 10_000);
  await stopManagedTgtd(dataDir, controlPort).catch(() => undefined);
  rmSync(`/run/tgtd/socket.${controlPort}`, { force: true });
  rmSync(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
  if (existsSync('/dev/berth')) {
    for (const name of readdirSync('/dev/berth')) {
      const link = path.join('/dev/berth', name);
      // Others' links come and go meanwhile (other tests, other berths on the machine).
      const target = lstatSync(link, { throwIfNoEntry: false })?.isSymbolicLink() === true ? readlinkOrNone(link) : undefined;
      if (target?.startsWith(path.join(dataDir, path.sep)) === true) rmSync(link, { force: true });
    }
  }
  await rm(dataDir, { recursive: true, force: true });
  if (!hadTargetFiles) for (const dir of [TARGET_FILES, '/run/berth']) rmdirIfEmpty(dir);
});

/** Remove `dir` when it is there and empty (another berth process's files keep it). */
function rmdirIfEmpty(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // Missing, or not empty: left as it is.
  }
}

function lunBytes(volumeId: string, offset: number, length: number): Buffer {
  return readFileSync(path.join(dataDir, 'backend-tgt', 'luns', `${volumeId}.img`)).subarray(offset, offset + length);
}

describe('berth attach of a tgt volume on a host without a kernel initiator', () => {
  it('picks iscsi-user, survives a SIGKILLed daemon, detaches with every byte in the LUN file', async () => {
    const volume = await berth.createVolume({ name: 'db1', sizeBytes: 16 * MiB });
    const { attachment } = await berth.attach({ volume: 'db1' });
    expect(attachment?.transport).toBe('iscsi-user');
    const device = attachment!.device!.path;
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(device);
    const data = randomBytes(256 * 1024);
    writeAt(device, data, 4 * MiB);

    const pidFile = path.join(dataDir, 'driver-iscsi-user', 'qsd', 'qsd.pid');
    const { pid } = await daemonStatus(pidFile);
    process.kill(pid!, 'SIGKILL');
    await host.waiter.waitUntil('/proc', async () => ((await daemonStatus(pidFile)).running ? undefined : true), { timeoutMs: 10_000 });
    // The next command that looks (reconcile) finds the daemon dead, restarts it and rebuilds the
    // export on the same device: nothing differs afterwards.
    const report = await berth.reconcile!({ dryRun: true });
    expect(report.differences).toEqual([]);
    expect(readFileSync(device).subarray(4 * MiB, 4 * MiB + data.length).equals(data)).toBe(true);

    await berth.detach({ volume: 'db1' });
    expect(lunBytes(volume.id, 4 * MiB, data.length).equals(data)).toBe(true);
    expect((await berth.getVolume('db1')).status).toBe('available');
    expect(loopDevicesUnder(dataDir)).toEqual([]);
    expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(dataDir);
    expect(berthLinkExists(volume.id)).toBe(false);
  });

  it('--transport iscsi forces the kernel transport: a clear failure here, and nothing left', async () => {
    await berth.createVolume({ name: 'db2', sizeBytes: 8 * MiB });
    const error = await berth.attach({ volume: 'db2', transport: 'iscsi' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(BerthError.is(error)).toBe(true);
    expect((error as BerthError).hint).toMatch(/\S/);
    // Its target lock was let go, and it marked no connect in flight.
    expect(existsSync(TARGET_FILES) ? readdirSync(TARGET_FILES) : []).toEqual([]);
    expect((await berth.getVolume('db2')).status).toBe('available');
    expect(await berth.listAttachments({ volume: 'db2' })).toEqual([]);
    const wrong = await berth.attach({ volume: 'db2', transport: 'loop' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(BerthError.is(wrong) && wrong.code).toBe('UNPROCESSABLE');
    const forced = await berth.attach({ volume: 'db2', transport: 'iscsi-user' });
    expect(forced.attachment?.transport).toBe('iscsi-user');
    await berth.detach({ volume: 'db2' });
    expect(loopDevicesUnder(dataDir)).toEqual([]);
  });
});

describe('a held device is not detached (iscsi-user)', () => {
  it('a mount or a process holding the loop device makes detach refuse it untouched, before anything is removed; the volume stays attached with its links and data; once let go the detach removes everything', async () => {
    await berth.createVolume({ name: 'held3', sizeBytes: 64 * MiB });
    await detachOfHeldDevice(berth, { volume: 'held3', transport: 'iscsi-user' }, () => {
      expect(loopDevicesUnder(dataDir)).toEqual([]);
      expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(dataDir);
    });
  }, 90_000);
});
