#!/usr/bin/env node
// berth's packages outside the monorepo, before (or without) the npm registry:
//
//   node scripts/berth-packages.mjs pack --out DIR                  # npm pack every publishable package into DIR
//   node scripts/berth-packages.mjs install --prefix DIR [--reuse-native]
//       # pack them all and install them together, as `npm install --global --prefix DIR` does:
//       # DIR/bin/berth is a working berth, DIR/lib/node_modules/@berth/* its packages
//   node scripts/berth-packages.mjs warm-cache
//       # the same install into a temporary prefix, from the registry where npm's cache lacks
//       # something, then removed: `npm run test:all` runs it so that the end-to-end test's
//       # `--offline` install finds everything in the cache on a machine that never installed berth
//
// (`npm run berth:pack -- --out DIR`, `npm run berth:install -- --prefix DIR`.) Run `npm run build`
// first: the tarballs hold dist/. A publishable package is every workspace whose package.json is not
// `"private": true` (the test and bench workspaces and the fixture plugins are private).
//
// The tarballs are installed in one `npm install --global`, so each @berth/* dependency of another
// is met by its tarball (the same version); their third-party dependencies come from npm's cache
// first (`--prefer-offline`), else the registry. `npm ci` in this checkout does not fill the cache
// enough: it installs from the lockfile's tarballs and never fetches the registry's package
// documents, which a `--global` install of tarballs resolves their dependencies' ranges against
// (and a fresh machine has none of them: `warm-cache`). npm still asks
// the registry about the @berth/* names (unpublished): a registry that hangs instead of answering
// stalled such an install for minutes, so `--reuse-native` (the end-to-end test) installs
// `--offline`: everything it needs is in the checkout and npm's cache. better-sqlite3 is native: npm downloads a prebuilt binary or compiles
// it (minutes on a small machine). `--reuse-native` installs without install scripts and copies
// better-sqlite3's binary from this checkout instead (same version, same Node) — what the end-to-end
// test does.
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const NPM_TIMEOUT_MS = 15 * 60_000;

function usage(message) {
  process.stderr.write(`${message}\nusage: berth-packages.mjs pack --out DIR | install --prefix DIR [--reuse-native] | warm-cache\n`);
  process.exit(2);
}

async function npm(args, options = {}) {
  const { stdout } = await run('npm', args, { cwd: ROOT, timeout: NPM_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024, ...options });
  return stdout;
}

/** The workspaces to publish: name and directory. */
export async function publishableWorkspaces() {
  const workspaces = JSON.parse(await npm(['query', '.workspace']));
  return workspaces.filter((w) => w.private !== true).map((w) => ({ name: w.name, dir: join(ROOT, w.location) }));
}

/** npm pack every publishable workspace into `out`; resolves with the tarballs' paths. */
export async function packAll(out) {
  await mkdir(out, { recursive: true });
  // One npm for all of them: npm's own start dominates a pack, and nineteen in a row took ~90 s on a
  // loaded 2-core machine against ~18 s for one (the tarballs are byte for byte the same). Each
  // directory is given as `./…` from ROOT: a bare `packages/core` would be read as a GitHub repo.
  const dirs = (await publishableWorkspaces()).map((workspace) => `./${relative(ROOT, workspace.dir)}`);
  const packed = JSON.parse(await npm(['pack', '--json', '--pack-destination', out, ...dirs]));
  return packed.map((entry) => join(out, entry.filename));
}

/** Pack everything and install it into `prefix`; resolves with the path of the `berth` executable. */
export async function installAll(prefix, { reuseNative = false, offline = reuseNative } = {}) {
  const out = await mkdtemp(join(tmpdir(), 'berth-packages-'));
  try {
    const tarballs = await packAll(out);
    await npm([
      'install',
      '--global',
      '--prefix',
      prefix,
      '--omit=dev',
      '--no-audit',
      '--no-fund',
      ...(reuseNative ? ['--ignore-scripts'] : []),
      offline ? '--offline' : '--prefer-offline',
      ...tarballs,
    ]);
    if (reuseNative) await copyNativeBinaries(prefix);
  } finally {
    await rm(out, { recursive: true, force: true });
  }
  return join(prefix, 'bin', 'berth');
}

// better-sqlite3's compiled addon, from this checkout into every copy npm installed under the prefix.
async function copyNativeBinaries(prefix) {
  const relative = join('build', 'Release', 'better_sqlite3.node');
  const source = join(ROOT, 'node_modules', 'better-sqlite3');
  const version = JSON.parse(await readFile(join(source, 'package.json'), 'utf8')).version;
  const found = (await npm(['query', '#better-sqlite3', '--global', '--prefix', prefix]).then(JSON.parse)).filter((p) => p.version === version);
  if (found.length === 0) throw new Error(`better-sqlite3@${version} is not installed under ${prefix}: --reuse-native cannot apply`);
  for (const target of found) {
    await mkdir(join(target.realpath ?? target.path, 'build', 'Release'), { recursive: true });
    await copyFile(join(source, relative), join(target.realpath ?? target.path, relative));
  }
}

async function main() {
  const [command, ...rest] = process.argv.slice(2);
  const option = (name) => {
    const i = rest.indexOf(name);
    return i === -1 ? undefined : rest[i + 1];
  };
  if (command === 'pack') {
    const out = option('--out') ?? usage('pack needs --out DIR');
    for (const tarball of await packAll(resolve(out))) process.stdout.write(`${tarball}\n`);
  } else if (command === 'install') {
    const prefix = option('--prefix') ?? usage('install needs --prefix DIR');
    const berth = await installAll(resolve(prefix), { reuseNative: rest.includes('--reuse-native') });
    process.stdout.write(`installed: ${berth}\n`);
  } else if (command === 'warm-cache') {
    // What the end-to-end test's offline install will ask npm's cache for, fetched now (the
    // install step of `npm run test:all`, where the registry may be used); the prefix goes again.
    const prefix = await mkdtemp(join(tmpdir(), 'berth-warm-cache-'));
    try {
      await installAll(prefix, { reuseNative: true, offline: false });
      process.stdout.write('npm cache holds what an offline install of every berth package needs\n');
    } finally {
      await rm(prefix, { recursive: true, force: true });
    }
  } else {
    usage(`unknown command ${command ?? '(none)'}`);
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
