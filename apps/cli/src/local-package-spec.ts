import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
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
  refuseUnversionedPackage(path);
  return `file:${path}`;
}

/** What npm installs from a `file:` directory as a version; anything else corrupts the install record. */
const SEMVER = /^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$/;

/**
 * A package directory whose package.json has no name or a version that is not semver: refused
 * before npm and plugin-plugins see it. Installed as it was, npm recorded it under another
 * plugin's name ("installed vnot-a-version", the JSON of the plugin installed before, and a
 * record `plugins uninstall` could not find any more: a fault explorer). A tarball is npm's to read.
 */
function refuseUnversionedPackage(path: string): void {
  const manifest = join(path, 'package.json');
  if (!statSync(path).isDirectory() || !existsSync(manifest)) return;
  let pkg: { name?: unknown; version?: unknown };
  try {
    pkg = JSON.parse(readFileSync(manifest, 'utf8')) as typeof pkg;
  } catch (error) {
    throw new BerthError('VALIDATION', `${manifest} is not valid JSON: ${error instanceof Error ? error.message : String(error)}`, { hint: 'fix the plugin package\'s package.json' });
  }
  if (typeof pkg.name !== 'string' || pkg.name === '') {
    throw new BerthError('VALIDATION', `the plugin package at ${path} has no name in its package.json`, { hint: 'give it a "name" (e.g. berth-transport-NAME)' });
  }
  if (typeof pkg.version !== 'string' || !SEMVER.test(pkg.version)) {
    throw new BerthError('VALIDATION', `the plugin package ${pkg.name} at ${path} has version ${JSON.stringify(pkg.version ?? null)}, which is not a semver version (like 1.0.0)`, {
      hint: 'give it a "version" such as 0.1.0 in its package.json',
    });
  }
}
