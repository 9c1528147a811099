import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { lazySchema } from './lazy-schema.js';
import { BerthError } from './errors.js';
import { PLUGIN_API_VERSION, type BerthPlugin } from './plugin.js';
import { shareCoreWithPlugins } from './plugin-shared-core.js';

/** Where to find one plugin package. */
export interface PluginSource {
  packageName: string;
  /** Directory to resolve the package from (node_modules lookup walks up from here). */
  from: string;
  /** Options from the config entry that named it. */
  options?: Record<string, unknown>;
}

/** A plugin module that loaded and passed validation. */
export interface LoadedPluginModule {
  plugin: BerthPlugin;
  packageName: string;
  version: string | undefined;
  options: Record<string, unknown> | undefined;
}

/** A plugin that could not be loaded, and why (reported, never fatal). */
export interface PluginFailure {
  packageName: string;
  error: string;
}

const zBerthField = lazySchema(() => z.union([z.string().min(1), z.object({ entry: z.string().min(1) })]));
const zManifest = lazySchema(() => z.looseObject({
  name: z.string(),
  version: z.string().optional(),
  berth: zBerthField.optional(),
  dependencies: z.record(z.string(), z.string()).optional(),
  // A directory `berth plugins` (oclif) manages lists the plugins it installed here.
  oclif: z.looseObject({ plugins: z.array(z.union([z.string(), z.looseObject({ name: z.string() })])).optional() }).optional(),
}));
const zDescriptor = lazySchema(() => z.object({
  name: z.string().min(1),
  apiVersion: z.number().int(),
  register: z.custom<BerthPlugin['register']>((v) => typeof v === 'function', 'must be a function'),
  optionsSchema: z.custom<z.ZodType>((v) => v === undefined || typeof (v as z.ZodType).safeParse === 'function').optional(),
}));

async function readManifest(file: string): Promise<z.output<typeof zManifest> | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  const parsed = zManifest.safeParse(JSON.parse(text));
  return parsed.success ? parsed.data : undefined;
}

/** Find a package's directory by walking node_modules up from `from`. */
async function findPackageDir(packageName: string, from: string): Promise<string | undefined> {
  let dir = path.resolve(from);
  for (;;) {
    const candidate = path.join(dir, 'node_modules', ...packageName.split('/'));
    if (await readManifest(path.join(candidate, 'package.json'))) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/**
 * Plugin packages among the dependencies of the package.json in each directory (how oclif finds
 * its plugins): a dependency is a berth plugin when its package.json has a `"berth"` field. In a
 * directory `berth plugins` manages (its package.json has oclif's `plugins` list: the data dir),
 * only the plugins oclif lists count: one whose install oclif refused stays among npm's
 * dependencies, and was loaded and used by every command while `berth plugins` said "No plugins
 * installed" and `uninstall` could not remove it (found by an explorer).
 */
export async function discoverPlugins(dirs: readonly string[]): Promise<PluginSource[]> {
  const found: PluginSource[] = [];
  for (const dir of dirs) {
    const manifest = await readManifest(path.join(dir, 'package.json'));
    const listed = manifest?.oclif?.plugins?.map((p) => (typeof p === 'string' ? p : p.name));
    for (const name of Object.keys(manifest?.dependencies ?? {})) {
      if (listed !== undefined && !listed.includes(name)) continue;
      const pkgDir = await findPackageDir(name, dir);
      if (!pkgDir) continue;
      const dep = await readManifest(path.join(pkgDir, 'package.json'));
      if (dep?.berth !== undefined) found.push({ packageName: name, from: dir });
    }
  }
  return found;
}

/** Import one plugin package and validate its descriptor; throws PLUGIN_ERROR saying why not. */
export async function loadPluginModule(source: PluginSource): Promise<LoadedPluginModule> {
  const fail = (why: string, cause?: unknown): BerthError =>
    new BerthError('PLUGIN_ERROR', `plugin ${source.packageName}: ${why}`, {
      cause,
      hint: 'check the package is installed (`berth plugins`) and built for this berth version',
    });
  const dir = await findPackageDir(source.packageName, source.from);
  if (!dir) throw fail(`not installed (looked in node_modules from ${source.from})`);
  const manifest = await readManifest(path.join(dir, 'package.json'));
  if (manifest?.berth === undefined) throw fail('its package.json has no "berth" field');
  const entry = typeof manifest.berth === 'string' ? manifest.berth : manifest.berth.entry;
  const entryPath = path.resolve(dir, entry);
  if (!entryPath.startsWith(dir + path.sep)) throw fail(`entry ${entry} points outside the package`);
  let mod: { default?: unknown };
  try {
    // The plugin's `import '@berth/core'` must reach this berth's core, not a copy next to it.
    shareCoreWithPlugins();
    mod = (await import(pathToFileURL(entryPath).href)) as { default?: unknown };
  } catch (error) {
    throw fail(`failed to load ${entry}: ${error instanceof Error ? error.message : String(error)}`, error);
  }
  const descriptor = zDescriptor.safeParse(mod.default);
  if (!descriptor.success) {
    throw fail(`its default export is not a berth plugin descriptor ({ name, apiVersion, register })`);
  }
  if (descriptor.data.apiVersion !== PLUGIN_API_VERSION) {
    const wanted = descriptor.data.apiVersion;
    const release = `${source.packageName}${manifest.version === undefined ? '' : `@${manifest.version}`}`;
    // The load failure is reported by its message alone (doctor, the CLI's warning), so the message
    // carries the way out too.
    const next =
      wanted > PLUGIN_API_VERSION
        ? `upgrade berth, or install a release of ${source.packageName} written for plugin API ${PLUGIN_API_VERSION}`
        : `install a release of ${source.packageName} written for plugin API ${PLUGIN_API_VERSION}, or ask its author for one`;
    throw new BerthError('PLUGIN_ERROR', `plugin ${release} was written for berth plugin API ${wanted}, this berth speaks plugin API ${PLUGIN_API_VERSION}: ${next}`, {
      hint: next,
      details: { plugin: source.packageName, apiVersion: wanted, berthApiVersion: PLUGIN_API_VERSION },
    });
  }
  return {
    plugin: mod.default as BerthPlugin,
    packageName: source.packageName,
    version: manifest.version,
    options: source.options,
  };
}

/** Load every source, collecting failures instead of throwing (one broken plugin never stops berth). */
export async function loadPluginModules(
  sources: readonly PluginSource[],
): Promise<{ loaded: LoadedPluginModule[]; failed: PluginFailure[] }> {
  const loaded: LoadedPluginModule[] = [];
  const failed: PluginFailure[] = [];
  const seen = new Set<string>();
  for (const source of sources) {
    if (seen.has(source.packageName)) continue;
    seen.add(source.packageName);
    try {
      loaded.push(await loadPluginModule(source));
    } catch (error) {
      failed.push({ packageName: source.packageName, error: error instanceof Error ? error.message : String(error) });
    }
  }
  return { loaded, failed };
}
