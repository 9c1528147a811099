import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { printTable, summarize } from './stats.js';

/**
 * Attach + detach cycles on the embedded default (SQLite, file backend, loop transport), real loop
 * devices: the time of each step and of the whole operation. The unavoidable work is `losetup`
 * (~2-3 ms each) and the SQLite commits.
 */
export async function benchAttachLoop(iterations = 50): Promise<void> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-'));
  const berth = await openBerth({ dataDir, env: {}, logger: silentLogger });
  try {
    await berth.createVolume({ name: 'bench', sizeBytes: 64 * 1024 * 1024 });
    const attachSteps: Record<string, number[]> = {};
    const detachSteps: Record<string, number[]> = {};
    const attachTotal: number[] = [];
    const detachTotal: number[] = [];
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
    }
    const row = (name: string, samples: number[]): Array<string | number> => {
      const s = summarize(samples);
      return [name, s.p50, s.p90, s.p99, s.max];
    };
    printTable(`attach, loop transport, ${iterations} cycles (ms)`, ['step', 'p50', 'p90', 'p99', 'max'], [
      ...Object.entries(attachSteps).map(([k, v]) => row(k, v)),
      row('attach (whole, as the caller sees it)', attachTotal),
    ]);
    printTable(`detach, loop transport, ${iterations} cycles (ms)`, ['step', 'p50', 'p90', 'p99', 'max'], [
      ...Object.entries(detachSteps).map(([k, v]) => row(k, v)),
      row('detach (whole, as the caller sees it)', detachTotal),
    ]);
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
