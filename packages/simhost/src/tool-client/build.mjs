// Build step of @berth/simhost: compile the fake tools' client (simhost-tool.c) with the
// machine's C compiler into dist/simhost-tool. Without a compiler the simulated host still
// works, with a Node client per tool call (100-250 ms each instead of ~1 ms): say so, do not fail.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const source = path.join(here, 'simhost-tool.c');
const dist = path.resolve(here, '../../dist');
const target = path.join(dist, 'simhost-tool');
mkdirSync(dist, { recursive: true });
rmSync(target, { force: true });
const compiler = [process.env.CC, 'cc', 'gcc'].find((cc) => cc && ['/usr/bin', '/bin', '/usr/local/bin'].some((d) => existsSync(path.join(d, cc)) || path.isAbsolute(cc)));
if (!compiler) {
  console.warn('@berth/simhost: no C compiler (cc/gcc): the simulated tools fall back to a Node client per call (slow); apt-get install -y gcc');
} else {
  execFileSync(compiler, ['-O2', '-Wall', '-Wextra', '-Werror', '-o', target, source], { stdio: 'inherit', timeout: 60_000 });
}
