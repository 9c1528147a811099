import { existsSync, statSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { crashChild } from '../support/host-state.js';
import { createTestBerth, type TestBerth } from '../support/test-berth.js';

// `volume create`, `delete` and `extend` killed (SIGKILL, a real child process) while the volume
// is `creating`, `deleting` or `extending`: no operation journals them, and before, the volume
// stayed in that status for good — the name taken, delete and attach refused, `reconcile` saying
// "No differences" (found by trying berth as a user: 8 of 12 kills of a create, 4 of 10 deletes,
// 6 of 8 extends). Now the next berth process's recovery finds each one's lease free or held by a
// dead process and undoes the create, finishes the delete, gives the extend back.

const MiB = 1024 * 1024;
let t: TestBerth;

beforeEach(async () => {
  t = await createTestBerth();
});

afterEach(async () => {
  await t.cleanup();
});

describe('a killed volume create, delete or extend', () => {
  it('create killed after its row: the next process removes the row and the storage; the name is free again', async () => {
    expect(crashChild(t.dataDir, 'create', 'volume.create.after-row', { volume: 'c', args: [String(16 * MiB)] })).toBe('killed');
    const berth = await t.open();
    try {
      expect((await berth.listVolumes({})).map((v) => v.name)).toEqual([]);
      const again = await berth.createVolume({ name: 'c', sizeBytes: 16 * MiB });
      expect(again.status).toBe('available');
    } finally {
      await berth.close();
    }
  });

  it('delete killed once the volume is deleting: the next process finishes it (row and file gone)', async () => {
    const setup = await t.open();
    const volume = await setup.createVolume({ name: 'd', sizeBytes: 16 * MiB });
    await setup.close();
    expect(existsSync(volume.providerLocation!)).toBe(true);
    expect(crashChild(t.dataDir, 'delete', 'volume.delete.after-status', { volume: 'd' })).toBe('killed');
    const berth = await t.open();
    try {
      expect(await berth.listVolumes({})).toEqual([]);
      expect(existsSync(volume.providerLocation!)).toBe(false);
    } finally {
      await berth.close();
    }
  });

  it('extend killed once the volume is extending: the next process makes it available at its recorded size; extending again works', async () => {
    const setup = await t.open();
    const volume = await setup.createVolume({ name: 'e', sizeBytes: 16 * MiB });
    await setup.close();
    expect(crashChild(t.dataDir, 'extend', 'volume.extend.after-status', { volume: 'e', args: [String(32 * MiB)] })).toBe('killed');
    const berth = await t.open();
    try {
      expect(await berth.getVolume('e')).toMatchObject({ status: 'available', sizeBytes: 16 * MiB });
      const grown = await berth.extendVolume('e', 32 * MiB);
      expect(grown).toMatchObject({ status: 'available', sizeBytes: 32 * MiB });
      expect(statSync(volume.providerLocation!).size).toBe(32 * MiB);
    } finally {
      await berth.close();
    }
  });

  it('a volume being created, deleted or extended by a live process is left alone by another process\'s recovery', async () => {
    // The live command is held at its fault point (a delay) with the volume in its transitional
    // status and its lease held by this process; another berth's recovery must skip it.
    const slow = await t.open({ BERTH_FAULTS: 'volume.create.after-row=delay:1500,volume.extend.after-status=delay:1500' });
    const other = await t.open();
    const statusOf = async (name: string): Promise<string | undefined> => (await other.listVolumes({})).find((v) => v.name === name)?.status;
    const until = async (name: string, status: string): Promise<void> => {
      const deadline = Date.now() + 10_000;
      while ((await statusOf(name)) !== status) {
        if (Date.now() > deadline) throw new Error(`${name} never became ${status}`);
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    const creating = slow.createVolume({ name: 'live', sizeBytes: 4 * MiB });
    await until('live', 'creating');
    await other.recover!();
    expect(await statusOf('live')).toBe('creating');
    expect((await creating).status).toBe('available');
    const extending = slow.extendVolume('live', 8 * MiB);
    await until('live', 'extending');
    await other.recover!();
    expect(await statusOf('live')).toBe('extending');
    expect(await extending).toMatchObject({ status: 'available', sizeBytes: 8 * MiB });
  });
});
