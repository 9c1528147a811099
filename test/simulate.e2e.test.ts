import { closeSync, fsyncSync, openSync, readlinkSync, readSync, writeSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { stopManagedTgtd } from '@berth/backend-tgt';
import { EXIT_CODES, type ReconcileReport } from '@berth/core';
import { errorBody, makeSandbox, type BerthSandbox } from './support/berth-cli.js';
import { freeControlPort, freePort } from './support/ports.js';

// Issue 3 as a user runs it: `berth volume create --backend tgt`, `berth --simulate attach`, bytes
// through the device into the LUN file, `berth --simulate detach`, then nothing left. A plain
// `berth detach` / `reconcile` of that attachment refuses / skips it (it was made on the simulated host).

let sandbox: BerthSandbox;
// A tgtd control port nobody answers on (probed), not one derived from the pid: another run's tgtd
// may hold any number, and berth's tgtadm would then act on that run's targets.
let controlPort = 0;

beforeEach(async () => {
  sandbox = await makeSandbox();
  controlPort = await freeControlPort();
  const { mkdir } = await import('node:fs/promises');
  await mkdir(sandbox.dataDir, { recursive: true });
  await writeFile(
    join(sandbox.dataDir, 'config.json'),
    JSON.stringify({ pluginOptions: { '@berth/backend-tgt': { portals: [`127.0.0.1:${await freePort()}`], controlPort } } }),
  );
});

afterEach(async () => {
  await sandbox.run(['simulate', 'stop', '--force']);
  await stopManagedTgtd(sandbox.dataDir, controlPort).catch(() => undefined);
  await sandbox.remove();
}, 120_000);

describe('berth --simulate (issue 3, as a user runs it)', () => {
  it('attaches a tgt volume over iSCSI on the simulated host, the bytes reach the LUN file, and detach leaves nothing', async () => {
    const volume = await sandbox.json<{ id: string; status: string }>(['volume', 'create', '--size', '64MiB', '--backend', 'tgt', '--name', 'db1']);
    expect(volume.status).toBe('available');
    const attached = await sandbox.json<{ attachment: { id: string; transport: string; hostRoot: string; device: { path: string; realPath?: string; scsi_wwn: string } } }>([
      '--simulate',
      'attach',
      'db1',
    ]);
    expect(attached.attachment.transport).toBe('iscsi');
    expect(attached.attachment.device.path).toMatch(/^\/dev\/sd[a-z]+$/);
    expect(attached.attachment.device.scsi_wwn).toMatch(/^36/);
    expect(attached.attachment.hostRoot).toBe(join(sandbox.dataDir, 'simhost'));
    // The device is recorded as the simulated host names it; /dev/berth leads to it on this machine.
    expect(attached.attachment.device.realPath).toBeUndefined();
    expect(readlinkSync(`/dev/berth/${volume.id}`)).toBe(join(attached.attachment.hostRoot, attached.attachment.device.path));

    const marker = Buffer.from('written through berth --simulate'.padEnd(4096, '#'));
    const fd = openSync(`/dev/berth/${volume.id}`, 'r+');
    try {
      writeSync(fd, marker, 0, marker.length, 1 << 20);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    const lun = openSync(join(sandbox.dataDir, 'backend-tgt', 'luns', `${volume.id}.img`), 'r');
    try {
      const back = Buffer.alloc(marker.length);
      readSync(lun, back, 0, back.length, 1 << 20);
      expect(back.equals(marker)).toBe(true);
    } finally {
      closeSync(lun);
    }

    // Without --simulate the iSCSI transport runs on the machine: refused before anything is touched.
    const plain = await sandbox.run(['detach', 'db1', '--json']);
    expect(plain.exitCode).toBe(EXIT_CODES.CONFIG);
    expect(errorBody(plain)).toMatchObject({ code: 'CONFIG', hint: expect.stringContaining('--simulate') });
    const report = await sandbox.json<ReconcileReport>(['reconcile', '--yes']);
    expect(report.differences.filter((d) => d.attachmentId === attached.attachment.id)).toEqual([
      expect.objectContaining({ kind: 'attachment_device_gone', state: 'skipped', result: expect.stringContaining('--simulate') }),
    ]);
    expect((await sandbox.json<Array<{ status: string }>>(['volume', 'list'])).map((v) => v.status)).toEqual(['in-use']);

    await sandbox.json(['--simulate', 'detach', 'db1']);
    const list = await sandbox.json<Array<{ status: string }>>(['volume', 'list']);
    expect(list.map((v) => v.status)).toEqual(['available']);
    await sandbox.json(['volume', 'delete', 'db1', '--yes']);
  });
});
