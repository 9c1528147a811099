import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { crashChild, readAt, writeAt } from '../support/host-state.js';
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

describe('loop driver fault points', () => {
  it.each([
    ['attach', 'loop.connect.after-losetup'],
    ['detach', 'loop.disconnect.before-detach'],
  ] as const)('%s crashed at %s recovers to a consistent state', async (command, point) => {
    const setup = await t.open();
    const volume = await setup.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const { attachment } = await setup.attach({ volume: 'v' });
    const marker = Buffer.from(`marker ${point}`.padEnd(4096, '='));
    writeAt(attachment!.device!.path, marker, MiB);
    if (command === 'attach') await setup.detach({ volume: 'v' });
    await setup.close();

    expect(crashChild(t.dataDir, command, point)).toBe('killed');
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
    expect(readAt(volume.providerLocation!, marker.length, MiB).equals(marker)).toBe(true);
    const [op] = await berth.listOperations();
    table.push(`${point.padEnd(32)} ${op!.state.padEnd(13)} ${current.status.padEnd(10)} ${loopDevicesUnder(t.dataDir).length}`);
    if (current.status === 'in-use') await berth.detach({ volume: 'v' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });
});
