import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { silentLogger } from '@berth/core';
import { majorMinor } from '@berth/driver-loop';
import { LOOP_DETACH_PROGRAM, commandStarter, createHostServices } from '@berth/host';
import { openBerth } from '@berth/runtime';
import { printTable, summarize } from './stats.js';

// The loop driver's own `losetup --list` columns (plugins/driver-loop/src/losetup.ts).
const LIST_ARGS = ['--json', '--list', '--output', 'NAME,MAJ:MIN,BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET,SIZELIMIT,AUTOCLEAR,RO,DIO,LOG-SEC'];
const TIMEOUT = { timeoutMs: 30_000 };

/** How the loop driver attaches: `auto` with berth-loop-attach, `off` with three losetup runs. */
type AttachMode = 'auto' | 'off';

/** A C program the loop driver runs as it finds it: berth-loop-attach beside its dist/index.js, berth-loop-detach @berth/host's. */
function loopProgram(name: 'berth-loop-attach' | 'berth-loop-detach', without: string): string {
  const program = name === 'berth-loop-detach' ? LOOP_DETACH_PROGRAM : path.join(path.dirname(fileURLToPath(import.meta.resolve('@berth/driver-loop'))), name);
  if (program === undefined || !existsSync(program)) throw new Error(`${name} was not built (no C compiler?): ${without}`);
  return program;
}

/**
 * The floor of one loop connect and disconnect: the commands the loop driver runs, run directly
 * through `@berth/host`'s runner on a file of the same size, with no journal, store or locks —
 * connect (`off`): list, `--find --show`, the wait for the node, list again; (`auto`):
 * berth-loop-attach once, the wait for the node; disconnect (both modes: what the driver runs for
 * the device it connected): berth-loop-detach once (it flushes and detaches; the backing file's
 * device and inode come from the connect's record, here a stat before the clock starts), the wait
 * for the backing file to go.
 */
async function loopFloor(file: string, mode: AttachMode): Promise<{ connect: number; disconnect: number }> {
  const { runner, waiter } = createHostServices();
  const signal = new AbortController().signal;
  let t = performance.now();
  let device: string | undefined;
  let detached = false;
  try {
    if (mode === 'auto') {
      const answer = (await runner.run(loopProgram('berth-loop-attach', 'run this bench with BENCH_LOOP_ATTACH=off'), [file, '--direct-io'], TIMEOUT)).stdout.trim().split('\n').pop() ?? '';
      const [kind, name] = answer.split(' ');
      if (kind !== 'attached' || name === undefined) throw new Error(`berth-loop-attach answered ${JSON.stringify(answer)}, not attached`);
      device = name;
      await waiter.waitForPath(device, { timeoutMs: 10_000, signal });
    } else {
      await runner.run('losetup', LIST_ARGS, TIMEOUT);
      device = (await runner.run('losetup', ['--find', '--show', '--direct-io=on', '--', file], TIMEOUT)).stdout.trim();
      await waiter.waitForPath(device, { timeoutMs: 10_000, signal });
      await runner.run('losetup', LIST_ARGS, TIMEOUT);
    }
    const connect = performance.now() - t;
    const backing = await stat(file, { bigint: true });
    const detachProgram = loopProgram('berth-loop-detach', 'the loop driver would detach with fuser and losetup');
    t = performance.now();
    // Busy while udev probes the new device: run again at once, as the driver does (after its own pause).
    let answer = 'busy';
    for (let attempt = 0; answer === 'busy' && attempt < 100; attempt += 1) {
      answer = (await runner.run(detachProgram, [device, majorMinor(backing.dev), backing.ino.toString()], { ...TIMEOUT, reject: false })).stdout.trim();
    }
    if (answer !== 'detached') throw new Error(`berth-loop-detach answered ${JSON.stringify(answer)}, not detached`);
    detached = true;
    await waiter.waitForGone(`/sys/block/${path.basename(device)}/loop/backing_file`, { timeoutMs: 10_000, signal });
    return { connect, disconnect: performance.now() - t };
  } finally {
    // A throw after the attach must not leave the floor's device attached.
    if (device !== undefined && !detached) await runner.run('losetup', ['--detach', device], { ...TIMEOUT, reject: false });
  }
}

/** One berth of the run, with the loop driver attaching one way, and what its cycles measured. */
interface Lane {
  mode: AttachMode;
  berth: Awaited<ReturnType<typeof openBerth>>;
  floorFile: string;
  attachSteps: Record<string, number[]>;
  detachSteps: Record<string, number[]>;
  attachTotal: number[];
  detachTotal: number[];
  floorConnect: number[];
  floorDisconnect: number[];
}

/** `BENCH_LOOP_ATTACH`: `auto` (the default), `off`, or `both` (alternating, off first). */
export function loopAttachModes(value: string | undefined): AttachMode[] {
  if (value === undefined || value === '' || value === 'auto') return ['auto'];
  if (value === 'off') return ['off'];
  if (value === 'both') return ['off', 'auto'];
  throw new Error(`BENCH_LOOP_ATTACH must be auto, off or both, not ${value}`);
}

async function openLane(root: string, mode: AttachMode): Promise<Lane> {
  const dataDir = path.join(root, mode);
  await mkdir(dataDir, { recursive: true });
  await writeFile(path.join(dataDir, 'config.json'), JSON.stringify({ pluginOptions: { '@berth/driver-loop': { nativeAttach: mode } } }));
  const berth = await openBerth({ dataDir, env: {}, logger: silentLogger });
  const floorFile = path.join(dataDir, 'floor.img');
  await writeFile(floorFile, '');
  await truncate(floorFile, 64 * 1024 * 1024);
  await berth.createVolume({ name: 'bench', sizeBytes: 64 * 1024 * 1024 });
  return { mode, berth, floorFile, attachSteps: {}, detachSteps: {}, attachTotal: [], detachTotal: [], floorConnect: [], floorDisconnect: [] };
}

async function cycle(lane: Lane): Promise<void> {
  let t = performance.now();
  const attached = await lane.berth.attach({ volume: 'bench' });
  lane.attachTotal.push(performance.now() - t);
  for (const [step, ms] of Object.entries(attached.attachment?.timings ?? {})) (lane.attachSteps[step] ??= []).push(ms);
  t = performance.now();
  const detached = await lane.berth.detach({ volume: 'bench' });
  lane.detachTotal.push(performance.now() - t);
  const timings = (detached.operation.result?.timings ?? {}) as Record<string, number>;
  for (const [step, ms] of Object.entries(timings)) (lane.detachSteps[step] ??= []).push(ms);
  const floor = await loopFloor(lane.floorFile, lane.mode);
  lane.floorConnect.push(floor.connect);
  lane.floorDisconnect.push(floor.disconnect);
}

/**
 * Attach + detach cycles on the embedded default (SQLite, file backend, loop transport), real loop
 * devices: the time of each step and of the whole operation, and — alternating, cycle by cycle —
 * the floor those commands set (issue 12: the pipeline's attach ≤ 1.5× its floor). `modes`: how
 * the loop driver attaches (`BENCH_LOOP_ATTACH`: `auto`, `off`, or `both`, which alternates the
 * two berths cycle by cycle in one run).
 */
export async function benchAttachLoop(iterations = 50, modes: readonly AttachMode[] = ['auto']): Promise<void> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-'));
  const lanes: Lane[] = [];
  try {
    for (const mode of modes) lanes.push(await openLane(root, mode));
    for (let i = 0; i < iterations; i++) for (const lane of lanes) await cycle(lane);
    const row = (name: string, samples: number[]): Array<string | number> => {
      const s = summarize(samples);
      return [name, s.p50, s.p90, s.p99, s.max];
    };
    const ratio = (a: number[], b: number[]): number => Math.round((summarize(a).p50 / summarize(b).p50) * 100) / 100;
    for (const lane of lanes) {
      const how = `nativeAttach ${lane.mode}`;
      printTable(`attach, loop transport (${how}), ${iterations} cycles (ms)`, ['step', 'p50', 'p90', 'p99', 'max'], [
        ...Object.entries(lane.attachSteps).map(([k, v]) => row(k, v)),
        row('attach (whole, as the caller sees it)', lane.attachTotal),
        row('floor: the connect commands alone', lane.floorConnect),
      ]);
      printTable(`detach, loop transport (${how}), ${iterations} cycles (ms)`, ['step', 'p50', 'p90', 'p99', 'max'], [
        ...Object.entries(lane.detachSteps).map(([k, v]) => row(k, v)),
        row('detach (whole, as the caller sees it)', lane.detachTotal),
        row('floor: the disconnect commands alone', lane.floorDisconnect),
      ]);
      const attachRatio = ratio(lane.attachTotal, lane.floorConnect);
      printTable(`the pipeline against its floor (${how}; p50 / p50, same run, alternating)`, ['operation', 'ratio', 'target', 'met'], [
        ['attach', attachRatio, '≤ 1.5', attachRatio <= 1.5 ? 'met' : 'NOT met'],
        ['detach', ratio(lane.detachTotal, lane.floorDisconnect), '—', ''],
      ]);
    }
    // Both columns start their commands the same way; BERTH_SPAWNER=0 times Node's spawn (a fork of this process per command).
    console.log(`commands started by: ${commandStarter()}`);
    const losetup: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t = performance.now();
      execFileSync('losetup', ['--version']);
      losetup.push(performance.now() - t);
    }
    printTable('reference: the cost of running one command (ms)', ['command', 'p50', 'p90', 'p99', 'max'], [row('losetup --version', losetup)]);
  } finally {
    for (const lane of lanes) await lane.berth.close();
    await rm(root, { recursive: true, force: true });
  }
}
