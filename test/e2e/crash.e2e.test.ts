import { execFileSync } from 'node:child_process';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { BerthService } from '@berth/core';
import { startPostgresCluster, type PostgresCluster } from '@berth/store/testing';
import { crashChild, readAt, writeAt } from '../support/host-state.js';
import { loopDevicesUnder } from '../support/loop-devices.js';
import { createTestBerth, linkTarget, type TestBerth } from '../support/test-berth.js';

// Crash safety on the loop transport: a real child process is SIGKILLed at a fault point, a new
// berth starts (and recovers), and the state must be consistent: the volume available or in-use
// with a matching attachment and a matching loop device, nothing left over, no data lost.
// Every point runs twice: on the embedded SQLite store and on PostgreSQL (a throwaway cluster, a
// fresh database per test), where the killed process's operations are found by the same owner rule.

const MiB = 1024 * 1024;
const ATTACH = ['reserve', 'dispatch', 'connector', 'initialize', 'connect', 'publish', 'complete'];
const DETACH = ['begin_detaching', 'dispatch', 'unpublish', 'disconnect', 'terminate', 'delete_attachment'];
const table: Array<{ store: string; point: string; outcome: string; volume: string; loops: number }> = [];
const HOOK_TIMEOUT_MS = 120_000;

let t: TestBerth;
let cluster: PostgresCluster | undefined;

afterAll(async () => {
  await cluster?.stop();
  console.log('\nstore     crash point                                  recovery      volume     loop devices');
  for (const row of table) console.log(`${row.store.padEnd(9)} ${row.point.padEnd(44)} ${row.outcome.padEnd(13)} ${row.volume.padEnd(10)} ${row.loops}`);
}, HOOK_TIMEOUT_MS);

async function expectConsistent(berth: BerthService, volumeId: string, marker: Buffer): Promise<string> {
  const volume = await berth.getVolume(volumeId);
  const attachments = await berth.listAttachments({ volume: volumeId });
  const loops = loopDevicesUnder(t.dataDir);
  expect(await berth.listOperations({ state: 'running' })).toEqual([]);
  if (volume.status === 'available') {
    expect(attachments).toEqual([]);
    expect(loops).toEqual([]);
    expect(linkTarget(`/dev/berth/${volumeId}`)).toBeUndefined();
  } else {
    expect(volume.status).toBe('in-use');
    expect(attachments.map((a) => a.status)).toEqual(['attached']);
    expect(loops).toEqual([attachments[0]!.device!.path]);
    expect(linkTarget(`/dev/berth/${volumeId}`)).toBe(attachments[0]!.device!.path);
  }
  // Data written before the crash is still there.
  expect(readAt(volume.providerLocation!, marker.length, 2 * MiB).equals(marker)).toBe(true);
  return volume.status;
}

async function writeMarker(berth: BerthService, marker: Buffer): Promise<void> {
  const { attachment } = await berth.attach({ volume: 'v' });
  writeAt(attachment!.device!.path, marker, 2 * MiB);
  await berth.detach({ volume: 'v' });
}

describe.each(['sqlite', 'postgres'] as const)('crash at every fault point, then recovery (%s store)', (store) => {
  beforeAll(async () => {
    if (store === 'postgres') cluster = await startPostgresCluster();
  }, HOOK_TIMEOUT_MS);

  beforeEach(async () => {
    t = await createTestBerth(store === 'postgres' ? { storeUrl: await cluster!.createDatabase() } : {});
  }, HOOK_TIMEOUT_MS);

  afterEach(async () => {
    await t.cleanup();
  });

  it.each(ATTACH.flatMap((s) => [`attach.${s}.before`, `attach.${s}.after`]))('%s', async (point) => {
    const setup = await t.open();
    const volume = await setup.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const marker = Buffer.from(`marker-${point}`.padEnd(512, '.'));
    await writeMarker(setup, marker);
    await setup.close();
    expect(crashChild(t.dataDir, 'attach', point, { env: t.env })).toBe('killed');
    const berth = await t.open();
    const status = await expectConsistent(berth, volume.id, marker);
    const [op] = await berth.listOperations();
    table.push({ store, point, outcome: op!.state, volume: status, loops: loopDevicesUnder(t.dataDir).length });
    if (status === 'in-use') await berth.detach({ volume: 'v' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it.each(DETACH.flatMap((s) => [`detach.${s}.before`, `detach.${s}.after`]))('%s', async (point) => {
    const setup = await t.open();
    const volume = await setup.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const marker = Buffer.from(`marker-${point}`.padEnd(512, '.'));
    await writeMarker(setup, marker);
    await setup.attach({ volume: 'v' });
    await setup.close();
    expect(crashChild(t.dataDir, 'detach', point, { env: t.env })).toBe('killed');
    const berth = await t.open();
    const status = await expectConsistent(berth, volume.id, marker);
    const [op] = await berth.listOperations();
    table.push({ store, point, outcome: op!.state, volume: status, loops: loopDevicesUnder(t.dataDir).length });
    if (status === 'in-use') await berth.detach({ volume: 'v' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('leaves no loop device of its own behind at the end', () => {
    expect(execFileSync('losetup', ['--list', '--noheadings'], { encoding: 'utf8' })).not.toContain(t.dataDir);
  });
});
