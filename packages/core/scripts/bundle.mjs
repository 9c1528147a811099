#!/usr/bin/env node
// Bundles core's two public entry points (dist/index.js, dist/errors.js) after `tsc`, so that a process
// that imports @berth/core reads a few files instead of ~50 of core's own plus ~36 of tsyringe's: every
// berth command starts by importing core, and Node 20 pays per module file (resolve, read, compile,
// link). It bundles tsc's JavaScript, which carries the decorator metadata tsyringe reads.
//
// Left to Node at run time (imported by name, one copy per process shared with plugins and the rest
// of berth): zod (plugins and the API compose core's schemas with their own `z`), pino, @berth/host.
// tsyringe and reflect-metadata are inlined: only core uses them, and there must be one container,
// which now lives in core's own chunk. The outputs replace tsc's index.js/errors.js in dist/ (chunks
// beside them, so `new URL('./plugin-resolve-hook.js', import.meta.url)` still finds the hook that
// tsc emitted there); tsc's .d.ts files are untouched.
import { readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const staging = join(root, 'dist-bundle');
const EXTERNAL = ['zod', 'zod/*', 'pino', '@berth/host', '@berth/host/*'];

const BANNER = '// @berth/core, bundled by scripts/bundle.mjs from tsc\'s output';
// Run again without a fresh `tsc`: dist/index.js is already the bundle.
if ((await readFile(join(dist, 'index.js'), 'utf8')).startsWith(BANNER)) process.exit(0);

await rm(staging, { recursive: true, force: true });
// Old chunks of an earlier build (names carry a content hash).
for (const name of await readdir(dist)) if (name.startsWith('core-chunk-')) await rm(join(dist, name));

await build({
  entryPoints: { index: join(dist, 'index.js'), errors: join(dist, 'errors.js') },
  outdir: staging,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'core-chunk-[hash]',
  external: EXTERNAL,
  sourcemap: 'linked',
  banner: { js: BANNER },
  logLevel: 'warning',
});

// ASCII only: a single `—` in a comment makes Node decode the whole file into a two-byte string
// (twice the bytes to decode, then to scan); the `\u` escape means the same character anywhere
// esbuild leaves one (comments, regular expression literals).
for (const name of await readdir(staging)) {
  if (!name.endsWith('.js')) continue;
  const text = await readFile(join(staging, name), 'utf8');
  await writeFile(join(staging, name), text.replaceAll(/[^\x00-\x7f]/g, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`));
}
for (const name of await readdir(staging)) await rename(join(staging, name), join(dist, name));
await rm(staging, { recursive: true, force: true });
