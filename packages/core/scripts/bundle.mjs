#!/usr/bin/env node
// Bundles core's public entry points (dist/index.js, dist/errors.js, dist/zod.js) after `tsc`, so that a
// process that imports @berth/core reads a few files instead of ~50 of core's own, ~36 of tsyringe's and
// ~75 of zod's: every berth command starts by importing core, and Node 20 pays per module file
// (resolve, read, compile, link). It bundles tsc's JavaScript, which carries the decorator metadata
// tsyringe reads.
//
// zod is inlined and exported as `@berth/core/zod` (src/zod.ts): every berth package imports zod from
// there, so a process has one zod, in one file, which core's schemas, the packages' and the plugins'
// share (they compose core's schemas with their own `z`). tsyringe and reflect-metadata are inlined
// too: only core uses them, and there must be one container, which lives in core's own chunk. Left to
// Node at run time: pino and @berth/host. The outputs replace tsc's index.js/errors.js/zod.js in dist/ (chunks
// beside them, so `new URL('./plugin-resolve-hook.js', import.meta.url)` still finds the hook that
// tsc emitted there); tsc's .d.ts files are untouched.
import { readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const staging = join(root, 'dist-bundle');
const EXTERNAL = ['pino', '@berth/host', '@berth/host/*'];

/**
 * zod's error messages in English only. zod's locale index re-exports all ~45 of its translations
 * (`z.locales`), 244 KB of zod's 452 KB in the bundle, which every berth process would compile for
 * nothing: berth speaks English, and in a zod shared by every plugin a `z.config(z.locales.fr())`
 * would change berth's own messages. `z.locales.en` stays (zod configures it by default).
 */
function englishOnly() {
  return {
    name: 'zod-english-only',
    setup(on) {
      on.onLoad({ filter: /[\\/]zod[\\/]v4[\\/]locales[\\/]index\.js$/ }, async (args) => {
        const source = await readFile(args.path, 'utf8');
        const english = 'export { default as en } from "./en.js";';
        if (!source.includes(english)) throw new Error(`${args.path} no longer has the line ${english}: update englishOnly in scripts/bundle.mjs`);
        return { contents: `${english}\n`, loader: 'js', resolveDir: dirname(args.path) };
      });
    },
  };
}

const BANNER = '// @berth/core, bundled by scripts/bundle.mjs from tsc\'s output';
// Run again without a fresh `tsc`: dist/index.js is already the bundle.
if ((await readFile(join(dist, 'index.js'), 'utf8')).startsWith(BANNER)) process.exit(0);

await rm(staging, { recursive: true, force: true });
// Old chunks of an earlier build (names carry a content hash).
for (const name of await readdir(dist)) if (name.startsWith('core-chunk-')) await rm(join(dist, name));

await build({
  entryPoints: { index: join(dist, 'index.js'), errors: join(dist, 'errors.js'), zod: join(dist, 'zod.js') },
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
  plugins: [englishOnly()],
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
