import { execFileSync } from 'node:child_process';
import { closeSync, fsyncSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stopManagedTgtd } from '@berth/backend-tgt';
import { silentLogger, type BerthService } from '@berth/core';
import { openBerth } from './open-berth.js';
import { simulatedHostPaths, stopSimulatedHost } from './simulate.js';
import { linkTarget } from './test-support.js';

// Issue 3 end to end, real-backed: a tgt volume on berth's own tgtd, attached with the iSCSI
// transport on the simulated host, whose login reaches that tgtd for real and whose disk is a real
// loop device over a qemu-storage-daemon FUSE export of the LUN.

const MiB = 1024 * 1024;
const CONTROL_PORT = 1000 + (process.pid % 20000);

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

function leftovers(workDir: string): { loops: string[]; mounts: string[]; qsd: string[] } {
  const out = execFileSync('losetup', ['--json', '--list'], { encoding: 'utf8' }).trim();
  const loops = out
    ? (JSON.parse(out) as { loopdevices: Array<{ name: string; 'back-file'?: string }> }).loopdevices
        .filter((d) => (d['back-file'] ?? '').startsWith(workDir))
        .map((d) => d.name)
    : [];
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .filter((l) => l.includes(workDir));
  let qsd: string[] = [];
  try {
    qsd = execFileSync('pgrep', ['-af', `qemu-storage-daemon.*${workDir}`], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  } catch {
    qsd = [];
  }
  return { loops, mounts, qsd };
}

let dataDir: string;
let berth: BerthService;

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-iscsi-sim-'));
  const port = await freePort();
  writeFileSync(
    path.join(dataDir, 'config.json'),
    JSON.stringify({ pluginOptions: { '@berth/backend-tgt': { portals: [`127.0.0.1:${port}`], controlPort: CONTROL_PORT } } }),
  );
  berth = await openBerth({ dataDir, env: {}, logger: silentLogger, simulate: true });
}, 60_000);

afterAll(async () => {
  await berth?.close().catch(() => undefined);
  await stopSimulatedHost(dataDir).catch(() => undefined);
  await stopManagedTgtd(dataDir, CONTROL_PORT).catch(() => undefined);
  await rm(dataDir, { recursive: true, force: true });
}, 60_000);

describe('iSCSI single path end to end, on the simulated host backed by a real tgtd', () => {
  it('create → attach → write through the device → the bytes are in the LUN file → detach → delete, nothing left', async () => {
    const volume = await berth.createVolume({ name: 'db1', sizeBytes: 64 * MiB, backend: 'tgt' });
    const { attachment } = await berth.attach({ volume: 'db1' });
    expect(attachment?.transport).toBe('iscsi');
    const device = attachment!.device!;
    expect(device.path).toMatch(/^\/dev\/sd[a-z]+$/);
    expect(device.scsi_wwn).toMatch(/^36/);
    expect(device.realPath).toBe(path.join(simulatedHostPaths(dataDir).root, device.path));
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(device.realPath);
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
    const lunFile = path.join(dataDir, 'backend-tgt', 'luns', `${volume.id}.img`);
    const lun = openSync(lunFile, 'r');
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
    expect(leftovers(simulatedHostPaths(dataDir).workDir)).toEqual({ loops: [], mounts: [], qsd: [] });
  });
});

describe('mutual CHAP, real-backed', () => {
  it('a tgt volume with mutual CHAP attaches and detaches over iSCSI on the simulated host', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-iscsi-mutual-'));
    const controlPort = CONTROL_PORT + 1;
    let mutual: BerthService | undefined;
    try {
      writeFileSync(
        path.join(dir, 'config.json'),
        JSON.stringify({ pluginOptions: { '@berth/backend-tgt': { portals: [`127.0.0.1:${await freePort()}`], controlPort, mutualChap: true } } }),
      );
      mutual = await openBerth({ dataDir: dir, env: {}, logger: silentLogger, simulate: true });
      await mutual.createVolume({ name: 'm1', sizeBytes: 16 * MiB, backend: 'tgt' });
      const { attachment } = await mutual.attach({ volume: 'm1' });
      expect(attachment?.device?.path).toMatch(/^\/dev\/sd[a-z]+$/);
      expect(attachment?.connectionInfo?.data.auth_username_in).toBeTruthy();
      expect(JSON.stringify(attachment)).not.toMatch(/password/);
      await mutual.detach({ volume: 'm1' });
      await mutual.deleteVolume('m1');
      expect(leftovers(simulatedHostPaths(dir).workDir)).toEqual({ loops: [], mounts: [], qsd: [] });
    } finally {
      await mutual?.close().catch(() => undefined);
      await stopSimulatedHost(dir).catch(() => undefined);
      await stopManagedTgtd(dir, controlPort).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
