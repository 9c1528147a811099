// Build helper shared by the packages that ship a small C program beside their JavaScript
// (@berth/host's berth-spawner, @berth/simhost's simhost-tool, @berth/driver-loop's
// berth-loop-detach and berth-loop-attach): compile one source with the machine's C compiler into
// the package's dist/.
// Without a compiler, or when the source does not compile, the package works without the program
// (each has a slower way) — say so on stderr and go on: a build never fails for it.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';

/** The C compiler to use: $CC, else cc or gcc from the usual directories; undefined when none. */
export function findCompiler() {
  return [process.env.CC, 'cc', 'gcc'].find((cc) => cc && (path.isAbsolute(cc) ? existsSync(cc) : ['/usr/bin', '/bin', '/usr/local/bin'].some((d) => existsSync(path.join(d, cc)))));
}

/**
 * Compile `source` into `target` (an old `target` is removed first, so a failed build never
 * leaves a stale program). `without` says what the package does without it. Returns whether the
 * program was built; with `failOnError` a source that does not compile fails the build instead.
 */
export function compileNative({ pkg, source, target, without, werror = false, failOnError = false }) {
  mkdirSync(path.dirname(target), { recursive: true });
  rmSync(target, { force: true });
  const compiler = findCompiler();
  if (!compiler) {
    console.warn(`${pkg}: no C compiler (cc/gcc): ${without}; apt-get install -y gcc`);
    return false;
  }
  try {
    execFileSync(compiler, ['-O2', '-Wall', '-Wextra', ...(werror ? ['-Werror'] : []), '-o', target, source], { stdio: 'inherit', timeout: 60_000 });
    return true;
  } catch (error) {
    rmSync(target, { force: true });
    if (failOnError) throw error;
    console.warn(`${pkg}: ${path.basename(target)} did not compile (${error.message}): ${without}`);
    return false;
  }
}
