#!/usr/bin/env node
// Bundles the commands' run path after `tsc` (see README "Start time") into ONE CommonJS file,
// dist/bundle/berth.cjs: oclif, every command (each initialised only when it runs), the runtime, the
// store, kysely, the built-in plugins and @berth/client. bin/run.js compiles it with V8's code cache
// (dist/bundle/berth.cjs.cache, written by scripts/warm-code-cache.mjs and refreshed by the bin), so
// a command's start neither resolves hundreds of small ES modules nor parses and compiles them again:
// Node 20 has no compile cache for ES modules, and `vm.Script` gives one to a CommonJS file.
//
// It bundles tsc's JavaScript (each workspace package's dist), not the TypeScript sources: tsc
// emits the decorator metadata tsyringe reads, which esbuild does not.
//
// What stays an ordinary import, resolved by Node at run time:
// - @berth/core and @berth/host: an installed third-party plugin imports them too, and there must be
//   ONE core in the process (its resolve hook sends a plugin's `@berth/core` to the running berth's
//   copy, so that its BerthError is the core's BerthError). Core ships as its own bundle with
//   tsyringe and zod inside (packages/core/scripts/bundle.mjs), so there is one container and one
//   zod too: every package imports zod as `@berth/core/zod`, and a bare `zod` fails the build.
//   The CommonJS bundle `require`s them as the ES modules they are (Node >= 20.19 and 22.12 load an
//   ES module without top-level await synchronously), so the bundle, the plugins, @berth/api and
//   the simulator all get the one instance Node's ES module loader keeps;
// - better-sqlite3 (native) and pg (loaded only for a PostgreSQL store);
// - @berth/simhost (an optional peer, imported by name only under --simulate);
// - @berth/api and fastify (only `berth serve` loads them), and oclif's plugins (they load
//   @oclif/core by name themselves).
import { chmod, copyFile, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { builtinModules } from 'node:module';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const NODE_BUILTINS = new Set(builtinModules);
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const out = join(dist, 'bundle');

/**
 * The packages left to Node (see above); every other package is copied into the bundle — pino too:
 * runtime's logger writes through its synchronous destinations only, never a worker transport whose
 * file pino would look up on disk.
 */
const EXTERNAL = [
  /^@berth\/(core|host|simhost|api)(\/|$)/,
  /^(better-sqlite3|pg|fastify)(\/|$)/,
  /^@oclif\/plugin-/,
  // oclif's TypeScript support, which berth's compiled commands never use (and 10 MB to parse).
  /^(typescript|ts-node)(\/|$)/,
];

// @oclif/core's few places that find its own package.json from `__dirname` get @oclif/core's real
// directory, resolved at run time from the bundle's location. `import.meta` of the bundled ES modules
// becomes the bundle's own: the modules that use it (the loop driver's and the CLI's files beside
// them, the store's native addon, the simulator's module) find what they look for from the bundle
// (the loop driver's program is copied beside it below).
const banner = [
  "const __berthOclifLib = () => require('node:path').dirname(require.resolve('@oclif/core'));",
  "const __berthImportMetaUrl = require('node:url').pathToFileURL(__filename).href;",
  "const __berthImportMetaResolve = (specifier) => require('node:url').pathToFileURL(require.resolve(specifier)).href;",
  // Every `import()` of the bundle (see dynamicImports); the space keeps this one Node's own.
  "const __berthImport = (specifier) => (globalThis[Symbol.for('berth.import')] ?? ((s) => import (s)))(specifier);",
].join('\n');

/**
 * The bundle's `import()` calls (pg, @berth/api, the simulator, oclif's ES module plugins, config
 * files) go through `__berthImport`: a function compiled from V8's code cache has lost the
 * dynamic-import callback of the `vm.Script` it came from (Node 20.20: ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING),
 * so bin/run.js provides one from outside the script (`globalThis[Symbol.for('berth.import')]`).
 * Plain `require` of the bundle (scripts/write-manifest.mjs) still has Node's own. Not replaced:
 * `import(` inside a string or after a name character (`"import()"` in oclif's messages).
 */
function dynamicImports(text) {
  let count = 0;
  const replaced = text.replaceAll(/(?<![\w$."'`])import\(/g, () => {
    count += 1;
    return '__berthImport(';
  });
  if (count === 0) throw new Error('the bundle has no import() left to route through __berthImport: update dynamicImports in scripts/bundle.mjs');
  return replaced;
}

/**
 * oclif finds the plugins `package.json` lists (`oclif.plugins`) among the dependencies by testing
 * each dependency against each name with minimatch, which compiles the name into a pattern every
 * time: ~50 compilations, ~8 ms of every start (a loaded machine). A name without a glob character
 * matches only itself, so such a name is compared as a string; the rest still go to minimatch.
 */
function exactPluginNames(source) {
  const call = '(0, minimatch_1.minimatch)(p, w)';
  if (!source.includes(call)) throw new Error(`@oclif/core's plugin-loader.js no longer calls ${call}: update exactPluginNames in scripts/bundle.mjs`);
  return source.replace(call, `(/[*?[\\]{}()!+@]/.test(w.replace(/^@[^/()]+\\//, '')) ? ${call} : p === w)`);
}

/**
 * oclif sorts each plugin's commands by id with `localeCompare`, whose first call in a process
 * builds ICU's collator (~25-50 ms CPU on the shared machine, the largest single cost in the oclif
 * chunk of a `volume list` profile; nothing else on a command's path compares by locale). For ids
 * of lowercase letters, `:` and `-` (every id of berth and of its oclif plugins) the collator's order
 * is the strings' own, so those compare as strings; any other id still goes to `localeCompare`.
 */
function plainIdOrder(source) {
  const call = '.sort((a, b) => a.id.localeCompare(b.id))';
  if (!source.includes(call)) throw new Error(`@oclif/core's plugin.js no longer sorts with ${call}: update plainIdOrder in scripts/bundle.mjs`);
  return source.replace(call, '.sort((a, b) => (/^[a-z:-]*$/.test(a.id) && /^[a-z:-]*$/.test(b.id) ? (a.id < b.id ? -1 : a.id > b.id ? 1 : 0) : a.id.localeCompare(b.id)))');
}

/**
 * The bundle's entry: oclif's `run` and `flush`, every command (`COMMANDS`, oclif's "explicit"
 * command discovery), the two hooks and which commands ran. Each command and hook is a getter that initialises its
 * modules on first use (esbuild makes a `require` of an ES module inside the bundle a lazy
 * initialiser), so `berth --version` runs none of berth's packages and `berth volume list` only
 * what it imports.
 */
function entrySource(commandFiles) {
  const lines = ["'use strict';", "const oclif = require('@oclif/core');", 'const COMMANDS = {};', 'const loaded = new Set();'];
  for (const file of commandFiles) {
    const id = relative(join(dist, 'commands'), file).replace(/\.js$/, '').split(sep).join(':');
    const path = `./${relative(dist, file).split(sep).join('/')}`;
    lines.push(`Object.defineProperty(COMMANDS, ${JSON.stringify(id)}, { enumerable: true, get: () => (loaded.add(${JSON.stringify(id)}), require(${JSON.stringify(path)}).default) });`);
  }
  lines.push(
    'module.exports = {',
    '  run: oclif.run,',
    '  flush: oclif.flush,',
    '  COMMANDS,',
    '  // The commands this process initialised (bin/run.js keeps the code cache up to date with them).',
    '  loadedCommands: () => [...loaded],',
    // Literal `require`s, each initialised at the hook's first call (esbuild bundles only those).
    "  HOOK_PREPARSE: function (...args) { return require('./hooks/preparse.js').default.apply(this, args); },",
    "  HOOK_COMMAND_NOT_FOUND: function (...args) { return require('./hooks/command-not-found.js').default.apply(this, args); },",
    '};',
  );
  return `${lines.join('\n')}\n`;
}

/** Every compiled command module under dist/commands. */
async function commandModules(dir) {
  const entries = await readdir(dir, { withFileTypes: true });
  const files = await Promise.all(
    entries.map((entry) => {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) return commandModules(path);
      return entry.name.endsWith('.js') ? [path] : [];
    }),
  );
  return files.flat();
}

const commandFiles = (await commandModules(join(dist, 'commands'))).sort();
const result = await build({
  stdin: { contents: entrySource(commandFiles), resolveDir: dist, sourcefile: 'berth-entry.cjs', loader: 'js' },
  absWorkingDir: root,
  outfile: join(out, 'berth.cjs'),
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  // No minifying: stack traces (DEBUG=1) keep their names; with the code cache (bin/run.js) the
  // source is not parsed at start at all.
  minify: false,
  metafile: true,
  // Written below, ASCII only (see asciiOnly).
  write: false,
  logLevel: 'warning',
  banner: { js: banner },
  define: { 'import.meta.url': '__berthImportMetaUrl', 'import.meta.resolve': '__berthImportMetaResolve' },
  plugins: [
    {
      name: 'berth-externals',
      setup(on) {
        on.onLoad({ filter: /[\\/]@oclif[\\/]core[\\/]lib[\\/].*\.js$/ }, async (args) => {
          const source = await readFile(args.path, 'utf8');
          let contents = source.replaceAll(/\b__dirname\b/g, '__berthOclifLib()');
          if (args.path.endsWith('plugin-loader.js')) contents = exactPluginNames(contents);
          if (args.path.endsWith(`config${sep}plugin.js`)) contents = plainIdOrder(contents);
          return { contents, loader: 'js' };
        });
        // zod comes from core (`@berth/core/zod`, one copy in one file): a bare `zod` would put a
        // second copy in the bundle.
        on.onResolve({ filter: /^zod(\/|$)/ }, (args) => ({
          errors: [{ text: `${args.importer} imports ${args.path}: import zod from '@berth/core/zod' (packages/core/src/zod.ts)` }],
        }));
        on.onResolve({ filter: /^[^./]/ }, (args) => {
          return EXTERNAL.some((pattern) => pattern.test(args.path)) ? { path: args.path, external: true } : undefined;
        });
      },
    },
  ],
});

// The bundle imports its external packages from the CLI's own location, so each must be the CLI's
// dependency (an installed @berth/cli could not count on finding it beside another package).
const manifest = JSON.parse(await readFile(join(root, 'package.json'), 'utf8'));
const declared = new Set(Object.keys({ ...manifest.dependencies, ...manifest.peerDependencies }));
// What oclif and the runtime import only when present: TypeScript sources, Yarn PnP, the simulator,
// and picomatch, which fdir (under oclif's tinyglobby) tries to `require` inside a try.
const OPTIONAL = new Set(['typescript', 'ts-node', 'pnpapi', '@berth/simhost', 'picomatch']);
const undeclared = new Set();
for (const output of Object.values(result.metafile.outputs)) {
  for (const imported of output.imports) {
    if (!imported.external || imported.path.startsWith('node:')) continue;
    const name = imported.path.split('/').slice(0, imported.path.startsWith('@') ? 2 : 1).join('/');
    if (!declared.has(name) && !OPTIONAL.has(name) && !NODE_BUILTINS.has(name)) undeclared.add(name);
  }
}
if (undeclared.size > 0) {
  throw new Error(`the bundle imports ${[...undeclared].join(', ')}, which apps/cli/package.json does not list: add them to its dependencies`);
}
/**
 * `text` with every non-ASCII character written as its `\u` escape. esbuild escapes them in strings
 * but leaves them in comments (kysely's JSDoc, berth's own `—` and `×`) and in regular expression
 * literals, where the escape means the same character. One such character makes Node decode the whole
 * file into a two-byte string: the 900 KB runtime chunk took ~2× as long to decode (~20 ms against
 * ~8 ms, loaded machine), and V8 then scans twice the bytes.
 */
function asciiOnly(text) {
  return text.replaceAll(/[^\x00-\x7f]/g, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

for (const file of result.outputFiles) {
  await mkdir(dirname(file.path), { recursive: true });
  await writeFile(file.path, /\.c?js$/.test(file.path) ? dynamicImports(asciiOnly(file.text)) : file.contents);
}

const outputs = Object.keys(result.metafile.outputs);
// Files of an earlier build go after this one is written, not before: a berth starting meanwhile (a
// rebuild while tests run) still finds every chunk its entry names.
const written = new Set(outputs.map((file) => join(root, file)));

// The C programs a bundled package finds beside its own module (`new URL('./name', import.meta.url)`)
// go beside the chunk that now holds that module. Only @berth/driver-loop's: the other packages with
// one (host — its berth-spawner and berth-loop-detach —, simhost) stay ordinary imports. Missing
// (no C compiler at build time): the package has its fallback, as it does unbundled.
const NATIVE_PROGRAMS = [{ pkg: '@berth/driver-loop', file: 'berth-loop-attach' }];
for (const { pkg, file } of NATIVE_PROGRAMS) {
  const source = join(dirname(fileURLToPath(import.meta.resolve(pkg))), file);
  const holder = Object.entries(result.metafile.outputs).find(([, output]) => Object.keys(output.inputs).some((input) => input.includes(`${pkg.split('/')[1]}${sep}dist${sep}`) || input.includes(`${pkg.split('/')[1]}/dist/`)));
  if (!existsSync(source) || holder === undefined) continue;
  const target = join(root, dirname(holder[0]), file);
  await copyFile(source, target);
  await chmod(target, 0o755);
  written.add(target);
}
for (const file of await readdir(out, { recursive: true, withFileTypes: true })) {
  const path = join(file.parentPath, file.name);
  if (file.isFile() && !written.has(path)) await rm(path);
}
// The directories of an earlier build's layout (one ES module per command, chunks), now empty.
const dirs = (await readdir(out, { recursive: true, withFileTypes: true })).filter((file) => file.isDirectory()).map((file) => join(file.parentPath, file.name));
for (const dir of dirs.sort((a, b) => b.length - a.length)) if ((await readdir(dir)).length === 0) await rm(dir, { recursive: true });
const inputs = Object.keys(result.metafile.inputs).length;
process.stdout.write(`bundled ${commandFiles.length} commands from ${inputs} modules into ${outputs.length} files under ${relative(root, out)}\n`);
