#!/usr/bin/env node
// Bundles the commands' run path after `tsc` (see README "Start time"): each command module becomes
// dist/bundle/commands/<id>.js, and what they share (the runtime, the store, kysely, the built-in
// plugins, @berth/client) lands in a few chunks under dist/bundle/chunks/. Node 20 spends most of a
// command's start resolving and reading hundreds of small ESM files through its loader, so one file
// per package group starts several times faster than the same code spread over ~500 modules.
//
// It bundles tsc's JavaScript (each workspace package's dist), not the TypeScript sources: tsc
// emits the decorator metadata tsyringe reads, which esbuild does not.
//
// What stays an ordinary import, resolved by Node at run time:
// - @berth/core and @berth/host: an installed third-party plugin imports them too, and there must be
//   ONE core in the process (its resolve hook sends a plugin's `@berth/core` to the running berth's
//   copy, so that its BerthError is the core's BerthError). Core ships as its own bundle with
//   tsyringe and zod inside (packages/core/scripts/bundle.mjs), so there is one container and one
//   zod too: every package imports zod as `@berth/core/zod`, and a bare `zod` fails the build;
// - better-sqlite3 (native) and pg (loaded only for a PostgreSQL store);
// - @berth/simhost (an optional peer, imported by name only under --simulate);
// - @berth/api and fastify (only `berth serve` loads them), and oclif with its plugins (they load
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

// @oclif/core is CommonJS: its dynamic `require(path)` calls (CommonJS plugins, package.json files)
// need a real `require` in the ESM bundle, and the few places that find its own package.json from
// `__dirname` get @oclif/core's real directory, resolved at run time from the bundle's location.
const banner = [
  "import { createRequire as __berthCreateRequire } from 'node:module';",
  "import { dirname as __berthDirname } from 'node:path';",
  'const require = __berthCreateRequire(import.meta.url);',
  "const __berthOclifLib = () => __berthDirname(require.resolve('@oclif/core'));",
].join('\n');

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

const entryPoints = [join(dist, 'oclif.js'), ...(await commandModules(join(dist, 'commands')))];
const result = await build({
  entryPoints,
  absWorkingDir: root,
  outbase: dist,
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'chunks/[name]-[hash]',
  // No minifying: stack traces (DEBUG=1) keep their names, and parsing is not what costs.
  minify: false,
  metafile: true,
  // Written below, ASCII only (see asciiOnly).
  write: false,
  logLevel: 'warning',
  banner: { js: banner },
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
// What oclif and the runtime import only when present: TypeScript sources, Yarn PnP, the simulator.
const OPTIONAL = new Set(['typescript', 'ts-node', 'pnpapi', '@berth/simhost']);
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
  await writeFile(file.path, file.path.endsWith('.js') ? asciiOnly(file.text) : file.contents);
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
const inputs = Object.keys(result.metafile.inputs).length;
process.stdout.write(`bundled ${entryPoints.length} commands from ${inputs} modules into ${outputs.length} files under ${relative(root, out)}\n`);
