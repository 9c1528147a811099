// Build step of @berth/host: compile berth-spawner (berth-spawner.c) with the machine's C compiler
// into dist/berth-spawner. Without a compiler the runner starts commands with Node's own spawn
// (a fork of the calling process per command, slower in a large process): say so, do not fail.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const source = path.join(here, 'berth-spawner.c');
const dist = path.resolve(here, '../../dist');
const target = path.join(dist, 'berth-spawner');
mkdirSync(dist, { recursive: true });
rmSync(target, { force: true });
const compiler = [process.env.CC, 'cc', 'gcc'].find((cc) => cc && ['/usr/bin', '/bin', '/usr/local/bin'].some((d) => existsSync(path.join(d, cc)) || path.isAbsolute(cc)));
if (!compiler) {
  console.warn('@berth/host: no C compiler (cc/gcc): commands are started with Node\'s spawn (a fork per command); apt-get install -y gcc');
} else {
  try {
    execFileSync(compiler, ['-O2', '-Wall', '-Wextra', '-o', target, source], { stdio: 'inherit', timeout: 60_000 });
  } catch (error) {
    // The runner works without it (Node's spawn); spawner.e2e.test.ts fails when it is missing.
    rmSync(target, { force: true });
    console.warn(`@berth/host: berth-spawner did not compile (${error.message}): commands are started with Node's spawn`);
  }
}
