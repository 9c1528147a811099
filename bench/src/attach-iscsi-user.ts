import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { silentLogger, type BerthService } from '@berth/core';
import { parseTargetList, stopManagedTgtd } from '@berth/backend-tgt';
import { createHostServices } from '@berth/host';
import { addFuseExport, addIscsiNode, addRawFilter, attachFuseLoop, detachFuseLoop, removeFuseExport, removeIscsiNode, StorageDaemon, unmountFuseUnder, zEmptyReturn, type QmpClient } from '@berth/qemu';
import { openBerth } from '@berth/runtime';
import { freePort } from '@berth/simhost/real';
import { printTable, summarize } from './stats.js';

const MiB = 1024 * 1024;

/** What fio measured on one target. */
interface FioResult {
  seqWriteMiBs: number;
  seqReadMiBs: number;
  randReadIops: number;
}

/**
 * Drop the page cache of the file behind loop device `target` when it is a FUSE export: the loop
 * device reads its FUSE file through the page cache (no direct I/O there), so a read right after
 * fio's writes would measure memory, not the target.
 */
function dropFuseCache(target: string): void {
  if (!target.startsWith('/dev/loop')) return;
  const backing = readFileSync(`/sys/block/${path.basename(target)}/loop/backing_file`, 'utf8').trim();
  if (backing.endsWith('.fuse')) execFileSync('dd', [`if=${backing}`, 'iflag=nocache', 'count=0', 'status=none']);
}

/**
 * fio on `target` (a block device: O_DIRECT, libaio; or an `nbd+unix://` URI: fio's nbd engine),
 * iodepth 16: sequential 1 MiB writes, then reads, then 4 KiB random reads.
 */
function fio(target: string, sizeMiB: number): FioResult {
  const engine = target.startsWith('nbd+unix:') ? ['--ioengine=nbd', `--uri=${target}`] : [`--filename=${target}`, '--direct=1', '--ioengine=libaio'];
  const job = (name: string, rw: string, bs: string): Record<string, unknown> => {
    const out = execFileSync('fio', [`--name=${name}`, ...engine, `--rw=${rw}`, `--bs=${bs}`, `--size=${sizeMiB}M`, '--iodepth=16', '--runtime=20', '--output-format=json'], {
      encoding: 'utf8',
      maxBuffer: 64 * MiB,
    });
    // The nbd engine prints a line before the JSON.
    return (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<Record<string, Record<string, number>>> }).jobs[0] as Record<string, unknown>;
  };
  const bw = (j: Record<string, unknown>, dir: 'read' | 'write'): number => ((j[dir] as { bw_bytes: number }).bw_bytes ?? 0) / MiB;
  const iops = (j: Record<string, unknown>): number => (j.read as { iops: number }).iops ?? 0;
  const seqWriteMiBs = bw(job('seqwrite', 'write', '1M'), 'write');
  dropFuseCache(target);
  const seqReadMiBs = bw(job('seqread', 'read', '1M'), 'read');
  dropFuseCache(target);
  return { seqWriteMiBs, seqReadMiBs, randReadIops: iops(job('randread', 'randread', '4k')) };
}

/** fio on every target, `rounds` times interleaved (the machine's load moves), and the median of each measure. */
function fioInterleaved(targets: Record<string, string>, sizeMiB: number, rounds: number): Record<string, FioResult> {
  const samples: Record<string, FioResult[]> = {};
  // A first pass allocates the sparse files (tgtd's LUN file, the local volume) on every path.
  for (const target of new Set(Object.values(targets))) if (!target.startsWith('nbd+unix:')) fio(target, sizeMiB);
  for (let round = 0; round < rounds; round += 1) {
    for (const [name, target] of Object.entries(targets)) (samples[name] ??= []).push(fio(target, sizeMiB));
  }
  const median = (xs: number[]): number => summarize(xs).p50;
  return Object.fromEntries(
    Object.entries(samples).map(([name, xs]) => [
      name,
      { seqWriteMiBs: median(xs.map((x) => x.seqWriteMiBs)), seqReadMiBs: median(xs.map((x) => x.seqReadMiBs)), randReadIops: median(xs.map((x) => x.randReadIops)) },
    ]),
  );
}

const NULL_FUSE = 'null-co over FUSE + loop';
const TGTD_DEFAULTS = 'iscsi-user, tgtd default session parameters';

/**
 * tgtd's own defaults of the parameters the tgt backend tunes (`sessionParams`): set on one
 * target by hand, so that the same run measures the chain before and after the tuning.
 */
const TGTD_DEFAULT_PARAMS: Record<string, string> = {
  MaxRecvDataSegmentLength: '8192',
  MaxXmitDataSegmentLength: '8192',
  FirstBurstLength: '65536',
  MaxBurstLength: '262144',
  InitialR2T: 'Yes',
};

/** Put target `iqn` of the tgtd on `controlPort` back to tgtd's default session parameters (new sessions get them). */
function untuneTarget(controlPort: number, iqn: string): void {
  const tgtadm = (args: string[]): string => execFileSync('tgtadm', ['-C', String(controlPort), '--lld', 'iscsi', ...args], { encoding: 'utf8' });
  const target = parseTargetList(tgtadm(['--op', 'show', '--mode', 'target'])).find((t) => t.iqn === iqn);
  if (!target) throw new Error(`no target ${iqn} in tgtd`);
  for (const [name, value] of Object.entries(TGTD_DEFAULT_PARAMS)) tgtadm(['--op', 'update', '--mode', 'target', '--tid', String(target.tid), '--name', name, '--value', value]);
}
const ISCSI_NBD = 'iscsi over NBD';

/**
 * The layers of the chain measured apart, on the transport's own daemon: a `null-co` node (no
 * storage) through a FUSE export and a loop device — what FUSE + loop cost — and a second iSCSI
 * node on the volume's LUN exported over NBD (fio's nbd engine, 16 requests in flight) — what
 * qemu's iscsi driver and tgtd give without FUSE and loop. Removed again after `measure`.
 */
async function withLayers<T>(
  qmp: QmpClient,
  host: ReturnType<typeof createHostServices>,
  spec: { dataDir: string; sizeMiB: number; portal: string; iqn: string; initiator: string },
  measure: (targets: Record<string, string>) => T,
): Promise<T> {
  const mountpoint = path.join(spec.dataDir, 'layer-null.fuse');
  const nbdSocket = path.join(spec.dataDir, 'layer-nbd.sock');
  const undo: Array<() => Promise<unknown>> = [];
  try {
    await qmp.request('blockdev-add', { driver: 'null-co', 'node-name': 'layer-null', size: spec.sizeMiB * MiB, 'read-zeroes': true }, zEmptyReturn);
    undo.unshift(() => removeIscsiNode(qmp, 'layer-null', undefined));
    await addFuseExport(qmp, { id: 'layer-null-x', nodeName: 'layer-null', mountpoint, writable: true });
    undo.unshift(() => removeFuseExport(qmp, 'layer-null-x'));
    const device = await attachFuseLoop(host.runner, mountpoint, { readOnly: false, timeoutMs: 10_000 });
    undo.unshift(() => detachFuseLoop(host, device, mountpoint, { timeoutMs: 10_000 }));
    await addIscsiNode(qmp, { nodeName: 'layer-iscsi', portal: spec.portal, iqn: spec.iqn, lun: 1, initiator: spec.initiator, readOnly: false });
    undo.unshift(() => removeIscsiNode(qmp, 'layer-iscsi', undefined));
    await qmp.request('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } }, zEmptyReturn);
    undo.unshift(() => qmp.request('nbd-server-stop', undefined, zEmptyReturn));
    await qmp.request('block-export-add', { type: 'nbd', id: 'layer-nbd', 'node-name': 'layer-iscsi', name: 'layer', writable: true }, zEmptyReturn);
    // block-export-del and its BLOCK_EXPORT_DELETED are the same for every export type.
    undo.unshift(() => removeFuseExport(qmp, 'layer-nbd'));
    return measure({ [NULL_FUSE]: device, [ISCSI_NBD]: `nbd+unix:///layer?socket=${nbdSocket}` });
  } finally {
    for (const step of undo) await step().catch(() => undefined);
  }
}

/**
 * iscsi-user against the loop transport on a local file, in one run: attach/detach latency through
 * the whole pipeline (cold: the daemon starts; warm: another volume keeps it running), the floor of
 * a connect (the QMP round trips and losetup it cannot avoid, measured alone), and fio throughput
 * through each device (tgt volumes without CHAP here, so the floor can log in as the pipeline
does). Prints ratios; targets: sequential ≥ 50% of loop, warm attach ≤ floor + 150 ms.
 */
export async function benchAttachIscsiUser(iterations = 10, sizeMiB = 256, fioRounds = 3): Promise<void> {
  const dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-bench-iu-')));
  const host = createHostServices();
  const controlPort = 20_000 + Math.floor(Math.random() * 12_000);
  const port = await freePort(['127.0.0.1']);
  await writeFile(path.join(dataDir, 'config.json'), JSON.stringify({ pluginOptions: { '@berth/backend-tgt': { portals: [`127.0.0.1:${port}`], controlPort, chap: false } } }));
  let berth: BerthService | undefined;
  try {
    berth = await openBerth({ dataDir, logger: silentLogger });
    await berth.createVolume({ name: 'user', sizeBytes: sizeMiB * MiB, backend: 'tgt' });
    await berth.createVolume({ name: 'user-tgtd-defaults', sizeBytes: sizeMiB * MiB, backend: 'tgt' });
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

    const user = await berth.attach({ volume: 'user' });
    const local = await berth.attach({ volume: 'local' });
    // Before the tuning, in the same run: one volume's target set back to tgtd's defaults, then attached.
    untuneTarget(controlPort, String((await berth.getVolume('user-tgtd-defaults')).providerLocation ?? ''));
    const untuned = await berth.attach({ volume: 'user-tgtd-defaults' });

    // The floor: what a warm connect cannot avoid, measured alone on the same daemon.
    const floor: number[] = [];
    const daemon = new StorageDaemon({ dir: path.join(dataDir, 'driver-iscsi-user', 'qsd'), waiter: host.waiter });
    const keeper = (await berth.listAttachments({ volume: 'keeper' }))[0];
    // Second sessions to the attached volumes' targets: their ACLs admit this initiator while attached.
    const iqn = String(keeper?.connectionInfo?.data.target_iqn ?? '');
    const userIqn = String(user.attachment?.connectionInfo?.data.target_iqn ?? '');
    const initiator = keeper?.connector?.initiator ?? '';
    await berth.close();
    berth = undefined;
    // With berth closed nobody holds the daemon lock; the keeper's export keeps the daemon up.
    const qmp = await daemon.connect();
    let throughput: Record<string, FioResult>;
    try {
      for (let i = 0; i < iterations; i += 1) {
        const mountpoint = path.join(dataDir, 'floor.fuse');
        const t = performance.now();
        await addIscsiNode(qmp, { nodeName: 'floor', portal: `127.0.0.1:${port}`, iqn, lun: 1, initiator, readOnly: false });
        // The chain's raw filter (the node a failover re-points) is part of the floor.
        await addRawFilter(qmp, { nodeName: 'floor-f', file: 'floor', readOnly: false });
        await addFuseExport(qmp, { id: 'floor-x', nodeName: 'floor-f', mountpoint, writable: true });
        const device = await attachFuseLoop(host.runner, mountpoint, { readOnly: false, timeoutMs: 10_000 });
        floor.push(performance.now() - t);
        await detachFuseLoop(host, device, mountpoint, { timeoutMs: 10_000 });
        await removeFuseExport(qmp, 'floor-x');
        await removeIscsiNode(qmp, 'floor-f', undefined);
        await removeIscsiNode(qmp, 'floor', undefined);
      }
      throughput = await withLayers(qmp, host, { dataDir, sizeMiB, portal: `127.0.0.1:${port}`, iqn: userIqn, initiator }, (layers) =>
        fioInterleaved({ loop: local.attachment!.device!.path, 'iscsi-user': user.attachment!.device!.path, [TGTD_DEFAULTS]: untuned.attachment!.device!.path, ...layers }, sizeMiB, fioRounds),
      );
    } finally {
      qmp.close();
    }

    berth = await openBerth({ dataDir, logger: silentLogger });
    await berth.detach({ volume: 'user' });
    await berth.detach({ volume: 'local' });
    await berth.detach({ volume: 'user-tgtd-defaults' });
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
      ['floor: blockdev-add (iscsi, raw) + block-export-add + losetup, alone', floorP50],
      ['warm connect step', p50(warmRuns.map((r) => r.connect))],
      ['warm connect − floor', p50(warmRuns.map((r) => r.connect)) - floorP50],
    ]);
    const loopFio = throughput.loop!;
    const row = (name: string, r: FioResult | undefined): Array<string | number> => {
      if (!r) return [name, 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a'];
      return [name, r.seqWriteMiBs, r.seqWriteMiBs / loopFio.seqWriteMiBs, r.seqReadMiBs, r.seqReadMiBs / loopFio.seqReadMiBs, r.randReadIops, r.randReadIops / loopFio.randReadIops];
    };
    printTable(
      `throughput, fio ${sizeMiB} MiB iodepth 16, median of ${fioRounds} interleaved rounds (target: iscsi-user sequential ≥ 0.5 of loop)`,
      ['path', 'seq write 1 MiB (MiB/s)', '/loop', 'seq read 1 MiB (MiB/s)', '/loop', 'rand read 4 KiB (IOPS)', '/loop'],
      [
        row('loop on a local file (O_DIRECT)', throughput.loop),
        row('iscsi-user: loop → FUSE → qemu iscsi → tgtd', throughput['iscsi-user']),
        row('iscsi-user before: tgtd default session parameters', throughput[TGTD_DEFAULTS]),
        row('layer: loop → FUSE → qemu null-co (no iSCSI)', throughput[NULL_FUSE]),
        row('layer: qemu iscsi → tgtd over NBD (no FUSE, no loop)', throughput[ISCSI_NBD]),
      ],
    );
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
