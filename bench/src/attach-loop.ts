import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '@berth/core';
import { commandStarter, createHostServices } from '@berth/host';
import { openBerth } from '@berth/runtime';
import { printTable, summarize } from './stats.js';

// The loop driver's own `losetup --list` columns (plugins/driver-loop/src/losetup.ts).
const LIST_ARGS = ['--json', '--list', '--output', 'NAME,MAJ:MIN,BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET,SIZELIMIT,AUTOCLEAR,RO,DIO,LOG-SEC'];
const TIMEOUT = { timeoutMs: 30_000 };

/**
 * The floor of one loop connect and disconnect: the commands the loop driver runs, run directly
 * through `@berth/host`'s runner on a file of the same size, with no journal, store or locks —
 * connect: list, `--find --show`, the wait for the node, list again; disconnect: flush,
 * `--detach`, the wait for the backing file to go.
 */
async function loopFloor(file: string): Promise<{ connect: number; disconnect: number }> {
  const { runner, waiter } = createHostServices();
  const signal = new AbortController().signal;
  let t = performance.now();
  await runner.run('losetup', LIST_ARGS, TIMEOUT);
  const device = (await runner.run('losetup', ['--find', '--show', '--direct-io=on', '--', file], TIMEOUT)).stdout.trim();
  await waiter.waitForPath(device, { timeoutMs: 10_000, signal });
  await runner.run('losetup', LIST_ARGS, TIMEOUT);
  const connect = performance.now() - t;
  t = performance.now();
  await runner.run('blockdev', ['--flushbufs', device], TIMEOUT);
  await runner.run('losetup', ['--detach', device], TIMEOUT);
  const backing = `/sys/block/${path.basename(device)}/loop/backing_file`;
  await waiter.waitForGone(backing, { timeoutMs: 10_000, signal });
  return { connect, disconnect: performance.now() - t };
}

/**
 * Attach + detach cycles on the embedded default (SQLite, file backend, loop transport), real loop
 * devices: the time of each step and of the whole operation, and — alternating, cycle by cycle —
 * the floor those commands set (issue 12: the pipeline's attach ≤ 1.5× its floor).
 */
export async function benchAttachLoop(iterations = 50): Promise<void> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-'));
  const berth = await openBerth({ dataDir, env: {}, logger: silentLogger });
  const floorFile = path.join(dataDir, 'floor.img');
  await writeFile(floorFile, '');
  await truncate(floorFile, 64 * 1024 * 1024);
  try {
    await berth.createVolume({ name: 'bench', sizeBytes: 64 * 1024 * 1024 });
    const attachSteps: Record<string, number[]> = {};
    const detachSteps: Record<string, number[]> = {};
    const attachTotal: number[] = [];
    const detachTotal: number[] = [];
    const floorConnect: number[] = [];
    const floorDisconnect: number[] = [];
    for (let i = 0; i < iterations; i++) {
      let t = performance.now();
      const attached = await berth.attach({ volume: 'bench' });
      attachTotal.push(performance.now() - t);
      for (const [step, ms] of Object.entries(attached.attachment?.timings ?? {})) (attachSteps[step] ??= []).push(ms);
      t = performance.now();
      const detached = await berth.detach({ volume: 'bench' });
      detachTotal.push(performance.now() - t);
      const timings = (detached.operation.result?.timings ?? {}) as Record<string, number>;
      for (const [step, ms] of Object.entries(timings)) (detachSteps[step] ??= []).push(ms);
      const floor = await loopFloor(floorFile);
      floorConnect.push(floor.connect);
      floorDisconnect.push(floor.disconnect);
    }
    const row = (name: string, samples: number[]): Array<string | number> => {
      const s = summarize(samples);
      return [name, s.p50, s.p90, s.p99, s.max];
    };
    printTable(`attach, loop transport, ${iterations} cycles (ms)`, ['step', 'p50', 'p90', 'p99', 'max'], [
      ...Object.entries(attachSteps).map(([k, v]) => row(k, v)),
      row('attach (whole, as the caller sees it)', attachTotal),
      row('floor: the connect commands alone', floorConnect),
    ]);
    printTable(`detach, loop transport, ${iterations} cycles (ms)`, ['step', 'p50', 'p90', 'p99', 'max'], [
      ...Object.entries(detachSteps).map(([k, v]) => row(k, v)),
      row('detach (whole, as the caller sees it)', detachTotal),
      row('floor: the disconnect commands alone', floorDisconnect),
    ]);
    const ratio = (a: number[], b: number[]): number => Math.round((summarize(a).p50 / summarize(b).p50) * 100) / 100;
    const attachRatio = ratio(attachTotal, floorConnect);
    printTable('the pipeline against its floor (p50 / p50, same run, alternating)', ['operation', 'ratio', 'target', 'met'], [
      ['attach', attachRatio, '≤ 1.5', attachRatio <= 1.5 ? 'met' : 'NOT met'],
      ['detach', ratio(detachTotal, floorDisconnect), '—', ''],
    ]);
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
    await berth.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}
