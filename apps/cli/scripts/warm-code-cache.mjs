#!/usr/bin/env node
// Writes the bundle's V8 code cache (dist/bundle/berth.cjs.cache, see bin/run.js) after the build,
// so that the first berth command of a fresh install starts as fast as the next ones: runs the
// commands a start always compiles (`--version`, `--help`) and `volume list` on an empty data dir of
// its own, each of which adds its code to the cache. Every other command adds its own the first time
// it succeeds where the package directory is writable.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'run.js');
const dataDir = mkdtempSync(join(tmpdir(), 'berth-warm-cache-'));
try {
  const env = { ...process.env, BERTH_DATA_DIR: dataDir };
  for (const name of ['BERTH_CONFIG', 'BERTH_API_URL', 'BERTH_STORE_URL', 'BERTH_SIMULATE']) delete env[name];
  for (const args of [['--version'], ['--help'], ['volume', 'list']]) {
    try {
      execFileSync(process.execPath, [bin, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });
    } catch (error) {
      // Its own words: a build that cannot run the CLI it built (BERTH_FAULTS set, no native addon) says why.
      throw new Error(`berth ${args.join(' ')} failed while writing the code cache: ${error.stderr?.toString().trim() || error.message}`);
    }
  }
} finally {
  rmSync(dataDir, { recursive: true, force: true });
}
process.stdout.write('wrote the code cache of dist/bundle/berth.cjs\n');
