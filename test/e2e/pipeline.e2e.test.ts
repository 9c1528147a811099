import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync, writeSync, fsyncSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, type BerthService } from '@berth/core';
import { loopDevicesUnder } from '../support/loop-devices.js';
import { createTestBerth, linkTarget, type TestBerth } from '../support/test-berth.js';

const MiB = 1024 * 1024;
const ATTACH_STEPS = ['reserve', 'dispatch', 'connector', 'initialize', 'connect', 'publish', 'complete'];
const DETACH_BEFORE_NO_RETURN = ['begin_detaching', 'dispatch', 'unpublish'];

let t: TestBerth;

beforeEach(async () => {
  t = await createTestBerth();
});

afterEach(async () => {
  await t.cleanup();
});

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (BerthError.is(error)) return error.code;
    throw error;
  }
  return 'no error';
}

/** What a user would check: the rows, the loop devices and the stable link. */
async function expectNothingAttached(berth: BerthService, volumeId: string): Promise<void> {
  const volume = await berth.getVolume(volumeId);
  expect(volume.status).toBe('available');
  expect(await berth.listAttachments({ volume: volumeId })).toEqual([]);
  expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  expect(linkTarget(`/dev/berth/${volumeId}`)).toBeUndefined();
  expect((await berth.listOperations({ state: 'running' })).length).toBe(0);
}

describe('attach and detach on the embedded default (file backend, loop transport)', () => {
  it('attaches through a real loop device, publishes the stable link and detaches', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'data1', sizeBytes: 64 * MiB });
    const { attachment, volume: attached, operation } = await berth.attach({ volume: 'data1' });
    expect(attached.status).toBe('in-use');
    expect(attachment?.status).toBe('attached');
    expect(attachment?.transport).toBe('loop');
    const device = attachment!.device!.path;
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(device);
    expect(Object.keys(attachment!.timings)).toEqual(ATTACH_STEPS);
    expect(operation.state).toBe('succeeded');
    expect(operation.steps.map((s) => `${s.name}:${s.state}`)).toEqual(ATTACH_STEPS.map((s) => `${s}:done`));

    // Bytes written through the device land in the volume file.
    const pattern = Buffer.alloc(4096, 0x5a);
    const fd = openSync(device, 'r+');
    try {
      writeSync(fd, pattern, 0, pattern.length, 8 * MiB);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    await berth.detach({ volume: 'data1' });
    const file = openSync(volume.providerLocation ?? '', 'r');
    const back = Buffer.alloc(4096);
    try {
      readSync(file, back, 0, back.length, 8 * MiB);
    } finally {
      closeSync(file);
    }
    expect(back.equals(pattern)).toBe(true);
    await expectNothingAttached(berth, volume.id);
    expect(existsSync(device) && loopDevicesUnder(t.dataDir).includes(device)).toBe(false);
  });

  it.each(ATTACH_STEPS.flatMap((step) => [`${step}.before`, `${step}.after`]).filter((p) => p !== 'complete.after'))(
    'a failure at attach.%s undoes every earlier step',
    async (point) => {
      const berth = await t.open({ BERTH_FAULTS: `attach.${point}=throw` });
      const volume = await berth.createVolume({ name: 'v', sizeBytes: 16 * MiB });
      const error = await berth.attach({ volume: 'v' }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(BerthError.is(error) && error.message).toMatch(new RegExp(`fault injected at attach.${point.replace('.', '\\.')}`));
      await expectNothingAttached(berth, volume.id);
      const [operation] = await berth.listOperations();
      expect(operation?.state).toBe('rolled_back');
      expect(operation?.error?.message).toMatch(/fault injected/);
      // The journal shows the undo of every step that has one, newest first.
      const undone = operation!.steps.filter((s) => s.phase === 'undo').map((s) => s.name);
      const failedAt = point.split('.')[0]!;
      const reached = ATTACH_STEPS.slice(0, ATTACH_STEPS.indexOf(failedAt) + 1).reverse();
      expect(undone).toEqual(reached.filter((s) => ['reserve', 'initialize', 'connect', 'publish'].includes(s)));
      expect(operation!.steps.filter((s) => s.phase === 'undo').every((s) => s.state === 'done')).toBe(true);
      // And the volume can be attached again at once.
      const again = await t.open();
      await again.attach({ volume: 'v' });
      await again.detach({ volume: 'v' });
    },
  );

  it('a failure after complete has committed does not undo the attach', async () => {
    const berth = await t.open({ BERTH_FAULTS: 'attach.complete.after=throw' });
    const volume = await berth.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    expect(await codeOf(berth.attach({ volume: 'v' }))).toBe('INTERNAL');
    expect((await berth.getVolume('v')).status).toBe('in-use');
    const [attachment] = await berth.listAttachments({ volume: 'v' });
    expect(attachment?.status).toBe('attached');
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(attachment?.device?.path);
    await berth.detach({ volume: 'v' });
    await expectNothingAttached(berth, volume.id);
  });

  it.each(DETACH_BEFORE_NO_RETURN.flatMap((step) => [`${step}.before`, `${step}.after`]))(
    'a failure at detach.%s rolls the detach back: the volume stays attached and usable',
    async (point) => {
      const setup = await t.open();
      const volume = await setup.createVolume({ name: 'v', sizeBytes: 16 * MiB });
      const { attachment } = await setup.attach({ volume: 'v' });
      const berth = await t.open({ BERTH_FAULTS: `detach.${point}=throw` });
      expect(await codeOf(berth.detach({ volume: 'v' }))).toBe('INTERNAL');
      expect((await berth.getVolume('v')).status).toBe('in-use');
      const [current] = await berth.listAttachments({ volume: 'v' });
      expect(current?.status).toBe('attached');
      expect(loopDevicesUnder(t.dataDir)).toEqual([attachment!.device!.path]);
      expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(attachment!.device!.path);
      await setup.detach({ volume: 'v' });
      await expectNothingAttached(setup, volume.id);
    },
  );

  it.each(['disconnect.after', 'terminate.before', 'terminate.after', 'delete_attachment.before'])(
    'a failure at detach.%s, past the point of no return, leaves error_detaching and a forced detach finishes',
    async (point) => {
      const setup = await t.open();
      const volume = await setup.createVolume({ name: 'v', sizeBytes: 16 * MiB });
      await setup.attach({ volume: 'v' });
      const berth = await t.open({ BERTH_FAULTS: `detach.${point}=throw` });
      expect(await codeOf(berth.detach({ volume: 'v' }))).toBe('INTERNAL');
      expect((await berth.getVolume('v')).status).toBe('error');
      expect((await berth.listAttachments({ volume: 'v' }))[0]?.status).toBe('error_detaching');
      expect(loopDevicesUnder(t.dataDir)).toEqual([]);
      expect(await codeOf(setup.attach({ volume: 'v' }))).toBe('CONFLICT');
      await setup.detach({ volume: 'v', force: true });
      await expectNothingAttached(setup, volume.id);
    },
  );

  it('a deadline that passes mid-attach rolls back with TIMEOUT', async () => {
    const berth = await t.open({ BERTH_FAULTS: 'attach.connect.after=delay:400', BERTH_OPERATION_TIMEOUT_MS: '200' });
    const volume = await berth.createVolume({ name: 'slow', sizeBytes: 16 * MiB });
    expect(await codeOf(berth.attach({ volume: 'slow' }))).toBe('TIMEOUT');
    await expectNothingAttached(berth, volume.id);
  });
});

describe('concurrency', () => {
  it('two concurrent attaches of one volume in one process: one wins, the other gets CONFLICT', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'c', sizeBytes: 16 * MiB });
    await berth.createServer({ name: 's1' });
    await berth.createServer({ name: 's2' });
    const results = await Promise.allSettled([berth.attach({ volume: 'c', server: 's1' }), berth.attach({ volume: 'c', server: 's2' })]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(rejected).toHaveLength(1);
    expect(BerthError.is(rejected[0]!.reason) && rejected[0]!.reason.code).toBe('CONFLICT');
    expect(loopDevicesUnder(t.dataDir)).toHaveLength(1);
    expect(await berth.listAttachments({ volume: 'c' })).toHaveLength(1);
    await berth.detach({ volume: 'c' });
    await expectNothingAttached(berth, volume.id);
  });

  it('two berths on one database (two processes) race for one volume: the CAS lets exactly one win', async () => {
    const a = await t.open();
    const b = await t.open();
    const volume = await a.createVolume({ name: 'race', sizeBytes: 16 * MiB });
    await a.createServer({ name: 's1' });
    await a.createServer({ name: 's2' });
    for (let round = 0; round < 5; round++) {
      const results = await Promise.allSettled([a.attach({ volume: 'race', server: 's1' }), b.attach({ volume: 'race', server: 's2' })]);
      const won = results.filter((r) => r.status === 'fulfilled');
      expect(won).toHaveLength(1);
      for (const r of results) {
        if (r.status === 'rejected') expect(BerthError.is(r.reason) && r.reason.code).toBe('CONFLICT');
      }
      expect(loopDevicesUnder(t.dataDir)).toHaveLength(1);
      await a.detach({ volume: 'race' });
    }
    await expectNothingAttached(a, volume.id);
  });

  it('a multiattach volume attaches to two servers and stays in-use until the last detach', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'shared', sizeBytes: 16 * MiB, multiattach: true });
    await berth.createServer({ name: 's1' });
    await berth.createServer({ name: 's2' });
    await Promise.all([berth.attach({ volume: 'shared', server: 's1' }), berth.attach({ volume: 'shared', server: 's2' })]);
    expect((await berth.getVolume('shared')).status).toBe('in-use');
    expect(await berth.listAttachments({ volume: 'shared' })).toHaveLength(2);
    expect(await codeOf(berth.detach({ volume: 'shared' }))).toBe('VALIDATION');
    await berth.detach({ volume: 'shared', server: 's1' });
    expect((await berth.getVolume('shared')).status).toBe('in-use');
    await berth.detach({ volume: 'shared', server: 's2' });
    await expectNothingAttached(berth, volume.id);
  });
});

describe('bad input changes nothing', () => {
  it('refuses with a clear error code and leaves the store as it was', async () => {
    const berth = await t.open();
    await berth.createVolume({ name: 'ok', sizeBytes: 16 * MiB });
    const before = JSON.stringify(await berth.listVolumes());
    expect(await codeOf(berth.attach({ volume: 'nope' }))).toBe('NOT_FOUND');
    expect(await codeOf(berth.createVolume({ name: 'neg', sizeBytes: -1 }))).toBe('VALIDATION');
    expect(await codeOf(berth.createVolume({ name: 'huge', sizeBytes: 2 ** 60 }))).toBe('VALIDATION');
    expect(await codeOf(berth.createVolume({ name: '../etc', sizeBytes: MiB }))).toBe('VALIDATION');
    expect(await codeOf(berth.createVolume({ name: 'ok', sizeBytes: MiB }))).toBe('CONFLICT');
    expect(await codeOf(berth.createVolume({ name: 'x', sizeBytes: MiB, backend: 'nope' }))).toBe('UNPROCESSABLE');
    expect(await codeOf(berth.detach({ volume: 'ok' }))).toBe('CONFLICT');
    expect(await codeOf(berth.extendVolume('ok', MiB))).toBe('VALIDATION');
    expect(JSON.stringify(await berth.listVolumes())).toBe(before);
    await berth.attach({ volume: 'ok' });
    expect(await codeOf(berth.attach({ volume: 'ok' }))).toBe('CONFLICT');
    expect(await codeOf(berth.deleteVolume('ok'))).toBe('CONFLICT');
    expect(loopDevicesUnder(t.dataDir)).toHaveLength(1);
    await berth.detach({ volume: 'ok' });
    expect(await codeOf(berth.detach({ volume: 'ok' }))).toBe('CONFLICT');
    await berth.deleteVolume('ok');
    expect(await berth.listVolumes()).toEqual([]);
  });

  it('a read-only attach gives a read-only device', async () => {
    const berth = await t.open();
    await berth.createVolume({ name: 'ro', sizeBytes: 16 * MiB });
    const { attachment } = await berth.attach({ volume: 'ro', mode: 'ro' });
    expect(attachment?.mode).toBe('ro');
    expect(attachment?.connectionInfo?.data.access_mode).toBe('ro');
    const list = JSON.parse(execFileSync('losetup', ['--json', '--list', attachment!.device!.path], { encoding: 'utf8' })) as {
      loopdevices: Array<{ ro: boolean | string }>;
    };
    expect([true, '1'].includes(list.loopdevices[0]!.ro)).toBe(true);
    await berth.detach({ volume: 'ro' });
  });

  it('an idempotency key returns the first operation', async () => {
    const berth = await t.open();
    await berth.createVolume({ name: 'idem', sizeBytes: 16 * MiB });
    const first = await berth.attach({ volume: 'idem', idempotencyKey: 'k1' });
    const second = await berth.attach({ volume: 'idem', idempotencyKey: 'k1' });
    expect(second.operation.id).toBe(first.operation.id);
    expect(loopDevicesUnder(t.dataDir)).toHaveLength(1);
    await berth.detach({ volume: 'idem' });
  });
});
