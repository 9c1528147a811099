import { closeSync, fsyncSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BerthService } from '@berth/core';
import { managedTgtdPaths } from '@berth/backend-tgt';
import { createCommandRunner, daemonStatus } from '@berth/host';
import { createSimIscsiBerth, type SimIscsiBerth } from '../support/sim-iscsi-berth.js';
import { detachOfHeldDevice } from '../support/device-holder.js';
import { linkTarget } from '../support/test-berth.js';

// Issue 3 end to end, real-backed: a tgt volume on berth's own tgtd, attached with the iSCSI
// transport on the simulated host, whose login reaches that tgtd for real and whose disk is a real
// loop device over a qemu-storage-daemon FUSE export of the LUN.

const MiB = 1024 * 1024;

let sim: SimIscsiBerth;
let berth: BerthService;

beforeAll(async () => {
  sim = await createSimIscsiBerth();
  berth = await sim.open();
}, 60_000);

afterAll(async () => {
  await sim?.cleanup();
}, 60_000);

describe('iSCSI single path end to end, on the simulated host backed by a real tgtd', () => {
  it('create → attach → write through the device → the bytes are in the LUN file → detach → delete, nothing left', async () => {
    const volume = await berth.createVolume({ name: 'db1', sizeBytes: 64 * MiB, backend: 'tgt' });
    const { attachment } = await berth.attach({ volume: 'db1' });
    expect(attachment?.transport).toBe('iscsi');
    const device = attachment!.device!;
    expect(device.path).toMatch(/^\/dev\/sd[a-z]+$/);
    expect(device.scsi_wwn).toMatch(/^36/);
    // Recorded as the simulated host names it; the consumer linked the path on this machine.
    expect(attachment?.hostRoot).toBe(sim.root);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(path.join(sim.root, device.path));
    // Secrets are not stored with the attachment.
    expect(JSON.stringify(attachment)).not.toMatch(/auth_password/);

    const pattern = Buffer.alloc(64 * 1024);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + 3) & 0xff;
    const offsets = [0, 4096, 1 * MiB + 512, 32 * MiB, 64 * MiB - pattern.length];
    const fd = openSync(`/dev/berth/${volume.id}`, 'r+');
    try {
      for (const offset of offsets) writeSync(fd, pattern, 0, pattern.length, offset);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    // The tgt backend keeps each LUN as `<dataDir>/backend-tgt/luns/<volume id>.img`.
    const lun = openSync(path.join(sim.dataDir, 'backend-tgt', 'luns', `${volume.id}.img`), 'r');
    try {
      for (const offset of offsets) {
        const back = Buffer.alloc(pattern.length);
        readSync(lun, back, 0, back.length, offset);
        expect(back.equals(pattern), `bytes at ${offset}`).toBe(true);
      }
    } finally {
      closeSync(lun);
    }

    await berth.detach({ volume: 'db1' });
    expect((await berth.getVolume('db1')).status).toBe('available');
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
    await berth.deleteVolume('db1');
    expect(await berth.listVolumes()).toEqual([]);
    expect(sim.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
  });
});

describe('mutual CHAP, real-backed', () => {
  it('a tgt volume with mutual CHAP attaches and detaches over iSCSI on the simulated host', async () => {
    const mutualSim = await createSimIscsiBerth({ backendOptions: { mutualChap: true } });
    try {
      const mutual = await mutualSim.open();
      await mutual.createVolume({ name: 'm1', sizeBytes: 16 * MiB, backend: 'tgt' });
      const { attachment } = await mutual.attach({ volume: 'm1' });
      expect(attachment?.device?.path).toMatch(/^\/dev\/sd[a-z]+$/);
      expect(attachment?.connectionInfo?.data.auth_username_in).toBeTruthy();
      expect(JSON.stringify(attachment)).not.toMatch(/password/);
      await mutual.detach({ volume: 'm1' });
      await mutual.deleteVolume('m1');
      expect(mutualSim.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
    } finally {
      await mutualSim.cleanup();
    }
  }, 60_000);
});

describe('a held disk is not detached (single path, real-backed)', () => {
  it('a mount or a process holding the disk makes detach refuse it untouched; the volume stays attached with its data; once let go the detach removes everything', async () => {
    await berth.createVolume({ name: 'held1', sizeBytes: 64 * MiB, backend: 'tgt' });
    await detachOfHeldDevice(berth, { volume: 'held1' }, () => {
      expect(sim.targets().every((t) => t.nexuses.length === 0)).toBe(true);
      expect(sim.nodeRecords()).toEqual([]);
      expect(sim.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
    });
  }, 90_000);
});

describe('a tgtd that dies under an attached volume (single path, real-backed)', () => {
  it("berth serve's upkeep brings tgtd back with the volume's target; the host's session reconnects and a read that waited on the dead target completes with the volume's bytes", async () => {
    const volume = await berth.createVolume({ name: 'upkeep1', sizeBytes: 16 * MiB, backend: 'tgt' });
    await berth.attach({ volume: 'upkeep1' });
    const link = `/dev/berth/${volume.id}`;
    // A block nothing read or wrote yet: no page cache of the FUSE file under the loop device has it,
    // so its read must reach the target. The LUN file holds it, written behind berth's back.
    const offset = 12 * MiB;
    const pattern = Buffer.alloc(4096, 0x5a);
    const lun = openSync(path.join(sim.dataDir, 'backend-tgt', 'luns', `${volume.id}.img`), 'r+');
    try {
      writeSync(lun, pattern, 0, pattern.length, offset);
      fsyncSync(lun);
    } finally {
      closeSync(lun);
    }
    const { pidFile } = managedTgtdPaths(sim.dataDir);
    const before = await daemonStatus(pidFile);
    process.kill(before.pid ?? 0, 'SIGKILL');
    await expect.poll(async () => (await daemonStatus(pidFile)).running, { timeout: 5_000, interval: 10 }).toBe(false);
    // An uncached read (O_DIRECT) in its own process: it waits on the dead target.
    const out = path.join(sim.dataDir, 'read-back.bin');
    const read = createCommandRunner().run('dd', [`if=${link}`, `of=${out}`, 'bs=4096', 'count=1', `skip=${offset / 4096}`, 'iflag=direct'], { reject: false, timeoutMs: 60_000 });
    const stopUpkeep = berth.startUpkeep!();
    try {
      const result = await read;
      expect(result.exitCode, result.stderr).toBe(0);
      expect(readFileSync(out).equals(pattern)).toBe(true);
      const after = await daemonStatus(pidFile);
      expect(after.running).toBe(true);
      expect(after.pid).not.toBe(before.pid);
    } finally {
      await stopUpkeep();
    }
    await berth.detach({ volume: 'upkeep1' });
    await berth.deleteVolume('upkeep1');
    expect(sim.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
  }, 120_000);
});
