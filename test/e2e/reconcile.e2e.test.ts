import { spawn } from 'node:child_process';
import { closeSync, openSync, renameSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BerthService, ReconcileReport } from '@berth/core';
import { openSqliteStore } from '@berth/store';
import { detachByHand, losetupByHand, readAt, sqlite, writeAt } from '../support/host-state.js';
import { listLoopDevices, loopDevicesBacking, loopDevicesUnder } from '../support/loop-devices.js';
import { createTestBerth, linkTarget, type TestBerth } from '../support/test-berth.js';

// `berth reconcile` on the embedded default (file backend, loop transport, real loop devices):
// every kind of difference is made on purpose behind berth's back, found, and fixed.

const MiB = 1024 * 1024;
let t: TestBerth;
const handMade: string[] = [];
const tempDirs: string[] = [];

beforeEach(async () => {
  t = await createTestBerth();
});

afterEach(async () => {
  for (const device of handMade.splice(0)) detachByHand(device);
  await t.cleanup();
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

const kinds = (report: ReconcileReport): string[] => report.differences.map((d) => `${d.kind}:${d.fix}:${d.state}`);

/** What a user can list: the rows, the journal, the loop devices and the stable links. */
async function snapshot(berth: BerthService): Promise<unknown> {
  const volumes = await berth.listVolumes();
  return {
    volumes,
    attachments: await berth.listAttachments(),
    operations: await Promise.all((await berth.listOperations()).map((o) => berth.getOperation(o.id))),
    // This test's own (others run on the machine at the same time: CI's packages, people).
    loops: listLoopDevices().filter((d) => d.backFile.startsWith(`${t.dataDir}/`)),
    links: volumes.map((v) => linkTarget(`/dev/berth/${v.id}`) ?? null),
  };
}

describe('berth reconcile on the loop transport', () => {
  it("reports an available volume whose file was deleted behind berth's back, fixes nothing, and says what to do; restored, it is quiet again", async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'lost1', sizeBytes: 8 * MiB });
    await berth.createVolume({ name: 'kept1', sizeBytes: 8 * MiB });
    const file = volume.providerLocation!;
    const aside = `${file}.aside`;
    renameSync(file, aside);

    for (const dryRun of [true, false]) {
      const report = await berth.reconcile!({ dryRun });
      expect(kinds(report)).toEqual(['volume_storage_missing:none:skipped']);
      expect(report.differences[0]).toMatchObject({ volumeId: volume.id, resource: 'volume lost1' });
      expect(report.differences[0]!.detail).toContain(file);
      expect(report.differences[0]!.result).toMatch(/restore the volume's storage from a backup .*`berth volume delete lost1`/);
    }
    expect((await berth.getVolume('lost1')).status).toBe('available');
    renameSync(aside, file);
    expect(kinds(await berth.reconcile!({ dryRun: true }))).toEqual([]);
  });

  it("reports a volume whose file was cut short behind berth's back (truncate), attached and not, fixing nothing; grown back, it is quiet again", async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'cut1', sizeBytes: 8 * MiB });
    await berth.createVolume({ name: 'whole1', sizeBytes: 8 * MiB });
    const file = volume.providerLocation!;
    truncateSync(file, 4 * MiB);
    for (const dryRun of [true, false]) {
      const report = await berth.reconcile!({ dryRun });
      expect(kinds(report)).toEqual(['volume_storage_short:none:skipped']);
      expect(report.differences[0]).toMatchObject({ volumeId: volume.id, resource: 'volume cut1' });
      expect(report.differences[0]!.detail).toBe(`volume cut1 is available and ${8 * MiB} bytes, but backend file has only ${4 * MiB} bytes of its storage (${file}): an attach would be refused`);
      expect(report.differences[0]!.result).toMatch(/what was past 4194304 bytes is gone .*truncate -s 8388608/);
    }
    truncateSync(file, 8 * MiB);
    await berth.attach({ volume: 'cut1' });
    try {
      truncateSync(file, 2 * MiB);
      const attached = await berth.reconcile!({ dryRun: true });
      expect(kinds(attached)).toEqual(['volume_storage_short:none:skipped']);
      expect(attached.differences[0]!.detail).toMatch(/is in-use .* only 2097152 bytes .*reads zeros past the cut/);
      truncateSync(file, 8 * MiB);
      expect(kinds(await berth.reconcile!({ dryRun: true }))).toEqual([]);
    } finally {
      truncateSync(file, 8 * MiB);
      await berth.detach({ volume: 'cut1' });
    }
  });

  it('disconnects a loop device whose attachment row was deleted behind berth\'s back, and recomputes the volume', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'orphan', sizeBytes: 16 * MiB });
    const { attachment } = await berth.attach({ volume: 'orphan' });
    const device = attachment!.device!.path;
    sqlite(t.dataDir, `DELETE FROM attachments WHERE id = '${attachment!.id}'`);

    const planned = await berth.reconcile!({ dryRun: true });
    expect(kinds(planned)).toEqual(['device_without_attachment:disconnect:planned', 'volume_status_mismatch:recompute_status:planned']);
    expect(planned.differences[0]).toMatchObject({ resource: `${device} (backing ${volume.providerLocation})`, volumeId: volume.id });
    expect(planned.operationId).toBeNull();

    const applied = await berth.reconcile!();
    expect(kinds(applied)).toEqual(['device_without_attachment:disconnect:applied', 'volume_status_mismatch:recompute_status:applied']);
    expect(applied.counts).toEqual({ found: 2, applied: 2, failed: 0, skipped: 0 });
    expect(loopDevicesBacking(volume.providerLocation!)).toEqual([]);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
    // The lost row's own link too: nothing names the attachment any more, the link led to the device.
    expect(linkTarget(`/dev/berth/${attachment!.id}`)).toBeUndefined();
    expect((await berth.getVolume('orphan')).status).toBe('available');

    // Each fix is a journalled step of one `reconcile` operation.
    const operation = await berth.getOperation(applied.operationId!);
    expect(operation).toMatchObject({ kind: 'reconcile', state: 'succeeded' });
    expect(operation.steps.map((s) => `${s.name}:${s.state}`)).toEqual(['disconnect:done', 'recompute_status:done']);
    expect(operation.steps[1]!.data).toMatchObject({ volumeId: volume.id, result: 'in-use → available' });

    expect((await berth.reconcile!({ dryRun: true })).differences).toEqual([]);
    // The volume is usable again.
    await berth.attach({ volume: 'orphan' });
    await berth.detach({ volume: 'orphan' });
  });

  it('disconnects a volume file someone attached by hand; never touches a device over a part of it (an offset: finding 9), over another file, or held open', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'byhand', sizeBytes: 16 * MiB });
    const held = await berth.createVolume({ name: 'held', sizeBytes: 16 * MiB });
    const own = losetupByHand(volume.providerLocation!);
    handMade.push(own);
    const partial = losetupByHand(volume.providerLocation!, 4096);
    handMade.push(partial);
    const mounted = losetupByHand(held.providerLocation!);
    handMade.push(mounted);
    const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-foreign-'));
    tempDirs.push(dir);
    const foreignFile = path.join(dir, 'not-berths.img');
    writeFileSync(foreignFile, Buffer.alloc(4 * MiB));
    const foreign = losetupByHand(foreignFile);
    handMade.push(foreign);

    const planned = await berth.reconcile!({ dryRun: true });
    expect(kinds(planned).sort()).toEqual(['device_without_attachment:disconnect:planned', 'device_without_attachment:disconnect:planned']);
    expect(planned.differences.map((d) => d.resource).sort()).toEqual([`${mounted} (backing ${held.providerLocation})`, `${own} (backing ${volume.providerLocation})`].sort());
    expect(JSON.stringify(planned)).not.toContain(foreignFile);
    // A device over a part of the file is not berth's kind of device: not even listed (finding 9).
    expect(JSON.stringify(planned)).not.toContain(`${partial} `);

    const fd = openSync(mounted, 'r');
    const holder = spawn('sleep', ['600'], { stdio: [fd, 'ignore', 'ignore'] });
    closeSync(fd);
    try {
      const applied = await berth.reconcile!();
      const byResource = new Map(applied.differences.map((d) => [d.resource, d]));
      expect(byResource.get(`${own} (backing ${volume.providerLocation})`)?.state).toBe('applied');
      // Held open: left alone, and the report says who holds it.
      const refused = byResource.get(`${mounted} (backing ${held.providerLocation})`);
      expect(refused?.state).toBe('failed');
      expect(refused?.result).toMatch(new RegExp(`process ${holder.pid}`));
    } finally {
      holder.kill('SIGKILL');
      await new Promise<void>((resolve) => holder.once('exit', () => resolve()));
    }
    expect(loopDevicesBacking(volume.providerLocation!)).toEqual([partial]);
    expect(loopDevicesBacking(held.providerLocation!)).toEqual([mounted]);
    expect(loopDevicesBacking(foreignFile)).toEqual([foreign]);
    expect((await berth.getVolume('byhand')).status).toBe('available');
  });

  it('finishes an attachment an older berth left reserved with its operation already closed (finding 4), and one left error_detaching', async () => {
    const berth = await t.open();
    const stuckVolume = await berth.createVolume({ name: 'stuck', sizeBytes: 16 * MiB });
    const failedVolume = await berth.createVolume({ name: 'failed', sizeBytes: 16 * MiB });
    const server = await berth.createServer({ name: 's1' });
    const { attachment: failing } = await berth.attach({ volume: 'failed' });
    await berth.close();
    const store = await openSqliteStore({ filename: path.join(t.dataDir, 'berth.db') });
    try {
      // The old attach: reserve committed, killed before linking, and the old recovery closed the operation.
      const op = await store.operations.create({ kind: 'attach', volumeId: stuckVolume.id, serverId: server.id, hostId: server.hostId, deadlineAt: new Date().toISOString() });
      const seq = await store.operations.startStep(op.id, 'reserve', 'do');
      await store.operations.endStep(op.id, seq, { state: 'done' });
      await store.volumes.transition(stuckVolume.id, ['available'], 'reserved');
      await store.attachments.create({ volumeId: stuckVolume.id, serverId: server.id, hostId: server.hostId, mode: 'rw' });
      await store.operations.finish(op.id, { state: 'rolled_back' });
      // A detach that failed past its point of no return.
      await store.attachments.transition(failing!.id, ['attached'], 'error_detaching', { error: 'a detach failed half-way' });
      await store.volumes.transition(failedVolume.id, ['in-use'], 'error');
    } finally {
      await store.close();
    }
    const again = await t.open();
    const planned = await again.reconcile!({ dryRun: true });
    expect(kinds(planned).sort()).toEqual(['attachment_error:disconnect:planned', 'attachment_stuck:disconnect:planned']);
    const applied = await again.reconcile!();
    expect(applied.counts).toMatchObject({ applied: 2, failed: 0 });
    expect((await again.listVolumes()).map((v) => `${v.name}:${v.status}`).sort()).toEqual(['failed:available', 'stuck:available']);
    expect(await again.listAttachments()).toEqual([]);
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
    expect(linkTarget(`/dev/berth/${failedVolume.id}`)).toBeUndefined();
    expect((await again.reconcile!({ dryRun: true })).differences).toEqual([]);
  });

  it('reconnects an attachment whose loop device was detached by hand: the data and the stable link follow', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'lost', sizeBytes: 16 * MiB });
    const { attachment } = await berth.attach({ volume: 'lost' });
    const marker = Buffer.from('written before the device was lost'.padEnd(4096, '.'));
    writeAt(attachment!.device!.path, marker, 3 * MiB);
    detachByHand(attachment!.device!.path);
    expect(loopDevicesBacking(volume.providerLocation!)).toEqual([]);

    const planned = await berth.reconcile!({ dryRun: true });
    expect(kinds(planned)).toEqual(['attachment_device_gone:reconnect:planned']);
    expect(planned.differences[0]!.attachmentId).toBe(attachment!.id);

    const applied = await berth.reconcile!();
    expect(kinds(applied)).toEqual(['attachment_device_gone:reconnect:applied']);
    const [device] = loopDevicesBacking(volume.providerLocation!);
    expect(device).toBeDefined();
    expect(applied.differences[0]!.result).toBe(`reconnected at ${device}`);
    const [now] = await berth.listAttachments({ volume: 'lost' });
    expect(now).toMatchObject({ id: attachment!.id, status: 'attached', device: { path: device } });
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(device);
    expect(readAt(`/dev/berth/${volume.id}`, marker.length, 3 * MiB).equals(marker)).toBe(true);
    expect((await berth.getVolume('lost')).status).toBe('in-use');

    await berth.detach({ volume: 'lost' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('points stable links re-pointed at another volume\'s device, or removed, back at the recorded device; the other volume\'s links and data stay', async () => {
    const berth = await t.open();
    const one = await berth.createVolume({ name: 'one', sizeBytes: 16 * MiB });
    await berth.createVolume({ name: 'two', sizeBytes: 16 * MiB });
    const a = (await berth.attach({ volume: 'one' })).attachment!;
    const b = (await berth.attach({ volume: 'two' })).attachment!;
    // Something outside berth (a script, a tmpfiles rule) re-points one's links at two's device:
    // whoever follows them writes on the wrong disk.
    for (const link of [`/dev/berth/${a.id}`, `/dev/berth/${one.id}`]) {
      rmSync(link);
      symlinkSync(b.device!.path, link);
    }
    const before = await snapshot(berth);
    const planned = await berth.reconcile!({ dryRun: true });
    expect(kinds(planned)).toEqual(['attachment_not_published:republish:planned']);
    expect(planned.differences[0]!.detail).toContain(`leads to ${b.device!.path}, not ${a.device!.path}`);
    expect(await snapshot(berth)).toEqual(before);

    expect(kinds(await berth.reconcile!())).toEqual(['attachment_not_published:republish:applied']);
    expect(linkTarget(`/dev/berth/${a.id}`)).toBe(a.device!.path);
    expect(linkTarget(`/dev/berth/${one.id}`)).toBe(a.device!.path);
    expect(linkTarget(`/dev/berth/${b.id}`)).toBe(b.device!.path);
    const marker = Buffer.from('written through the repaired link'.padEnd(4096, '.'));
    writeAt(`/dev/berth/${one.id}`, marker, MiB);
    expect(readAt(a.device!.path, marker.length, MiB).equals(marker)).toBe(true);
    expect(readAt(b.device!.path, marker.length, MiB).equals(marker)).toBe(false);

    // Removed: made again.
    rmSync(`/dev/berth/${a.id}`);
    expect(kinds(await berth.reconcile!())).toEqual(['attachment_not_published:republish:applied']);
    expect(linkTarget(`/dev/berth/${a.id}`)).toBe(a.device!.path);
    expect((await berth.reconcile!({ dryRun: true })).differences).toEqual([]);

    await berth.detach({ volume: 'one' });
    await berth.detach({ volume: 'two' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('fails an attachment it cannot reconnect (error_detaching with the reason, volume error); detach --force finishes it', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'gone', sizeBytes: 16 * MiB });
    const { attachment } = await berth.attach({ volume: 'gone' });
    detachByHand(attachment!.device!.path);
    const file = volume.providerLocation!;
    renameSync(file, `${file}.moved`);
    try {
      const applied = await berth.reconcile!();
      expect(kinds(applied)).toEqual(['attachment_device_gone:reconnect:failed']);
      expect(applied.differences[0]!.result).toMatch(/error_detaching/);
      const [failed] = await berth.listAttachments({ volume: 'gone' });
      expect(failed).toMatchObject({ status: 'error_detaching' });
      expect(failed!.error).toMatch(/its device was gone and reconnecting failed/);
      expect((await berth.getVolume('gone')).status).toBe('error');
      // The link to a device that may become another volume's is gone.
      expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
      const operation = await berth.getOperation(applied.operationId!);
      expect(operation.state).toBe('failed');
      expect(operation.steps.map((s) => `${s.name}:${s.state}`)).toEqual(['reconnect:failed']);
      // The next reconcile would finish it as `detach --force` does.
      expect(kinds(await berth.reconcile!({ dryRun: true }))).toEqual(['attachment_error:disconnect:planned']);
    } finally {
      renameSync(`${file}.moved`, file);
    }
    await berth.detach({ volume: 'gone', force: true });
    expect((await berth.getVolume('gone')).status).toBe('available');
    expect(await berth.listAttachments({ volume: 'gone' })).toEqual([]);
  });

  // Found by an explorer: with a volume file deleted (`rm`) or replaced (a new file moved over it)
  // behind berth's back, the loop device holds the only copy of the data. Reconcile said "No
  // differences" and a plain detach threw the data away with the device.
  it('reports an attachment whose volume file was deleted or replaced (no fix), a plain detach refuses it and leaves it attached, --force detaches it', async () => {
    const berth = await t.open();
    const deleted = await berth.createVolume({ name: 'deleted', sizeBytes: 16 * MiB });
    const replaced = await berth.createVolume({ name: 'replaced', sizeBytes: 16 * MiB });
    const a = (await berth.attach({ volume: 'deleted' })).attachment!;
    const c = (await berth.attach({ volume: 'replaced' })).attachment!;
    const marker = Buffer.from('written since attach: only in the loop device now'.padEnd(4096, '.'));
    writeAt(a.device!.path, marker, 2 * MiB);
    writeAt(c.device!.path, marker, 2 * MiB);
    rmSync(deleted.providerLocation!);
    const fresh = path.join(t.dataDir, 'fresh.img');
    writeFileSync(fresh, Buffer.alloc(4096));
    renameSync(fresh, replaced.providerLocation!);

    const before = await snapshot(berth);
    const planned = await berth.reconcile!({ dryRun: true });
    expect(kinds(planned)).toEqual(['attachment_storage_gone:none:skipped', 'attachment_storage_gone:none:skipped']);
    const byAttachment = new Map(planned.differences.map((d) => [d.attachmentId, d]));
    expect(byAttachment.get(a.id)).toMatchObject({ volumeId: deleted.id, detail: expect.stringContaining(`${deleted.providerLocation} was deleted`) });
    expect(byAttachment.get(c.id)).toMatchObject({ volumeId: replaced.id, detail: expect.stringContaining(`${replaced.providerLocation} was replaced`) });
    expect(byAttachment.get(a.id)!.result).toContain(`dd if=${a.device!.path} of=<somewhere> bs=1M`);
    expect(byAttachment.get(a.id)!.result).toContain('`berth detach deleted --force`');
    expect(byAttachment.get(c.id)!.result).toContain('`berth detach replaced --force`');
    expect(await snapshot(berth)).toEqual(before);
    // Applied: nothing to apply, nothing journalled, nothing changed.
    const applied = await berth.reconcile!();
    expect(kinds(applied)).toEqual(['attachment_storage_gone:none:skipped', 'attachment_storage_gone:none:skipped']);
    expect(applied.operationId).toBeNull();
    expect(await snapshot(berth)).toEqual(before);

    for (const [volume, attachment] of [[deleted, a], [replaced, c]] as const) {
      const refused = await berth.detach({ volume: volume.name }).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(refused).toMatchObject({ code: 'CONFLICT', hint: expect.stringContaining(`dd if=${attachment.device!.path}`) });
      // Still attached, the volume in use, and the data readable through the device and its link.
      expect((await berth.listAttachments({ volume: volume.name })).map((x) => `${x.id}:${x.status}`)).toEqual([`${attachment.id}:attached`]);
      expect((await berth.getVolume(volume.name)).status).toBe('in-use');
      expect(readAt(attachment.device!.path, marker.length, 2 * MiB).equals(marker)).toBe(true);
      expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(attachment.device!.path);
    }
    expect(loopDevicesUnder(t.dataDir).sort()).toEqual([a.device!.path, c.device!.path].sort());

    await berth.detach({ volume: 'deleted', force: true });
    await berth.detach({ volume: 'replaced', force: true });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
    expect((await berth.listVolumes()).map((v) => `${v.name}:${v.status}`).sort()).toEqual(['deleted:available', 'replaced:available']);
    // The deleted file's volume has no storage now (its data went with the forced detach): said,
    // not fixed. The replaced one has a file again — what the `mv` put there, 4 KiB of a 16 MiB
    // volume: said as a volume cut short, not fixed.
    const after = await berth.reconcile!({ dryRun: true });
    expect(after.differences.map((d) => `${d.kind}:${d.resource}:${d.state}`)).toEqual(['volume_storage_missing:volume deleted:skipped', 'volume_storage_short:volume replaced:skipped']);
  });

  it('recomputes volume statuses written behind berth\'s back, and leaves a failed delete\'s error alone', async () => {
    const berth = await t.open();
    const attached = await berth.createVolume({ name: 'was-in-use', sizeBytes: 16 * MiB });
    const idle = await berth.createVolume({ name: 'was-available', sizeBytes: 16 * MiB });
    const failedDelete = await berth.createVolume({ name: 'failed-delete', sizeBytes: 16 * MiB });
    await berth.attach({ volume: 'was-in-use' });
    sqlite(t.dataDir, `UPDATE volumes SET status = 'available' WHERE id = '${attached.id}'`);
    sqlite(t.dataDir, `UPDATE volumes SET status = 'in-use' WHERE id = '${idle.id}'`);
    sqlite(t.dataDir, `UPDATE volumes SET status = 'error' WHERE id = '${failedDelete.id}'`);

    const planned = await berth.reconcile!({ dryRun: true });
    expect(planned.differences.map((d) => [d.volumeId, d.kind, d.fixDetail])).toEqual([
      [attached.id, 'volume_status_mismatch', 'set it to in-use (compare-and-swap from available)'],
      [idle.id, 'volume_status_mismatch', 'set it to available (compare-and-swap from in-use)'],
    ]);
    const applied = await berth.reconcile!();
    expect(applied.counts.applied).toBe(2);
    expect((await berth.getVolume('was-in-use')).status).toBe('in-use');
    expect((await berth.getVolume('was-available')).status).toBe('available');
    expect((await berth.getVolume('failed-delete')).status).toBe('error');
    const steps = (await berth.getOperation(applied.operationId!)).steps;
    expect(steps.map((s) => s.data?.result)).toEqual(['available → in-use', 'in-use → available']);
    await berth.detach({ volume: 'was-in-use' });
  });

  it('--dry-run changes nothing: the store, the journal, the loop devices and the links are the same before and after', async () => {
    const berth = await t.open();
    const a = await berth.createVolume({ name: 'a', sizeBytes: 16 * MiB });
    const b = await berth.createVolume({ name: 'b', sizeBytes: 16 * MiB });
    const c = await berth.createVolume({ name: 'c', sizeBytes: 16 * MiB });
    const d = await berth.createVolume({ name: 'd', sizeBytes: 16 * MiB });
    const { attachment: rowDeleted } = await berth.attach({ volume: 'a' });
    sqlite(t.dataDir, `DELETE FROM attachments WHERE id = '${rowDeleted!.id}'`);
    handMade.push(losetupByHand(b.providerLocation!));
    const { attachment: lost } = await berth.attach({ volume: 'c' });
    detachByHand(lost!.device!.path);
    sqlite(t.dataDir, `UPDATE volumes SET status = 'in-use' WHERE id = '${d.id}'`);

    const before = await snapshot(berth);
    const planned = await berth.reconcile!({ dryRun: true });
    expect(planned.differences.map((x) => `${x.volumeId === a.id ? 'a' : x.volumeId === b.id ? 'b' : x.volumeId === c.id ? 'c' : 'd'}:${x.kind}`).sort()).toEqual([
      'a:device_without_attachment',
      'a:volume_status_mismatch',
      'b:device_without_attachment',
      'c:attachment_device_gone',
      'd:volume_status_mismatch',
    ]);
    expect(planned.differences.every((x) => x.state === 'planned')).toBe(true);
    expect(await snapshot(berth)).toEqual(before);

    const applied = await berth.reconcile!();
    expect(applied.counts).toMatchObject({ found: 5, applied: 5, failed: 0 });
    expect((await berth.reconcile!({ dryRun: true })).differences).toEqual([]);
    expect(loopDevicesBacking(a.providerLocation!)).toEqual([]);
    expect(loopDevicesBacking(b.providerLocation!)).toEqual([]);
    expect(loopDevicesBacking(c.providerLocation!)).toHaveLength(1);
    expect((await berth.listVolumes()).map((v) => `${v.name}:${v.status}`).sort()).toEqual(['a:available', 'b:available', 'c:in-use', 'd:available']);
    await berth.detach({ volume: 'c' });
    expect(loopDevicesBacking(c.providerLocation!)).toEqual([]);
  });
});
