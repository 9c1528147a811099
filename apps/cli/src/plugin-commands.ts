import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { stripVTControlCharacters } from 'node:util';
import { BerthError } from '@berth/core/errors';

/**
 * What berth changes on an instance of one of oclif plugin-plugins' commands (`berth plugins`,
 * `plugins inspect`, `plugins install`, ...): the members of oclif's `Command` it replaces.
 */
export interface PluginsCommand {
  argv: string[];
  jsonEnabled(): boolean;
  catch(error: Error): Promise<unknown>;
  log(message?: string, ...args: unknown[]): void;
  toSuccessJson(result: unknown): unknown;
}

/** Whether `id` is one of plugin-plugins' commands (`plugins new` is berth's own, which reports as berth does). */
export function isPluginsCommand(id: string): boolean {
  return (id === 'plugins' || id.startsWith('plugins:')) && id !== 'plugins:new';
}

/** plugin-plugins' "X not installed" / "X is not installed" as berth's NOT_FOUND; any other error as it is. */
export function pluginsCommandError(error: unknown): unknown {
  const match = error instanceof Error ? /^(\S+) (?:is )?not installed$/.exec(error.message) : null;
  if (match === null) return error;
  return new BerthError('NOT_FOUND', `plugin ${match[1]} is not installed`, { hint: '`berth plugins` lists the installed plugins', cause: error });
}

/** One plugin in `berth plugins --json`. */
export interface ListedPlugin {
  name: string;
  version: string;
  /** `user` (installed), `link`, `jit`, or `core`/`dev` (with `--core`). */
  type: string;
  /** Where it is installed (none for a `jit` plugin, which is not). */
  root?: string;
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

/**
 * `berth plugins link PATH`: the directory of a plugin package. A path that does not exist, or has
 * no package.json, is VALIDATION naming it: plugin-plugins would print oclif's config object
 * ("could not find package.json with { isRoot: true, … }"), or look for a package.json in the
 * directories above and link whatever package it finds there (the data dir's own, for a directory in it).
 */
export function checkLinkPath(argv: readonly string[], cwd: string = process.cwd()): string {
  const end = argv.includes('--') ? argv.indexOf('--') : argv.length;
  const path = resolve(cwd, argv.slice(0, end).find((arg) => !arg.startsWith('-')) ?? '.');
  const hint = 'give the directory of a plugin package to link (the one with its package.json)';
  if (!existsSync(path)) throw new BerthError('VALIDATION', `no such file or directory: ${path}`, { hint });
  if (!existsSync(join(path, 'package.json'))) throw new BerthError('VALIDATION', `not a plugin package: no package.json in ${path}`, { hint });
  return path;
}

/**
 * Makes a plugin-plugins command report as berth's commands do: with `--json` a failure is rethrown
 * to the bin, which prints berth's `{"error": {code, message, hint}}` with berth's exit code (oclif
 * would print its raw error object, config and all, with exit 1); "not installed" is `NOT_FOUND`
 * (exit 3); `berth plugins --json` lists what `berth plugins` shows; and `inspect` prints no
 * `failed` line of its own before the error.
 */
export function reportAsBerth(command: PluginsCommand, id: string): void {
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
}
