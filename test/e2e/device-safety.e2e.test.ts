import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger, type BerthService } from '@berth/core';
import { createHostServices } from '@berth/host';
import { openSqliteStore } from '@berth/store';
import { openBerth } from '@berth/runtime';
import { LOCK_HOLDER, readAt, writeAt } from '../support/host-state.js';
import { holdOpen as holdOpenDevice, loopDevicesBacking, loopDevicesUnder, stopChild } from '../support/loop-devices.js';
import { createTestBerth, linkTarget, rejection, type TestBerth } from '../support/test-berth.js';

// Issue 9's findings 1, 2, 3, 5 and 6, each made to happen for real (real loop devices, a real
// process holding a device open, another process holding the database's write lock) and shown to
// be impossible now. Findings 4, 8 and 9 are in reconcile.e2e.test.ts and environment.e2e.test.ts.

const MiB = 1024 * 1024;
let t: TestBerth;
const children: ChildProcess[] = [];

beforeEach(async () => {
  t = await createTestBerth();
});

afterEach(async () => {
  for (const child of children.splice(0)) await stopChild(child);
  await t.cleanup();
});

/** A process that holds `device` open until it is killed (in afterEach at the latest). */
function holdOpen(device: string): ChildProcess {
  const child = holdOpenDevice(device);
  children.push(child);
  return child;
}

/** A lock-holder process, started ahead (node's start is slow on a busy machine), that takes the lock on `take()`. */
async function lockHolder(dataDir: string, holdMs: number): Promise<{ take(): Promise<void>; child: ChildProcess; exited: Promise<void> }> {
  const child = spawn(process.execPath, [LOCK_HOLDER, path.join(dataDir, 'berth.db'), String(holdMs), '--on-stdin'], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  // Listened for from the start: under load the holder may be gone before the test asks.
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    lines.push(...chunk.split('\n').filter(Boolean));
    for (const wake of waiters.splice(0)) wake();
  });
  const line = async (want: string): Promise<void> => {
    while (!lines.includes(want)) await new Promise<void>((resolve) => waiters.push(resolve));
  };
  await line('ready');
  return {
    child,
    exited,
    async take() {
      child.stdin!.write('go\n');
      await line('locked');
    },
  };
}


/** Whether the kernel will free `device` at its last close (losetup --detach on a busy device sets it). */
function autoclearOf(device: string): boolean | undefined {
  const out = execFileSync('losetup', ['--json', '--list'], { encoding: 'utf8' }).trim();
  if (!out) return undefined;
  return (JSON.parse(out) as { loopdevices: Array<{ name: string; autoclear: boolean }> }).loopdevices.find((d) => d.name === device)?.autoclear;
}

describe('one volume, several attachments on one host (findings 1 and 2)', () => {
  it('a failed attach never detaches the device another attachment uses (finding 1)', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'shared', sizeBytes: 16 * MiB, multiattach: true });
    await berth.createServer({ name: 'web-1' });
    const { attachment: first } = await berth.attach({ volume: 'shared', server: 'web-1' });
    const device = first!.device!.path;

    // A read-only attach would share that read-write device: refused, and its undo touches nothing.
    const refused = await rejection(berth.attach({ volume: 'shared', mode: 'ro' }));
    expect(refused.code).toBe('CONFLICT');
    expect(refused.hint).toMatch(/--mode rw/);
    expect(loopDevicesBacking(volume.providerLocation!)).toEqual([device]);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(device);
    expect(linkTarget(`/dev/berth/${first!.id}`)).toBe(device);
    const [still] = await berth.listAttachments({ volume: 'shared' });
    expect(still).toMatchObject({ id: first!.id, status: 'attached', device: { path: device } });
    // The bytes still go where web-1 expects them.
    const marker = Buffer.from('still web-1'.padEnd(4096, '.'));
    writeAt(`/dev/berth/${first!.id}`, marker, MiB);
    expect(readAt(volume.providerLocation!, marker.length, MiB).equals(marker)).toBe(true);
    await berth.detach({ volume: 'shared', server: 'web-1' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('attachments of one volume on one host share one device; detaching one keeps it for the other (finding 2)', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'shared', sizeBytes: 16 * MiB, multiattach: true });
    await berth.createServer({ name: 'web-1' });
    await berth.createServer({ name: 'web-2' });
    const { attachment: one } = await berth.attach({ volume: 'shared', server: 'web-1' });
    const { attachment: two } = await berth.attach({ volume: 'shared', server: 'web-2' });
    const device = one!.device!.path;
    expect(two!.device).toEqual(one!.device);
    expect(loopDevicesBacking(volume.providerLocation!)).toEqual([device]);
    // Each attachment has its own link; the volume's names the one shared device.
    expect(one!.publishedPath).toBe(`/dev/berth/${one!.id}`);
    expect(two!.publishedPath).toBe(`/dev/berth/${two!.id}`);
    expect([linkTarget(`/dev/berth/${one!.id}`), linkTarget(`/dev/berth/${two!.id}`), linkTarget(`/dev/berth/${volume.id}`)]).toEqual([device, device, device]);

    await berth.detach({ volume: 'shared', server: 'web-1' });
    expect(loopDevicesBacking(volume.providerLocation!)).toEqual([device]);
    expect(linkTarget(`/dev/berth/${one!.id}`)).toBeUndefined();
    expect(linkTarget(`/dev/berth/${two!.id}`)).toBe(device);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(device);
    const marker = Buffer.from('web-2 after web-1 left'.padEnd(4096, '#'));
    writeAt(`/dev/berth/${two!.id}`, marker, 2 * MiB);
    expect(readAt(volume.providerLocation!, marker.length, 2 * MiB).equals(marker)).toBe(true);

    await berth.detach({ volume: 'shared', server: 'web-2' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
    expect(linkTarget(`/dev/berth/${two!.id}`)).toBeUndefined();
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
    expect((await berth.getVolume('shared')).status).toBe('available');
    expect((await berth.reconcile!({ dryRun: true })).differences).toEqual([]);
  });

  it('two processes attaching one volume to two servers at once make one device', async () => {
    const setup = await t.open();
    const volume = await setup.createVolume({ name: 'shared', sizeBytes: 16 * MiB, multiattach: true });
    await setup.createServer({ name: 'web-1' });
    await setup.createServer({ name: 'web-2' });
    await setup.close();
    // Two services on one data dir: two stores, two in-process locks, as two `berth attach` processes.
    const a = await openBerth({ dataDir: t.dataDir, logger: silentLogger });
    const b = await openBerth({ dataDir: t.dataDir, logger: silentLogger });
    try {
      const [one, two] = await Promise.all([a.attach({ volume: 'shared', server: 'web-1' }), b.attach({ volume: 'shared', server: 'web-2' })]);
      expect(one.attachment!.device!.path).toBe(two.attachment!.device!.path);
      expect(loopDevicesBacking(volume.providerLocation!)).toHaveLength(1);
      await Promise.all([a.detach({ volume: 'shared', server: 'web-1' }), b.detach({ volume: 'shared', server: 'web-2' })]);
      expect(loopDevicesUnder(t.dataDir)).toEqual([]);
      expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('a device held open (finding 3)', () => {
  it('detach refuses while a process holds the device, and the attachment stays attached and usable (no autoclear)', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'a2', sizeBytes: 16 * MiB });
    const { attachment } = await berth.attach({ volume: 'a2' });
    const device = attachment!.device!.path;
    const holder = holdOpen(device);
    const refused = await rejection(berth.detach({ volume: 'a2' }));
    expect(refused.code).toBe('CONFLICT');
    expect(refused.message).toMatch(new RegExp(`process ${holder.pid}`));
    expect(refused.hint).toMatch(/fuser -v/);
    expect((await berth.listAttachments({ volume: 'a2' }))[0]).toMatchObject({ status: 'attached', device: { path: device } });
    expect((await berth.getVolume('a2')).status).toBe('in-use');
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(device);
    expect(autoclearOf(device)).toBe(false);
    await stopChild(holder);
    // The device is still the volume's: detaching now works.
    await berth.detach({ volume: 'a2' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('with berth-loop-detach the kernel sees every holder: without fuser on PATH a held device is still refused busy, untouched, and stays attached', async () => {
    const bin = path.join(t.dataDir, 'bin-without-fuser');
    mkdirSync(bin);
    for (const tool of ['losetup', 'blockdev']) symlinkSync(`/usr/sbin/${tool}`, path.join(bin, tool));
    writeFileSync(path.join(t.dataDir, 'config.json'), JSON.stringify({ pluginOptions: { '@berth/driver-loop': { deviceTimeoutMs: 500, holderGraceMs: 300 } } }));
    const host = createHostServices({ env: { PATH: bin } });
    const berth: BerthService = await openBerth({ dataDir: t.dataDir, logger: silentLogger, host });
    try {
      await berth.createVolume({ name: 'held', sizeBytes: 16 * MiB });
      const { attachment } = await berth.attach({ volume: 'held' });
      const device = attachment!.device!.path;
      const holder = holdOpen(device);
      const refused = await rejection(berth.detach({ volume: 'held' }));
      expect(refused.code).toBe('CONFLICT');
      expect(refused.message).toMatch(/is busy/);
      expect((await berth.listAttachments({ volume: 'held' }))[0]).toMatchObject({ status: 'attached' });
      expect(autoclearOf(device)).toBe(false);
      await stopChild(holder);
      await berth.detach({ volume: 'held' });
      expect(await berth.listAttachments({ volume: 'held' })).toEqual([]);
    } finally {
      await berth.close();
    }
  });

  it('a holder the check cannot see (nativeDetach off, no fuser): the detach ends error_detaching (no lie), and after the kernel frees the number another volume gets, detach --force never touches it', async () => {
    // No fuser on this berth's PATH and the old way of detaching: the busy check finds no holder,
    // as with a holder it cannot see.
    const bin = path.join(t.dataDir, 'bin-without-fuser');
    mkdirSync(bin);
    for (const tool of ['losetup', 'blockdev']) symlinkSync(`/usr/sbin/${tool}`, path.join(bin, tool));
    writeFileSync(path.join(t.dataDir, 'config.json'), JSON.stringify({ pluginOptions: { '@berth/driver-loop': { deviceTimeoutMs: 500, nativeDetach: 'off' } } }));
    const host = createHostServices({ env: { PATH: bin } });
    const berth: BerthService = await openBerth({ dataDir: t.dataDir, logger: silentLogger, host });
    try {
      const a2 = await berth.createVolume({ name: 'a2', sizeBytes: 16 * MiB });
      const other = await berth.createVolume({ name: 'other', sizeBytes: 16 * MiB });
      const { attachment } = await berth.attach({ volume: 'a2' });
      const device = attachment!.device!.path;
      const holder = holdOpen(device);
      const failed = await rejection(berth.detach({ volume: 'a2' }));
      expect(failed.message).toMatch(/error_detaching/);
      expect(failed.hint).toMatch(/berth detach a2 --force/);
      // Not rolled back into `attached`: the kernel will free the device when the holder closes it.
      expect((await berth.listAttachments({ volume: 'a2' }))[0]).toMatchObject({ status: 'error_detaching' });
      expect((await berth.getVolume('a2')).status).toBe('error');
      expect(linkTarget(`/dev/berth/${a2.id}`)).toBeUndefined();
      expect(autoclearOf(device)).toBe(true);
      await stopChild(holder);
      await createHostServices().waiter.waitUntil('/dev', async () => (loopDevicesBacking(a2.providerLocation!).length === 0 ? true : undefined), { timeoutMs: 10_000 });

      // The kernel gives the number to the next file attached: here, the other volume's, on that very node.
      execFileSync('losetup', [device, other.providerLocation!]);
      const mark = Buffer.from('other volume'.padEnd(4096, '!'));
      writeAt(device, mark, 3 * MiB);
      await berth.detach({ volume: 'a2', force: true });
      expect((await berth.getVolume('a2')).status).toBe('available');
      expect(await berth.listAttachments({ volume: 'a2' })).toEqual([]);
      // The other volume's device was not touched, and no link of a2's leads to it.
      expect(loopDevicesBacking(other.providerLocation!)).toEqual([device]);
      expect(linkTarget(`/dev/berth/${a2.id}`)).toBeUndefined();
      expect(linkTarget(`/dev/berth/${attachment!.id}`)).toBeUndefined();
      expect(readAt(other.providerLocation!, mark.length, 3 * MiB).equals(mark)).toBe(true);
      expect(readAt(a2.providerLocation!, mark.length, 3 * MiB).equals(Buffer.alloc(mark.length))).toBe(true);
    } finally {
      await berth.close();
    }
  });
});

describe('the database write lock held by another process (finding 5)', () => {
  it('journal writes wait for it (retried within the deadline): the attach finishes instead of ending rolled_back with its reservation left', async () => {
    writeFileSync(path.join(t.dataDir, 'config.json'), JSON.stringify({ store: { kind: 'sqlite', busyTimeoutMs: 200 } }));
    const berth = await t.open({ BERTH_FAULTS: 'attach.reserve.after=delay:1500' });
    await berth.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const holder = await lockHolder(t.dataDir, 2000);
    const started = await berth.startAttach({ volume: 'v' });
    await createHostServices().waiter.waitUntil(
      '/',
      // The reservation is committed; the pipeline now waits at attach.reserve.after.
      async () => ((await berth.listAttachments({ volume: 'v' })).length > 0 ? true : undefined),
      { timeoutMs: 10_000 },
    );
    // Another process takes the write lock for 2 s, ten times the busy timeout, as `dispatch` is journalled.
    await holder.take();
    const outcome = await started.done;
    expect(outcome.operation.state).toBe('succeeded');
    expect(outcome.volume.status).toBe('in-use');
    await berth.detach({ volume: 'v' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('past the deadline the attach fails, and is never called rolled_back while its reservation is left: recovery or reconcile finishes it', async () => {
    writeFileSync(path.join(t.dataDir, 'config.json'), JSON.stringify({ store: { kind: 'sqlite', busyTimeoutMs: 200 }, operationTimeoutMs: 4000, undoTimeoutMs: 1000 }));
    // The pipeline waits after its reserve while the other process takes the lock, then finds it held past its deadline.
    const berth = await t.open({ BERTH_FAULTS: 'attach.reserve.after=delay:2500' });
    await berth.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const holder = await lockHolder(t.dataDir, 6000);
    const started = await berth.startAttach({ volume: 'v' });
    await createHostServices().waiter.waitUntil(
      '/',
      // The reservation is committed; the pipeline now waits at attach.reserve.after.
      async () => ((await berth.listAttachments({ volume: 'v' })).length > 0 ? true : undefined),
      { timeoutMs: 10_000 },
    );
    await holder.take();
    const failed = await rejection(started.done);
    expect(failed.code).toBe('TIMEOUT');
    await holder.exited;
    const operation = await berth.getOperation(started.operation.id);
    const attachments = await berth.listAttachments({ volume: 'v' });
    // Either the undo ran and says so, or the operation is still running for recovery: never
    // `rolled_back` with the reservation still there (finding 5).
    if (operation.state === 'rolled_back') expect(attachments).toEqual([]);
    // What is left is found: a running operation by recovery, a failed one's reservation by reconcile.
    await berth.recover!();
    await berth.reconcile!();
    expect(await berth.listOperations({ state: 'running' })).toEqual([]);
    expect(await berth.listAttachments({ volume: 'v' })).toEqual([]);
    expect((await berth.getVolume('v')).status).toBe('available');
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });
});

describe('an older berth\'s half-written records (findings 4 and 6)', () => {
  it('a detach killed between deleting the attachment and recomputing the volume: recovery recomputes it (finding 6)', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const { attachment, operation: attach } = await berth.attach({ volume: 'v' });
    await berth.detach({ volume: 'v' });
    await berth.close();
    // What the old two-write delete_attachment left when killed in between: the volume `detaching`,
    // no attachment, the detach operation running with a dead owner.
    const store = await openSqliteStore({ filename: path.join(t.dataDir, 'berth.db') });
    try {
      await store.volumes.transition(volume.id, ['available'], 'error');
      await store.volumes.transition(volume.id, ['error'], 'detaching');
      const op = await store.operations.create({
        kind: 'detach',
        volumeId: volume.id,
        serverId: attachment!.serverId,
        attachmentId: attachment!.id,
        hostId: attachment!.hostId,
        owner: `999999999@${(await import('node:os')).hostname()}`,
        deadlineAt: new Date(Date.now() + 60_000).toISOString(),
      });
      for (const step of ['begin_detaching', 'dispatch', 'unpublish', 'disconnect', 'terminate']) {
        const seq = await store.operations.startStep(op.id, step, 'do');
        await store.operations.endStep(op.id, seq, { state: 'done' });
      }
      await store.operations.startStep(op.id, 'delete_attachment', 'do');
    } finally {
      await store.close();
    }
    expect(attach.state).toBe('succeeded');
    const after = await t.open();
    expect((await after.getVolume('v')).status).toBe('available');
    expect(await after.listOperations({ state: 'running' })).toEqual([]);
  });

  it('an attach killed between its reserve and the operation\'s link to it: recovery finds the reservation and undoes it (finding 4)', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const server = await berth.createServer({ name: 's1' });
    await berth.close();
    const store = await openSqliteStore({ filename: path.join(t.dataDir, 'berth.db') });
    try {
      const op = await store.operations.create({
        kind: 'attach',
        volumeId: volume.id,
        serverId: server.id,
        hostId: server.hostId,
        owner: `999999999@${(await import('node:os')).hostname()}`,
        deadlineAt: new Date(Date.now() + 60_000).toISOString(),
      });
      await store.operations.startStep(op.id, 'reserve', 'do');
      // The old reserve: its transaction committed, the second write (the link) never happened.
      await store.volumes.transition(volume.id, ['available'], 'reserved');
      await store.attachments.create({ volumeId: volume.id, serverId: server.id, hostId: server.hostId, mode: 'rw' });
    } finally {
      await store.close();
    }
    const after = await t.open();
    expect(await after.listAttachments({ volume: 'v' })).toEqual([]);
    expect((await after.getVolume('v')).status).toBe('available');
    const [op] = await after.listOperations();
    expect(op).toMatchObject({ kind: 'attach', state: 'rolled_back' });
    // The volume is usable again.
    await after.attach({ volume: 'v', server: 's1' });
    await after.detach({ volume: 'v' });
  });
});
