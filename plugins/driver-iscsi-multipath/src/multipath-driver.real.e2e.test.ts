import { randomBytes, randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { TransportDriver } from '@berth/core';
import { SimulatedHost } from '@berth/simhost';
import { RealTargetAccess, realBackedAvailable, startTgtd, sweepStrays, type TestTgtd } from '@berth/simhost/real';
import { createMultipathDriver } from './multipath-driver.js';
import { discoveryConnection, listConnection, recordingLogger, type LogLine } from './test-sim-env.js';

// The driver on the simulated kernel over a real tgtd listening on 127.0.0.1 and 127.0.0.2: each
// path is its own real iSCSI session (libiscsi, qemu-storage-daemon) to its own portal, and the
// multipath device's node is the block device of the path dm sends I/O to.
const available = realBackedAvailable();
// As root (CI, and `npm run test:all`, which installs the tools) the suite must run: a skip there would hide it.
if (process.getuid?.() === 0 && !available) throw new Error('this suite needs tgtd, qemu-storage-daemon, libiscsi-bin and /dev/fuse: run `npm run test:all` (it installs them)');
const IQN = 'iqn.2026-01.test.berth:mp-real';

let sim: SimulatedHost | undefined;
let tgtd: TestTgtd | undefined;
let dir: string | undefined;

afterEach(async () => {
  try {
    await sim?.stop();
    await tgtd?.stop();
  } finally {
    if (dir !== undefined) {
      await sweepStrays(dir);
      await fsp.rm(dir, { recursive: true, force: true });
    }
    sim = undefined;
    tgtd = undefined;
    dir = undefined;
  }
});

async function setUp(): Promise<{ driver: TransportDriver; lunFile: string; logs: LogLine[] }> {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-mp-real-'));
  tgtd = await startTgtd(dir, { addresses: ['127.0.0.1', '127.0.0.2'] });
  const lunFile = path.join(dir, 'lun1.img');
  await fsp.writeFile(lunFile, Buffer.alloc(0));
  await fsp.truncate(lunFile, 16 << 20);
  await tgtd.admin('--op', 'new', '--mode', 'target', '--tid', '1', '-T', IQN);
  await tgtd.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', lunFile);
  await tgtd.admin('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
  sim = await SimulatedHost.start({ targetAccess: new RealTargetAccess({ workDir: dir }) });
  const logs: LogLine[] = [];
  const driver = createMultipathDriver({ host: sim.hostServices(), dataDir: path.join(dir, 'data'), options: {}, logger: recordingLogger(logs) });
  return { driver, lunFile, logs };
}

describe('multipath over a real tgtd with two portals', { timeout: 180_000 }, () => {
  it.skipIf(!available)('bytes written through the multipath device are in the LUN file; detach leaves nothing', async () => {
    const { driver, lunFile } = await setUp();
    const running = sim!;
    const connection = listConnection(IQN, 1, tgtd!.portals);
    const volumeId = randomUUID();
    const device = await driver.connect(connection, { signal: AbortSignal.timeout(120_000), volumeId });
    expect(device.path).toMatch(/^\/dev\/dm-\d+$/);
    expect(device.paths?.map((p) => [p.portal, p.state])).toEqual(tgtd!.portals.map((p) => [p, 'active']));
    const state = await running.state();
    expect(state.maps).toHaveLength(1);
    expect(state.maps[0]?.paths).toHaveLength(2);
    expect(state.sessions.map((s) => s.portal).sort()).toEqual([...tgtd!.portals].sort());
    const node = await running.hostServices().fs.stat(device.path);
    expect(node?.isBlockDevice).toBe(true);

    // 4 KiB writes at several offsets, buffered, then fsync (FUSE + loop: no direct I/O, HOST-FACTS).
    const writes = [0, 4096 * 3, 1 << 20, (16 << 20) - 4096].map((offset) => ({ offset, bytes: randomBytes(4096) }));
    const handle = await fsp.open(running.hostServices().fs.resolve(device.path), 'r+');
    try {
      for (const w of writes) await handle.write(w.bytes, 0, w.bytes.length, w.offset);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await driver.disconnect(connection, device, { force: false, signal: AbortSignal.timeout(120_000), volumeId });
    const lun = await fsp.readFile(lunFile);
    for (const w of writes) expect(lun.subarray(w.offset, w.offset + w.bytes.length).equals(w.bytes)).toBe(true);
    const after = await running.state();
    expect(after.maps).toEqual([]);
    expect(after.sessions).toEqual([]);
    expect(after.devices).toEqual([]);
  });

  it.skipIf(!available)('discovery through one portal finds one path: tgtd answers SendTargets with the portal asked only', async () => {
    const { driver } = await setUp();
    const device = await driver.connect(discoveryConnection(IQN, 1, tgtd!.portals[0]!), { signal: AbortSignal.timeout(120_000) });
    expect(device.paths?.map((p) => p.portal)).toEqual([tgtd!.portals[0]]);
    expect((await sim!.state()).maps[0]?.paths).toHaveLength(1);
    await driver.disconnect(discoveryConnection(IQN, 1, tgtd!.portals[0]!), device, { force: false, signal: AbortSignal.timeout(120_000) });
  });
});
