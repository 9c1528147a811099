#!/usr/bin/env node
// The `berth` executable. It compiles the bundled CLI (dist/bundle/berth.cjs: oclif, every command,
// the runtime; scripts/bundle.mjs) with V8's code cache, so that a start does not parse and compile
// ~2 MB of JavaScript again: `volume list` ~0.7x the time of the same bundle without the cache (README
// "Start time"). oclif finds the commands in that file from package.json's `oclif` field ("explicit"
// discovery) and their flags and help in oclif.manifest.json, so `--version` and `--help` initialise
// none of berth's packages.
import Module, { createRequire } from 'node:module';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

// The bundle `require`s @berth/core, an ES module: Node loads one synchronously from 20.19 and
// 22.12 on. Older ones would fail at the first command with ERR_REQUIRE_ESM; say so instead.
const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
if (major < 20 || (major === 20 && minor < 19) || major === 21 || (major === 22 && minor < 12)) {
  process.stderr.write(`Error: berth needs Node.js ^20.19.0 or >=22.12.0; this is ${process.version}\nHint: install a newer Node.js (the CLI's package.json "engines")\n`);
  process.exit(13); // HOST_UNSUPPORTED
}

const BUNDLE = fileURLToPath(new URL('../dist/bundle/berth.cjs', import.meta.url));
/**
 * V8's code cache of the bundle, in a file of berth's own layout:
 * `MAGIC | sha256(bundle) | sha256(rest) | rest`, where rest = `u32le n | n bytes: the ids of the
 * commands whose code it holds, one per line | V8's cached data`. V8 itself checks only that the
 * source has the same length and does not check its data's integrity (a flipped byte crashes the
 * process), so a cache is used only when both hashes match: another build of the bundle, or a
 * damaged file, is ignored and written again.
 */
const CACHE = `${BUNDLE}.cache`;
const MAGIC = Buffer.from('berth-v8-cache1\n');
const HEADER = MAGIC.length + 32 + 32 + 4;

function sha256(...parts) {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest();
}

/** The cache's commands and V8 data when it is this bundle's and intact. */
function readCache(bundleHash) {
  let file;
  try {
    file = readFileSync(CACHE);
  } catch {
    return undefined;
  }
  if (file.length < HEADER || !file.subarray(0, MAGIC.length).equals(MAGIC)) return undefined;
  if (!file.subarray(MAGIC.length, MAGIC.length + 32).equals(bundleHash)) return undefined;
  const rest = file.subarray(MAGIC.length + 64);
  if (!sha256(rest).equals(file.subarray(MAGIC.length + 32, MAGIC.length + 64))) return undefined;
  const n = rest.readUInt32LE(0);
  if (4 + n > rest.length) return undefined;
  return { commands: rest.subarray(4, 4 + n).toString('utf8').split('\n').filter(Boolean), data: rest.subarray(4 + n) };
}

/**
 * Runs the bundle as Node runs a CommonJS module, compiled with the code cache, and leaves it in
 * `require.cache`: oclif's own `require` of the file (the command discovery target) gets this instance.
 */
function loadBundle() {
  // The bundle's `import()` calls (pg, @berth/api, the simulator, oclif's ES module plugins) come
  // here (scripts/bundle.mjs, dynamicImports): a function compiled from the code cache has lost the
  // script's own dynamic-import callback. They resolve from this file's directory as they would
  // from the bundle's: both are inside the CLI's package, and the specifiers are package names or
  // absolute URLs.
  globalThis[Symbol.for('berth.import')] = (specifier) => import(specifier);
  const bytes = readFileSync(BUNDLE);
  const bundleHash = sha256(bytes);
  const cache = readCache(bundleHash);
  const script = new vm.Script(Module.wrap(bytes.toString('utf8')), { filename: BUNDLE, cachedData: cache?.data });
  const module = new Module(BUNDLE);
  module.filename = BUNDLE;
  const require = createRequire(BUNDLE);
  require.cache[BUNDLE] = module;
  script.runInThisContext().call(module.exports, module.exports, require, module, BUNDLE, dirname(BUNDLE));
  module.loaded = true;
  const used = cache !== undefined && script.cachedDataRejected !== true;
  return { berth: module.exports, script, bundleHash, known: used ? cache.commands : undefined };
}

/**
 * At exit after a success: writes the code cache again when there was none usable, or when this
 * command's code is not in it yet (so each command pays the compile once per build) — a new file,
 * synced, renamed over the old. Not when the bundle on disk is no longer the one this process ran
 * (rebuilt or upgraded meanwhile). Best effort: a package directory this user cannot write (a
 * root install run by a user) keeps the build's cache.
 */
function refreshCache({ berth, script, bundleHash, known }, exitCode) {
  if (exitCode !== 0) return;
  // oclif's own paths (`--help`, `--version`) count as the command `-`.
  const commands = berth.loadedCommands().length > 0 ? berth.loadedCommands() : ['-'];
  if (known !== undefined && commands.every((id) => known.includes(id))) return;
  const tmp = `${CACHE}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`;
  try {
    if (!sha256(readFileSync(BUNDLE)).equals(bundleHash)) return;
    const index = Buffer.from([...new Set([...(known ?? []), ...commands])].sort().join('\n'), 'utf8');
    const count = Buffer.alloc(4);
    count.writeUInt32LE(index.length);
    const data = script.createCachedData();
    const fd = openSync(tmp, 'w', 0o644);
    try {
      for (const part of [MAGIC, bundleHash, sha256(count, index, data), count, index, data]) writeSync(fd, part);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, CACHE);
    sweepTemporaryFiles();
  } catch {
    rmSync(tmp, { force: true });
  }
}

/** Temporary cache files of writers killed half-way (older than a minute: none is still writing). */
function sweepTemporaryFiles() {
  const dir = dirname(CACHE);
  for (const name of readdirSync(dir)) {
    if (!name.startsWith(`${basename(CACHE)}.`) || !name.endsWith('.tmp')) continue;
    try {
      if (Date.now() - statSync(join(dir, name)).mtimeMs > 60_000) rmSync(join(dir, name), { force: true });
    } catch {
      // Gone meanwhile.
    }
  }
}

// @oclif/core checks at import that this Node satisfies its own `engines` (node >= 18, which
// berth's engines imply) with the whole of semver: ~10 ms CPU of every start (`--version`
// 0.93×, `--help` 0.97× the CPU without it, 10–12 alternating pairs).
// Switched off while the bundle initialises oclif (the variable is oclif's own), so no child process inherits it.
const engineWarning = process.env.OCLIF_DISABLE_ENGINE_WARNING;
process.env.OCLIF_DISABLE_ENGINE_WARNING = '1';
const loaded = loadBundle();
const { flush, run } = loaded.berth;
if (engineWarning === undefined) delete process.env.OCLIF_DISABLE_ENGINE_WARNING;
else process.env.OCLIF_DISABLE_ENGINE_WARNING = engineWarning;
process.once('exit', (code) => refreshCache(loaded, code));

// Global flags before the command (`berth --data-dir X volume list`, `berth --json volume list`,
// `berth --simulate attach db1`, `berth --store postgres://… attach db1`) mean what they mean after
// it. oclif reads flags only after the command's words, so those with an environment variable become it (which the shared flags, the
// runtime and oclif's plugin commands all read), and --json and --verbose move behind the command.
const BY_ENV = { '--data-dir': 'BERTH_DATA_DIR', '--config': 'BERTH_CONFIG', '--api': 'BERTH_API_URL', '--store': 'BERTH_STORE_URL' };
const MOVED = new Set(['--json', '--verbose']);

const argv = process.argv.slice(2);
const moved = [];
for (;;) {
  const [first = '', second] = argv;
  const [name, inline] = first.startsWith('--') && first.includes('=') ? [first.slice(0, first.indexOf('=')), first.slice(first.indexOf('=') + 1)] : [first, undefined];
  if (name === '--simulate' && inline === undefined) {
    process.env.BERTH_SIMULATE = '1';
    argv.shift();
  } else if (name in BY_ENV && inline !== undefined) {
    process.env[BY_ENV[name]] = inline;
    argv.shift();
  } else if (name in BY_ENV && second !== undefined && argv.length > 2) {
    process.env[BY_ENV[name]] = second;
    argv.splice(0, 2);
  } else if (MOVED.has(first) && argv.length > 1) {
    moved.push(argv.shift());
  } else {
    break;
  }
}
// `--data-dir` after the command names the data dir too: oclif's plugin commands, which keep
// installed plugins there, read it from the environment.
const end = argv.includes('--') ? argv.indexOf('--') : argv.length;
const dataDir = argv.slice(0, end).findLast((arg, i, all) => all[i - 1] === '--data-dir' || arg.startsWith('--data-dir='));
if (dataDir !== undefined) process.env.BERTH_DATA_DIR = dataDir.startsWith('--data-dir=') ? dataDir.slice('--data-dir='.length) : dataDir;

/** How long the process may linger after its command ended, for what a plugin left open. */
const LINGER_MS = 1_000;

const args = [...argv.slice(0, end), ...moved, ...argv.slice(end)];
try {
  await run(args, import.meta.url);
  await flush();
} catch (error) {
  // A berth command reports its own failures; what arrives here failed outside one (an unknown
  // command, a plugin-plugins command, a hook): it is printed in berth's Error/Hint shape too.
  const exit = error?.oclif?.exit;
  if (error?.code === 'EEXIT' && typeof exit === 'number') {
    process.exitCode = exit;
  } else {
    const { failureOutput } = await import('../dist/error-report.js');
    const debug = ['DEBUG', 'BERTH_DEBUG'].some((name) => !['', '0', 'false', undefined].includes(process.env[name]));
    const failure = failureOutput(error, { json: args.slice(0, end).includes('--json'), debug });
    if (failure.stdout !== undefined) process.stdout.write(`${failure.stdout}\n`);
    if (failure.stderr !== undefined) process.stderr.write(`${failure.stderr}\n`);
    process.exitCode = failure.exitCode;
  }
}
// The command is over (its output written, berth closed). A plugin may still hold the event loop
// open — a transport whose connect ignored its cancel keeps its own interval running after berth
// answered TIMEOUT — and the process would never end: it ends anyway, a moment later. An unref'd
// timer: with nothing else left the process ends at once, as before.
setTimeout(() => process.exit(), LINGER_MS).unref();
