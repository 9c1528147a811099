import { spawnSync } from 'node:child_process';
import { closeSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { OP_CHILD } from '../support/host-state.js';
import { loopDevicesUnder } from '../support/loop-devices.js';
import { createTestBerth, linkTarget, type TestBerth } from '../support/test-berth.js';

// The loop transport's own fault points (between its commands), crashed in a real child process:
// after the restart the volume is available or in-use with a matching loop device, reconcile finds
// nothing, and the bytes written before the crash are there. The step boundaries are covered by
// crash.e2e.test.ts.

const MiB = 1024 * 1024;
const table: string[] = [];
let t: TestBerth;

beforeEach(async () => {
  t = await createTestBerth();
});

afterEach(async () => {
  await t.cleanup();
});

afterAll(() => {
  console.log(`\nloop driver crash point          recovery      volume     loop devices\n${table.join('\n')}`);
});

function runChild(command: string, point: string): string {
  const result = spawnSync(process.execPath, [OP_CHILD, t.dataDir, command, 'v'], {
    env: { ...process.env, BERTH_FAULTS: `${point}=crash`, BERTH_LOG_LEVEL: 'silent' },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return result.signal === 'SIGKILL' ? 'killed' : result.stdout.trim();
}

describe('loop driver fault points', () => {
  it.each([
    ['attach', 'loop.connect.after-losetup'],
    ['detach', 'loop.disconnect.after-flush'],
  ] as const)('%s crashed at %s recovers to a consistent state', async (command, point) => {
    const setup = await t.open();
    const volume = await setup.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const { attachment } = await setup.attach({ volume: 'v' });
    const marker = Buffer.from(`marker ${point}`.padEnd(4096, '='));
    const fd = openSync(attachment!.device!.path, 'r+');
    try {
      writeSync(fd, marker, 0, marker.length, MiB);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (command === 'attach') await setup.detach({ volume: 'v' });
    await setup.close();

    expect(runChild(command, point)).toBe('killed');
    const berth = await t.open();
    const current = await berth.getVolume('v');
    const attachments = await berth.listAttachments({ volume: 'v' });
    expect(await berth.listOperations({ state: 'running' })).toEqual([]);
    if (current.status === 'available') {
      expect(attachments).toEqual([]);
      expect(loopDevicesUnder(t.dataDir)).toEqual([]);
      expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
    } else {
      expect(current.status).toBe('in-use');
      expect(loopDevicesUnder(t.dataDir)).toEqual([attachments[0]!.device!.path]);
    }
    expect((await berth.reconcile!({ dryRun: true })).differences).toEqual([]);
    const back = Buffer.alloc(marker.length);
    const file = openSync(volume.providerLocation!, 'r');
    try {
      readSync(file, back, 0, back.length, MiB);
    } finally {
      closeSync(file);
    }
    expect(back.equals(marker)).toBe(true);
    const [op] = await berth.listOperations();
    table.push(`${point.padEnd(32)} ${op!.state.padEnd(13)} ${current.status.padEnd(10)} ${loopDevicesUnder(t.dataDir).length}`);
    if (current.status === 'in-use') await berth.detach({ volume: 'v' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });
});
