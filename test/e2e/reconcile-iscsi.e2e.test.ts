import { closeSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BerthService, ReconcileReport } from '@berth/core';
import { sqlite } from '../support/host-state.js';
import { createSimIscsiBerth, type SimIscsiBerth } from '../support/sim-iscsi-berth.js';
import { linkTarget } from '../support/test-berth.js';

// `berth reconcile` with the tgt backend (a private tgtd) and the iSCSI transport on the simulated
// host (real-backed: a session is a qemu-storage-daemon, a disk a loop device over its FUSE export).

const MiB = 1024 * 1024;
const INTRUDER = 'iqn.2000-01.test.intruder:host9';
let env: SimIscsiBerth;
let berth: BerthService;

beforeAll(async () => {
  env = await createSimIscsiBerth();
  berth = await env.open();
}, 60_000);

afterAll(async () => {
  await env?.cleanup();
}, 60_000);

const kinds = (report: ReconcileReport): string[] => report.differences.map((d) => `${d.kind}:${d.fix}:${d.state}`);
const aclsOf = (iqn: string): string[] => env.targets().find((t) => t.iqn === iqn)?.acls ?? [];

async function sessionsOf(iqn: string): Promise<number> {
  const { SimulatedHost } = await import('@berth/simhost');
  const sim = await SimulatedHost.connect(env.root);
  return (await sim.state()).sessions.filter((s) => s.iqn === iqn).length;
}

describe('berth reconcile with tgt exports and iSCSI sessions', () => {
  it('removes the export and the session of an attachment deleted behind berth\'s back', async () => {
    const volume = await berth.createVolume({ name: 'orphan', sizeBytes: 32 * MiB });
    const { attachment } = await berth.attach({ volume: 'orphan' });
    const initiator = attachment!.connector!.initiator!;
    expect(aclsOf(volume.providerLocation!)).toEqual([initiator]);
    expect(await sessionsOf(volume.providerLocation!)).toBe(1);
    sqlite(env.dataDir, `DELETE FROM attachments WHERE id = '${attachment!.id}'`);

    const planned = await berth.reconcile!({ dryRun: true });
    expect(kinds(planned)).toEqual([
      'export_without_attachment:terminate_connection:planned',
      'device_without_attachment:disconnect:planned',
      'volume_status_mismatch:recompute_status:planned',
    ]);
    expect(planned.differences[0]!.resource).toBe(`export of volume orphan (tgt) to ${initiator}`);
    expect(planned.differences[1]!.resource).toBe(`${attachment!.device!.path} (${volume.providerLocation} LUN 1)`);
    expect(aclsOf(volume.providerLocation!)).toEqual([initiator]);

    const applied = await berth.reconcile!();
    expect(applied.counts).toEqual({ found: 3, applied: 3, failed: 0, skipped: 0 });
    expect(aclsOf(volume.providerLocation!)).toEqual([]);
    expect(await sessionsOf(volume.providerLocation!)).toBe(0);
    expect(env.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
    expect(env.nodeRecords()).toEqual([]);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
    expect((await berth.getVolume('orphan')).status).toBe('available');
    expect((await berth.reconcile!({ dryRun: true })).differences).toEqual([]);
    await berth.deleteVolume('orphan');
  });

  it('removes an ACL entry bound by hand, and only on berth\'s targets', async () => {
    const volume = await berth.createVolume({ name: 'acl', sizeBytes: 32 * MiB });
    const tid = env.targets().find((t) => t.iqn === volume.providerLocation)!.tid;
    const bind = ['-C', String(env.controlPort), '--lld', 'iscsi', '--op', 'bind', '--mode', 'target', '--tid', String(tid), '--initiator-name', INTRUDER];
    const { execFileSync } = await import('node:child_process');
    execFileSync('tgtadm', bind);
    expect(aclsOf(volume.providerLocation!)).toEqual([INTRUDER]);

    const planned = await berth.reconcile!({ dryRun: true });
    expect(kinds(planned)).toEqual(['export_without_attachment:terminate_connection:planned']);
    expect(planned.differences[0]!.detail).toContain(INTRUDER);
    expect(aclsOf(volume.providerLocation!)).toEqual([INTRUDER]);

    const applied = await berth.reconcile!();
    expect(kinds(applied)).toEqual(['export_without_attachment:terminate_connection:applied']);
    expect(aclsOf(volume.providerLocation!)).toEqual([]);
    const operation = await berth.getOperation(applied.operationId!);
    expect(operation.steps.map((s) => `${s.name}:${s.state}`)).toEqual(['terminate_connection:done']);
    await berth.deleteVolume('acl');
  });

  it('reconnects (with CHAP it never stored) an attachment whose session was logged out by hand', async () => {
    const volume = await berth.createVolume({ name: 'lost', sizeBytes: 32 * MiB });
    const { attachment } = await berth.attach({ volume: 'lost' });
    const marker = Buffer.from('before the session was lost'.padEnd(4096, '#'));
    const fd = openSync(`/dev/berth/${volume.id}`, 'r+');
    try {
      writeSync(fd, marker, 0, marker.length, 5 * MiB);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    const logout = env.iscsiadm(['-m', 'node', '-T', volume.providerLocation!, '-p', env.portal, '--logout']);
    expect(logout.exitCode).toBe(0);
    expect(await sessionsOf(volume.providerLocation!)).toBe(0);

    const planned = await berth.reconcile!({ dryRun: true });
    expect(kinds(planned)).toEqual(['attachment_device_gone:reconnect:planned']);
    const applied = await berth.reconcile!();
    expect(kinds(applied)).toEqual(['attachment_device_gone:reconnect:applied']);
    expect(await sessionsOf(volume.providerLocation!)).toBe(1);
    const [now] = await berth.listAttachments({ volume: 'lost' });
    expect(now).toMatchObject({ id: attachment!.id, status: 'attached' });
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(path.join(env.root, now!.device!.path));
    const back = Buffer.alloc(marker.length);
    const read = openSync(`/dev/berth/${volume.id}`, 'r');
    try {
      readSync(read, back, 0, back.length, 5 * MiB);
    } finally {
      closeSync(read);
    }
    expect(back.equals(marker)).toBe(true);
    expect(JSON.stringify(now)).not.toMatch(/auth_password/);

    await berth.detach({ volume: 'lost' });
    await berth.deleteVolume('lost');
    expect(env.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
  });
});
