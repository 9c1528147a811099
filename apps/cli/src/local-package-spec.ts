import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, resolve } from 'node:path';
import { BerthError } from '@berth/core/errors';

/**
 * The npm `file:` spec for a plugin given as a local path (a directory or a packed tarball), or
 * undefined when `arg` is not one. plugin-plugins reads a bare `./dir` or `/tmp/x.tgz` as a GitHub
 * `owner/repo`; npm needs `file:/abs/path` to install from disk. A local path that does not exist
 * is a VALIDATION error.
 */
export function localPackageSpec(arg: string, cwd: string = process.cwd()): string | undefined {
  if (arg.startsWith('-') || arg.includes(':')) return undefined;
  const looksLocal =
    arg.startsWith('.') || arg.startsWith('/') || arg.startsWith('~/') || arg.endsWith('.tgz') || arg.endsWith('.tar.gz');
  if (!looksLocal) return undefined;
  const expanded = arg.startsWith('~/') ? resolve(homedir(), arg.slice(2)) : arg;
  const path = isAbsolute(expanded) ? expanded : resolve(cwd, expanded);
  if (!existsSync(path)) {
    // Left as it was, plugin-plugins reads it as a GitHub `owner/repo` and waits on the network
    // (`Installing plugin https://github.com//tmp/x...` until killed, offline).
    throw new BerthError('VALIDATION', `no such file or directory: ${path}`, {
      hint: 'give the path of a plugin package directory or of a packed .tgz (`npm pack`), or an npm package name',
    });
  }
  return `file:${path}`;
}
