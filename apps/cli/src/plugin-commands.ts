import { existsSync } from 'node:fs';
import { readFile, realpath } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { stripVTControlCharacters } from 'node:util';
import { BerthError } from '@berth/core/errors';
import { z } from '@berth/core/zod';

/**
 * What berth changes on an instance of one of oclif plugin-plugins' commands (`berth plugins`,
 * `plugins inspect`, `plugins install`, ...): the members of oclif's `Command` it replaces or reads.
 */
export interface PluginsCommand {
  argv: string[];
  config: { dataDir: string; plugins: Map<string, unknown> };
  jsonEnabled(): boolean;
  catch(error: Error): Promise<unknown>;
  finally(error: Error | undefined): Promise<unknown>;
  log(message?: string, ...args: unknown[]): void;
  logJson(json: unknown): void;
  toSuccessJson(result: unknown): unknown;
}

/** Whether `id` is one of plugin-plugins' commands (`plugins new` is berth's own, which reports as berth does). */
export function isPluginsCommand(id: string): boolean {
  return (id === 'plugins' || id.startsWith('plugins:')) && id !== 'plugins:new';
}

/** The plugin-plugins commands that change what is installed, by id and alias, and what their `--json` reports. */
const CHANGING_COMMANDS: Readonly<Record<string, 'install' | 'uninstall' | 'update' | 'link' | 'reset'>> = {
  'plugins:install': 'install',
  'plugins:add': 'install',
  'plugins:uninstall': 'uninstall',
  'plugins:remove': 'uninstall',
  'plugins:unlink': 'uninstall',
  'plugins:update': 'update',
  'plugins:link': 'link',
  'plugins:reset': 'reset',
};

/** The plugin-plugins commands that declare no `--json` of their own: berth takes it off their argv and answers it. */
const JSON_BY_BERTH = new Set(['plugins:uninstall', 'plugins:remove', 'plugins:unlink', 'plugins:update', 'plugins:link', 'plugins:reset']);

/** plugin-plugins' "X not installed" / "X is not installed" as berth's NOT_FOUND; any other error as it is. */
export function pluginsCommandError(error: unknown): unknown {
  const match = error instanceof Error ? /^(\S+) (?:is )?not installed$/.exec(error.message) : null;
  if (match === null) return error;
  return new BerthError('NOT_FOUND', `plugin ${match[1]} is not installed`, { hint: '`berth plugins` lists the installed plugins', cause: error });
}

/** One plugin in `berth plugins --json` (and in what `install`, `uninstall`, `link` and `reset` report). */
export interface ListedPlugin {
  name: string;
  version: string;
  /** `user` (installed), `link`, `jit`, or `core`/`dev` (with `--core`). */
  type: string;
  /** Where it is installed (none for a `jit` plugin, which is not). */
  root?: string;
}

/** A plugin `berth plugins update --json` reports: as listed, and the version it had before. */
export interface UpdatedPlugin extends ListedPlugin {
  previousVersion?: string;
}

/**
 * `berth plugins --json`: the plugins `berth plugins` lists (the core ones only with `--core`), as
 * `{name, version, type, root}` — not oclif's whole plugin objects (every command's flags: ~260 KB).
 */
export function listedPlugins(result: unknown, core: boolean): ListedPlugin[] {
  if (!Array.isArray(result)) return [];
  return (result as Array<Record<string, unknown>>)
    .filter((p) => core || (p['type'] !== 'core' && p['type'] !== 'dev'))
    .map((p) => ({
      name: String(p['name']),
      version: String(p['version']),
      type: String(p['type']),
      ...(typeof p['root'] === 'string' ? { root: p['root'] } : {}),
    }));
}

/** The data dir's package.json, where plugin-plugins records the installed (`user`) and linked plugins. */
const DataDirPackage = z.looseObject({
  oclif: z
    .looseObject({
      plugins: z.array(z.union([z.string(), z.looseObject({ name: z.string(), type: z.string(), root: z.string().optional() })])).optional(),
    })
    .optional(),
});
const PluginPackage = z.looseObject({ version: z.string().optional() });

async function readJson(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}

/**
 * The plugins installed (`user`) and linked (`link`) in `dataDir`, as `berth plugins --json` lists
 * them, read from disk: what a plugin-plugins command changed is the difference before and after.
 */
export async function installedPlugins(dataDir: string): Promise<ListedPlugin[]> {
  const parsed = DataDirPackage.safeParse(await readJson(join(dataDir, 'package.json')));
  const entries = parsed.success ? (parsed.data.oclif?.plugins ?? []) : [];
  return Promise.all(
    entries.map(async (entry) => {
      const { name, type, root: linked } = typeof entry === 'string' ? { name: entry, type: 'user', root: undefined } : entry;
      const path = type === 'link' && linked !== undefined ? linked : join(dataDir, 'node_modules', name);
      const root = await realpath(path).catch(() => path);
      const pkg = PluginPackage.safeParse(await readJson(join(root, 'package.json')));
      return { name, version: (pkg.success ? pkg.data.version : undefined) ?? 'unknown', type, root };
    }),
  );
}

const same = (a: ListedPlugin, b: ListedPlugin): boolean => a.name === b.name && a.version === b.version && a.type === b.type && a.root === b.root;

/**
 * What a plugin-plugins command that changes what is installed reports under `--json`, from the
 * installed plugins before and after it and the plugins oclif loaded anew (`install` loads each
 * plugin it installs, even one installed already).
 */
export function changedPlugins(
  kind: 'install' | 'uninstall' | 'update' | 'link' | 'reset',
  { before, after, loaded, argv, linkPath }: { before: ListedPlugin[]; after: ListedPlugin[]; loaded: readonly string[]; argv: readonly string[]; linkPath?: string },
): unknown {
  const isIn = (list: ListedPlugin[]) => (p: ListedPlugin) => list.some((q) => q.name === p.name);
  const changed = after.filter((p) => !before.some((q) => same(p, q)));
  switch (kind) {
    case 'install':
      return after.filter((p) => loaded.includes(p.name) || changed.includes(p));
    case 'uninstall':
      return before.filter((p) => !isIn(after)(p));
    case 'update':
      return after
        .filter((p) => p.type === 'user')
        .map((p) => {
          const previous = before.find((q) => q.name === p.name)?.version;
          return previous === undefined || previous === p.version ? p : { ...p, previousVersion: previous };
        });
    case 'link': {
      // Linked again, the plugin is unchanged: it is the link whose root is the path given.
      return after.filter((p) => p.type === 'link' && (changed.includes(p) || p.root === linkPath));
    }
    case 'reset': {
      const reinstall = argv.includes('--reinstall');
      return { removed: reinstall ? before : before.filter((p) => !isIn(after)(p)), reinstalled: reinstall ? after : [] };
    }
  }
}

/**
 * `berth plugins link PATH`: the directory of a plugin package. A path that does not exist, or has
 * no package.json, is VALIDATION naming it: plugin-plugins would print oclif's config object
 * ("could not find package.json with { isRoot: true, … }"), or look for a package.json in the
 * directories above and link whatever package it finds there (the data dir's own, for a directory in it).
 */
export function checkLinkPath(argv: readonly string[], cwd: string = process.cwd()): string {
  const path = resolve(cwd, linkArgument(argv));
  const hint = 'give the directory of a plugin package to link (the one with its package.json)';
  if (!existsSync(path)) throw new BerthError('VALIDATION', `no such file or directory: ${path}`, { hint });
  if (!existsSync(join(path, 'package.json'))) throw new BerthError('VALIDATION', `not a plugin package: no package.json in ${path}`, { hint });
  return path;
}

/** The path `plugins link` is given (its one argument, `.` when none). */
function linkArgument(argv: readonly string[]): string {
  return splitAtDashes(argv)[0].find((arg) => !arg.startsWith('-')) ?? '.';
}

/**
 * Makes a plugin-plugins command report as berth's commands do: with `--json` a failure is rethrown
 * to the bin, which prints berth's `{"error": {code, message, hint}}` with berth's exit code (oclif
 * would print its raw error object, config and all, with exit 1); "not installed" is `NOT_FOUND`
 * (exit 3); `berth plugins --json` lists what `berth plugins` shows; `install`, `uninstall`,
 * `update`, `link` and `reset` take `--json` and print what they changed; `inspect` prints no
 * `failed` line of its own before the error. Returns the argv the command parses (without the
 * `--json` berth answers for commands that declare none; `install --json` keeps npm quiet, whose
 * output plugin-plugins prints on stdout, and under `--json` whatever npm still prints — with
 * `--verbose` or `BERTH_NPM_LOG_LEVEL` — goes to stderr until the command ends).
 */
export async function reportAsBerth(command: PluginsCommand, id: string, argv: string[], cwd: string = process.cwd()): Promise<string[]> {
  const [flags, passed] = splitAtDashes(argv);
  let own = flags;
  if (JSON_BY_BERTH.has(id) && flags.includes('--json')) {
    own = flags.filter((arg) => arg !== '--json');
    command.jsonEnabled = () => true;
  }
  const json = command.jsonEnabled();

  const original = command.catch.bind(command);
  command.catch = async (error: Error) => {
    const reported = pluginsCommandError(error) as Error;
    if (command.jsonEnabled()) throw reported;
    return original(reported);
  };
  if (id === 'plugins') command.toSuccessJson = (result) => listedPlugins(result, command.argv.includes('--core'));
  if (id === 'plugins:inspect') {
    // plugin-plugins logs a red `failed` on stdout before it throws; the error says what failed.
    const log = command.log.bind(command);
    command.log = (message?: string, ...args: unknown[]) => {
      if (typeof message === 'string' && stripVTControlCharacters(message) === 'failed') return;
      log(message, ...args);
    };
  }

  const kind = CHANGING_COMMANDS[id];
  if (kind === undefined || !json) return [...own, ...passed];
  if (kind === 'install' && !own.some((arg) => ['--silent', '-s', '--verbose', '-v'].includes(arg))) own = [...own, '--silent'];
  const before = await installedPlugins(command.config.dataDir);
  const instances = new Map(command.config.plugins);
  const linkPath = kind === 'link' ? await realpath(resolve(cwd, linkArgument(own))).catch(() => undefined) : undefined;
  // npm's output, which plugin-plugins prints on stdout (`--verbose`, `BERTH_NPM_LOG_LEVEL`), goes
  // to stderr until the command ends: stdout is the JSON's alone.
  const stdoutWrite = process.stdout.write;
  process.stdout.write = process.stderr.write.bind(process.stderr) as typeof process.stdout.write;
  const finish = command.finally.bind(command);
  command.finally = async (error: Error | undefined) => {
    process.stdout.write = stdoutWrite;
    await finish(error);
    if (error !== undefined) return;
    const after = await installedPlugins(command.config.dataDir);
    const loaded = [...command.config.plugins].filter(([name, plugin]) => instances.get(name) !== plugin).map(([name]) => name);
    command.logJson(changedPlugins(kind, { before, after, loaded, argv: own, ...(linkPath === undefined ? {} : { linkPath }) }));
  };
  return [...own, ...passed];
}

/** `argv` before `--` (a command's own words and flags) and from `--` on. */
function splitAtDashes(argv: readonly string[]): [string[], string[]] {
  const end = argv.includes('--') ? argv.indexOf('--') : argv.length;
  return [argv.slice(0, end), argv.slice(end)];
}
