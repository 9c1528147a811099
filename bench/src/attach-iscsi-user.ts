import { execFileSync } from 'node:child_process';
import { mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { silentLogger, type BerthService } from '@berth/core';
import { stopManagedTgtd } from '@berth/backend-tgt';
import { createHostServices } from '@berth/host';
import { addFuseExport, addIscsiNode, attachFuseLoop, detachFuseLoop, removeFuseExport, removeIscsiNode, StorageDaemon, unmountFuseUnder } from '@berth/qemu';
import { openBerth } from '@berth/runtime';
import { freePort } from '@berth/simhost/real';
import { printTable, summarize } from './stats.js';

const MiB = 1024 * 1024;

/** What fio measured on one device. */
interface FioResult {
  seqWriteMiBs: number;
  seqReadMiBs: number;
  randReadIops: number;
}

/** fio on `device`: sequential 1 MiB writes and reads, 4 KiB random reads (O_DIRECT on the device, libaio). */
function fio(device: string, sizeMiB: number): FioResult {
  const job = (name: string, rw: string, bs: string): Record<string, unknown> => {
    const out = execFileSync(
      'fio',
      [`--name=${name}`, `--filename=${device}`, `--rw=${rw}`, `--bs=${bs}`, `--size=${sizeMiB}M`, '--direct=1', '--ioengine=libaio', '--iodepth=16', '--runtime=20', '--time_based=0', '--output-format=json'],
      { encoding: 'utf8', maxBuffer: 64 * MiB },
    );
    return (JSON.parse(out) as { jobs: Array<Record<string, Record<string, number>>> }).jobs[0] as Record<string, unknown>;
  };
  const bw = (j: Record<string, unknown>, dir: 'read' | 'write'): number => ((j[dir] as { bw_bytes: number }).bw_bytes ?? 0) / MiB;
  const iops = (j: Record<string, unknown>): number => (j.read as { iops: number }).iops ?? 0;
  return { seqWriteMiBs: bw(job('seqwrite', 'write', '1M'), 'write'), seqReadMiBs: bw(job('seqread', 'read', '1M'), 'read'), randReadIops: iops(job('randread', 'randread', '4k')) };
}

/**
 * iscsi-user against the loop transport on a local file, in one run: attach/detach latency through
 * the whole pipeline (cold: the daemon starts; warm: another volume keeps it running), the floor of
 * a connect (the QMP round trips and losetup it cannot avoid, measured alone), and fio throughput
 * through each device (tgt volumes without CHAP here, so the floor can log in as the pipeline
does). Prints ratios; targets: sequential ≥ 50% of loop, warm attach ≤ floor + 150 ms.
 */
export async function benchAttachIscsiUser(iterations = 10, sizeMiB = 256): Promise<void> {
  const dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-bench-iu-')));
  const host = createHostServices();
  const controlPort = 20_000 + Math.floor(Math.random() * 12_000);
  const port = await freePort(['127.0.0.1']);
  await writeFile(path.join(dataDir, 'config.json'), JSON.stringify({ pluginOptions: { '@berth/backend-tgt': { portals: [`127.0.0.1:${port}`], controlPort, chap: false } } }));
  let berth: BerthService | undefined;
  try {
    berth = await openBerth({ dataDir, logger: silentLogger });
    await berth.createVolume({ name: 'user', sizeBytes: sizeMiB * MiB, backend: 'tgt' });
    await berth.createVolume({ name: 'keeper', sizeBytes: 8 * MiB, backend: 'tgt' });
    await berth.createVolume({ name: 'local', sizeBytes: sizeMiB * MiB, backend: 'file' });

    const cycle = async (volume: string): Promise<{ attach: number; connect: number; detach: number }> => {
      let t = performance.now();
      const attached = await berth!.attach({ volume });
      const attach = performance.now() - t;
      t = performance.now();
      await berth!.detach({ volume });
      return { attach, connect: attached.attachment?.timings.connect ?? 0, detach: performance.now() - t };
    };
    const runs = async (volume: string): Promise<Array<{ attach: number; connect: number; detach: number }>> => {
      const out = [];
      for (let i = 0; i < iterations; i += 1) out.push(await cycle(volume));
      return out;
    };
    const loopRuns = await runs('local');
    const coldRuns = await runs('user');
    await berth.attach({ volume: 'keeper' });
    const warmRuns = await runs('user');

    // The floor: what a warm connect cannot avoid, measured alone on the same daemon.
    const floor: number[] = [];
    const daemon = new StorageDaemon({ dir: path.join(dataDir, 'driver-iscsi-user', 'qsd'), waiter: host.waiter });
    const keeper = (await berth.listAttachments({ volume: 'keeper' }))[0];
    // A second session to the keeper's target: its ACL admits this initiator while it is attached.
    const iqn = String(keeper?.connectionInfo?.data.target_iqn ?? '');
    const initiator = keeper?.connector?.initiator ?? '';
    await berth.close();
    berth = undefined;
    // With berth closed nobody holds the daemon lock; the keeper's export keeps the daemon up.
    const qmp = await daemon.connect();
    try {
      for (let i = 0; i < iterations; i += 1) {
        const mountpoint = path.join(dataDir, 'floor.fuse');
        const t = performance.now();
        await addIscsiNode(qmp, { nodeName: 'floor', portal: `127.0.0.1:${port}`, iqn, lun: 1, initiator, readOnly: false });
        await addFuseExport(qmp, { id: 'floor-x', nodeName: 'floor', mountpoint, writable: true });
        const device = await attachFuseLoop(host.runner, mountpoint, { readOnly: false, timeoutMs: 10_000 });
        floor.push(performance.now() - t);
        await detachFuseLoop(host, device, mountpoint, { timeoutMs: 10_000 });
        await removeFuseExport(qmp, 'floor-x');
        await removeIscsiNode(qmp, 'floor', undefined);
      }
    } finally {
      qmp.close();
    }

    berth = await openBerth({ dataDir, logger: silentLogger });
    const user = await berth.attach({ volume: 'user' });
    const local = await berth.attach({ volume: 'local' });
    const userFio = fio(user.attachment!.device!.path, sizeMiB);
    const loopFio = fio(local.attachment!.device!.path, sizeMiB);
    await berth.detach({ volume: 'user' });
    await berth.detach({ volume: 'local' });
    await berth.detach({ volume: 'keeper' });

    const p50 = (xs: number[]): number => summarize(xs).p50;
    const lat = (name: string, pick: (r: { attach: number; connect: number; detach: number }) => number): Array<string | number> => {
      const u = p50(warmRuns.map(pick));
      const l = p50(loopRuns.map(pick));
      return [name, p50(coldRuns.map(pick)), u, l, u / l];
    };
    printTable(`iscsi-user vs loop on a local file: latency, p50 of ${iterations} cycles (ms)`, ['measure', 'iscsi-user cold', 'iscsi-user warm', 'loop', 'warm/loop'], [
      lat('attach (whole pipeline)', (r) => r.attach),
      lat('connect step', (r) => r.connect),
      lat('detach (whole pipeline)', (r) => r.detach),
    ]);
    const floorP50 = floor.length > 0 ? p50(floor) : Number.NaN;
    printTable('iscsi-user connect against its floor (ms; target: connect ≤ floor + 150)', ['measure', 'p50'], [
      ['floor: blockdev-add + block-export-add + losetup, alone', floorP50],
      ['warm connect step', p50(warmRuns.map((r) => r.connect))],
      ['warm connect − floor', p50(warmRuns.map((r) => r.connect)) - floorP50],
    ]);
    printTable(`throughput through the device, fio ${sizeMiB} MiB, O_DIRECT, iodepth 16 (target: sequential ≥ 0.5 of loop)`, ['measure', 'iscsi-user', 'loop', 'ratio'], [
      ['sequential write 1 MiB (MiB/s)', userFio.seqWriteMiBs, loopFio.seqWriteMiBs, userFio.seqWriteMiBs / loopFio.seqWriteMiBs],
      ['sequential read 1 MiB (MiB/s)', userFio.seqReadMiBs, loopFio.seqReadMiBs, userFio.seqReadMiBs / loopFio.seqReadMiBs],
      ['random read 4 KiB (IOPS)', userFio.randReadIops, loopFio.randReadIops, userFio.randReadIops / loopFio.randReadIops],
    ]);
  } finally {
    await berth?.close().catch(() => undefined);
    await new StorageDaemon({ dir: path.join(dataDir, 'driver-iscsi-user', 'qsd'), waiter: host.waiter }).stop().catch(() => undefined);
    await unmountFuseUnder(host, dataDir, 10_000).catch(() => []);
    await stopManagedTgtd(dataDir, controlPort).catch(() => undefined);
    await rm(`/run/tgtd/socket.${controlPort}`, { force: true });
    await rm(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
    await rm(dataDir, { recursive: true, force: true });
  }
}
