import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { printTable, summarize } from './stats.js';

/** One whole `berth` process to time, and the target ratio against `node -e 0`. */
interface CliCase {
  name: string;
  args: string[];
  target: number;
}

// The built binary as a user runs it (`@berth/cli`'s bin), resolved through the workspace link;
// `BENCH_CLI_BIN` names another build's `bin/run.js` instead (e.g. an experimental bundle built
// beside the checkout, against main's as `BENCH_CLI_BASELINE`).
const BERTH_BIN =
  process.env.BENCH_CLI_BIN !== undefined && process.env.BENCH_CLI_BIN !== ''
    ? path.resolve(process.env.BENCH_CLI_BIN)
    : path.join(path.dirname(createRequire(import.meta.url).resolve('@berth/cli/package.json')), 'bin', 'run.js');

/** Run `node ARGS` to its end; resolve with its wall time in ms (reject on a non-zero exit). */
function timeProcess(args: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, [...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      const ms = performance.now() - started;
      if (code === 0) resolve(ms);
      else reject(new Error(`node ${args.join(' ')} exited ${code}: ${stderr.trim()}`));
    });
  });
}

function median(samples: readonly number[]): number {
  return summarize(samples).p50;
}

/** One `berth` binary under test, with the data dir it keeps its volume in. */
interface Binary {
  label: string;
  bin: string;
  env: NodeJS.ProcessEnv;
}

/** A binary with a data dir of its own (removed by `cleanUp`). */
async function binary(label: string, bin: string): Promise<Binary> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-cli-'));
  const env: NodeJS.ProcessEnv = { ...process.env, BERTH_DATA_DIR: dataDir, NO_COLOR: '1' };
  delete env.BERTH_API_URL;
  delete env.BERTH_CONFIG;
  delete env.BERTH_STORE_URL;
  return { label, bin, env };
}

/** Detach and delete what a (possibly failed) run left in a binary's data dir, then remove it. */
async function cleanUp(binary: Binary): Promise<void> {
  const dataDir = binary.env.BERTH_DATA_DIR ?? '';
  const berth = await openBerth({ dataDir, env: {}, logger: silentLogger });
  try {
    const attachments = await berth.listAttachments({ volume: 'clibench' }).catch(() => []);
    if (attachments.length > 0) await berth.detach({ volume: 'clibench', force: true });
    const volume = await berth.getVolume('clibench').catch(() => undefined);
    if (volume !== undefined) await berth.deleteVolume(volume.id);
  } finally {
    await berth.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

/**
 * Whole `berth` processes against `node -e 0` (the floor no Node CLI can beat), run in turn so that
 * both see the same machine load: `--version`, `--help`, `volume list` and an attach and a detach on
 * the loop transport (real loop devices). Each ratio is taken against the floor run just before it,
 * and the table prints their median beside the target of issue 12.
 *
 * `baseline` (`BENCH_CLI_BASELINE`: the `bin/run.js` of another built checkout, e.g. main's) runs
 * the same cases in the same rounds, before or after this one's by turns, each in its own data dir: the table
 * then shows both ratios and baseline / this, measured under the same load.
 */
export async function benchCliStart(rounds = 10, baseline?: string): Promise<void> {
  const cases: CliCase[] = [
    { name: 'berth --version', args: ['--version'], target: 2.5 },
    { name: 'berth --help', args: ['--help'], target: 2.5 },
    { name: 'berth volume list', args: ['volume', 'list'], target: 3 },
    { name: 'berth attach (loop)', args: ['attach', 'clibench'], target: 4 },
    { name: 'berth detach (loop)', args: ['detach', 'clibench'], target: 4 },
  ];
  const binaries: Binary[] = [];
  const floor: number[] = [];
  // Per binary label and case: wall times and ratios to the floor run just before.
  const times = new Map<string, number[]>();
  const ratios = new Map<string, number[]>();
  const push = (map: Map<string, number[]>, key: string, value: number): void => {
    map.set(key, [...(map.get(key) ?? []), value]);
  };
  try {
    binaries.push(await binary('this', BERTH_BIN));
    if (baseline !== undefined && baseline !== '') binaries.push(await binary('baseline', path.resolve(baseline)));
    // The volume the attach cases use, made by each binary in its own data dir.
    for (const b of binaries) await timeProcess([b.bin, 'volume', 'create', '--size', '16MiB', '--name', 'clibench'], b.env);
    // One untimed round: the first start reads every file from disk, the others from the page cache.
    await timeProcess(['-e', '0'], {});
    for (const b of binaries) for (const c of cases) await timeProcess([b.bin, ...c.args], b.env);
    for (let round = 0; round < rounds; round++) {
      // Which binary goes first alternates by round, so neither always runs right after the other's start.
      const order = round % 2 === 0 ? binaries : [...binaries].reverse();
      for (const c of cases) {
        for (const b of order) {
          const base = await timeProcess(['-e', '0'], b.env);
          const ms = await timeProcess([b.bin, ...c.args], b.env);
          floor.push(base);
          push(times, `${b.label} ${c.name}`, ms);
          push(ratios, `${b.label} ${c.name}`, ms / base);
        }
      }
    }
    const withBaseline = binaries.length > 1;
    printTable(
      `whole berth processes against \`node -e 0\`, ${rounds} rounds, each run beside a floor run (ms and ratios, medians); this: ${BERTH_BIN}` +
        (withBaseline ? `; baseline: ${baseline}` : ''),
      ['command', 'ms p50', 'floor p50', 'ratio p50', 'target', 'met', ...(withBaseline ? ['baseline ms', 'baseline ratio', 'baseline / this'] : [])],
      cases.map((c) => {
        const ratio = median(ratios.get(`this ${c.name}`) ?? []);
        const row: Array<string | number> = [c.name, median(times.get(`this ${c.name}`) ?? []), median(floor), ratio, `<= ${c.target}x`, ratio <= c.target ? 'yes' : 'no'];
        if (withBaseline) {
          const baseRatio = median(ratios.get(`baseline ${c.name}`) ?? []);
          row.push(median(times.get(`baseline ${c.name}`) ?? []), baseRatio, baseRatio / ratio);
        }
        return row;
      }),
    );
  } finally {
    for (const b of binaries) await cleanUp(b);
  }
}
