import { closeSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BerthService } from '@berth/core';
import { createSimIscsiBerth, type SimIscsiBerth } from '../support/sim-iscsi-berth.js';
import { detachOfHeldDevice } from '../support/device-holder.js';
import { linkTarget } from '../support/test-berth.js';

// Issue 4 end to end, as `berth attach db2 --multipath --simulate` runs it: a tgt volume exported
// on two portals of berth's own tgtd (127.0.0.1 and 127.0.0.2), two real sessions through the
// simulated host, one dm device whose bytes reach the LUN file.

const MiB = 1024 * 1024;

let sim: SimIscsiBerth;
let berth: BerthService;

beforeAll(async () => {
  sim = await createSimIscsiBerth({ portalHosts: ['127.0.0.1', '127.0.0.2'] });
  berth = await sim.open();
}, 60_000);

afterAll(async () => {
  await sim?.cleanup();
}, 60_000);

describe('iSCSI multipath end to end on the simulated host backed by a real tgtd', () => {
  it('attach --multipath gives one dm device over both portals; bytes reach the LUN file; detach removes everything', async () => {
    const volume = await berth.createVolume({ name: 'db2', sizeBytes: 64 * MiB, backend: 'tgt' });
    const { attachment } = await berth.attach({ volume: 'db2', multipath: true });
    expect(attachment?.transport).toBe('iscsi-multipath');
    const device = attachment!.device!;
    expect(device.path).toMatch(/^\/dev\/dm-\d+$/);
    expect(device.multipath_id).toBe(device.scsi_wwn);
    expect(device.paths?.map((p) => p.portal).sort()).toEqual(expect.arrayContaining([expect.stringMatching(/^127\.0\.0\.1:/), expect.stringMatching(/^127\.0\.0\.2:/)]));
    expect(device.paths?.every((p) => p.state === 'active' || p.state === 'up' || p.state === 'ready' || p.state === 'running')).toBe(true);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(path.join(attachment!.hostRoot!, device.path));

    const pattern = Buffer.alloc(64 * 1024, 0x6d);
    const fd = openSync(`/dev/berth/${volume.id}`, 'r+');
    try {
      writeSync(fd, pattern, 0, pattern.length, 8 * MiB);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    const lun = openSync(path.join(sim.dataDir, 'backend-tgt', 'luns', `${volume.id}.img`), 'r');
    try {
      const back = Buffer.alloc(pattern.length);
      readSync(lun, back, 0, back.length, 8 * MiB);
      expect(back.equals(pattern)).toBe(true);
    } finally {
      closeSync(lun);
    }

    await berth.detach({ volume: 'db2' });
    expect((await berth.getVolume('db2')).status).toBe('available');
    await berth.deleteVolume('db2');
  });

  it('a path whose login failed at attach is listed failed, and `reconcile` adds it back to the map (issue 12 item 5)', async () => {
    const { SimulatedHost } = await import('@berth/simhost');
    const host = await SimulatedHost.connect(sim.root);
    const second = sim.portals.find((p) => p.startsWith('127.0.0.2'))!;
    const volume = await berth.createVolume({ name: 'db3', sizeBytes: 32 * MiB, backend: 'tgt' });
    try {
      // iscsid's "login failed" (rc 19) once, on the second portal: the attach goes on with one path.
      await host.faults.load({ loginFailures: [{ portal: second, iqn: volume.providerLocation!, exitCode: 19, times: 1 }] });
      const { attachment } = await berth.attach({ volume: 'db3', multipath: true });
      await host.faults.clear();
      const dm = path.basename(attachment!.device!.path);
      expect((await host.state()).maps.find((m) => m.dm === dm)?.paths).toHaveLength(1);

      const planned = await berth.reconcile!({ dryRun: true });
      expect(planned.differences).toEqual([expect.objectContaining({ kind: 'attachment_path_failed', fix: 'repair_paths', state: 'planned', attachmentId: attachment!.id })]);
      const applied = await berth.reconcile!({});
      expect(applied.differences).toEqual([expect.objectContaining({ kind: 'attachment_path_failed', state: 'applied', result: expect.stringContaining('127.0.0.2') })]);
      expect((await host.state()).maps.find((m) => m.dm === dm)?.paths).toHaveLength(2);
      expect((await host.state()).sessions.filter((s) => s.iqn === volume.providerLocation)).toHaveLength(2);
      expect((await berth.reconcile!({ dryRun: true })).differences).toEqual([]);
    } finally {
      await host.faults.clear();
      await berth.detach({ volume: 'db3' }).catch(() => undefined);
      await berth.deleteVolume('db3');
    }
    expect((await host.state()).sessions).toEqual([]);
    expect(sim.nodeRecords()).toEqual([]);
  });
});

describe('a held map is not detached (multipath, real-backed)', () => {
  it('a mount of the map or a process holding it makes detach refuse it untouched; the volume stays attached with its data; once let go the detach removes everything', async () => {
    await berth.createVolume({ name: 'held2', sizeBytes: 64 * MiB, backend: 'tgt' });
    await detachOfHeldDevice(berth, { volume: 'held2', multipath: true }, () => {
      expect(sim.targets().every((t) => t.nexuses.length === 0)).toBe(true);
      expect(sim.nodeRecords()).toEqual([]);
      expect(sim.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
    });
  }, 120_000);
});
