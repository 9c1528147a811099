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

// The built binary as a user runs it (`@berth/cli`'s bin), resolved through the workspace link.
const BERTH_BIN = path.join(path.dirname(createRequire(import.meta.url).resolve('@berth/cli/package.json')), 'bin', 'run.js');

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

/**
 * Whole `berth` processes against `node -e 0` (the floor no Node CLI can beat), run in turn so that
 * both see the same machine load: `--version`, `--help`, `volume list` and an attach and a detach on
 * the loop transport (real loop devices). Each ratio is taken against the floor run just before it,
 * and the table prints their median beside the target of issue 12.
 */
export async function benchCliStart(rounds = 10): Promise<void> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-cli-'));
  const env: NodeJS.ProcessEnv = { ...process.env, BERTH_DATA_DIR: dataDir, NO_COLOR: '1' };
  delete env.BERTH_API_URL;
  delete env.BERTH_CONFIG;
  const cases: CliCase[] = [
    { name: 'berth --version', args: ['--version'], target: 2.5 },
    { name: 'berth --help', args: ['--help'], target: 2.5 },
    { name: 'berth volume list', args: ['volume', 'list'], target: 3 },
    { name: 'berth attach (loop)', args: ['attach', 'clibench'], target: 4 },
    { name: 'berth detach (loop)', args: ['detach', 'clibench'], target: 4 },
  ];
  const floor: number[] = [];
  const times = new Map<string, number[]>(cases.map((c) => [c.name, []]));
  const ratios = new Map<string, number[]>(cases.map((c) => [c.name, []]));
  try {
    await timeProcess([BERTH_BIN, 'volume', 'create', '--size', '16MiB', '--name', 'clibench'], env);
    // One untimed round: the first start reads every file from disk, the others from the page cache.
    await timeProcess(['-e', '0'], env);
    for (const c of cases) await timeProcess([BERTH_BIN, ...c.args], env);
    for (let round = 0; round < rounds; round++) {
      for (const c of cases) {
        const base = await timeProcess(['-e', '0'], env);
        const ms = await timeProcess([BERTH_BIN, ...c.args], env);
        floor.push(base);
        times.get(c.name)?.push(ms);
        ratios.get(c.name)?.push(ms / base);
      }
    }
    printTable(
      `whole berth processes against \`node -e 0\`, ${rounds} rounds, each run beside a floor run (ms and ratios, medians)`,
      ['command', 'ms p50', 'floor p50', 'ratio p50', 'target', 'met'],
      cases.map((c) => {
        const ratio = median(ratios.get(c.name) ?? []);
        return [c.name, median(times.get(c.name) ?? []), median(floor), ratio, `<= ${c.target}x`, ratio <= c.target ? 'yes' : 'no'];
      }),
    );
  } finally {
    // Whatever a failed round left attached is detached before the data dir goes.
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
}
