import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from '@berth/core/zod';
import { BerthError } from '@berth/core/errors';

/** The CLI package's root: the nearest directory above this module with a package.json. */
function packageRoot(from: string): string {
  // Found by walking up, not by a fixed `..`: this module runs from dist/ and, bundled, from
  // dist/bundle/commands/plugins/ (scripts/bundle.mjs).
  for (let dir = dirname(from); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) return dirname(from);
  }
}

/** Where `berth plugins new` copies from: a working transport plugin (shipped in the CLI's package). */
export const TEMPLATE_DIR = join(packageRoot(fileURLToPath(import.meta.url)), 'templates', 'transport-plugin');
/** The package name written in the template, replaced by the new plugin's. */
export const TEMPLATE_PACKAGE = 'berth-transport-4k';
/** The transport name written in the template, replaced by the new transport's. */
export const TEMPLATE_TRANSPORT = 'loop-4k';

/** An npm package name (optionally scoped), as npm accepts a new one. */
export const zPluginPackageName = z
  .string()
  .max(214, 'npm package names are at most 214 characters')
  .regex(/^(@[a-z0-9][a-z0-9._~-]*\/)?[a-z0-9][a-z0-9._~-]*$/, 'lowercase letters, digits, ".", "_", "~" and "-", optionally under an @scope/');

/** A transport name: what `registry.transport()` gets and attachments record. */
export const zTransportName = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'lowercase letters, digits and "-", starting with a letter or digit');

/** The transport name a package name suggests: `berth-transport-nbd` → `nbd`. */
export function transportNameFor(packageName: string): string {
  const bare = packageName.replace(/^@[^/]+\//, '');
  const stripped = bare.replace(/^berth-(transport|plugin|driver)-/, '').replace(/[^a-z0-9-]/g, '-');
  return stripped.length > 0 ? stripped : bare.replace(/[^a-z0-9-]/g, '-');
}

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

/** The template's files with the package and transport names put in, by relative path. */
export async function renderPluginTemplate(packageName: string, transport: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for (const file of await listFiles(TEMPLATE_DIR)) {
    const text = await readFile(join(TEMPLATE_DIR, file), 'utf8');
    files.set(file, text.replaceAll(TEMPLATE_PACKAGE, packageName).replaceAll(TEMPLATE_TRANSPORT, transport));
  }
  return files;
}

/** Write `files` under `dir`, which must not exist or be empty (nothing of the user's is overwritten). */
export async function writePluginFiles(dir: string, files: ReadonlyMap<string, string>): Promise<void> {
  if (existsSync(dir) && (await readdir(dir)).length > 0) {
    throw new BerthError('CONFLICT', `${dir} already exists and is not empty`, {
      hint: 'choose another directory with --dir, or remove that one first',
    });
  }
  for (const [file, text] of files) {
    const path = join(dir, file);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, text);
  }
}
