// plugin-plugins' commands reporting as berth's: the helpers, then the built `berth` (bin/run.js;
// needs `npx turbo run build`) with an empty data dir — nothing is installed or fetched.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, EXIT_CODES } from '@berth/core/errors';
import { checkLinkPath, isPluginsCommand, listedPlugins, pluginsCommandError, reportAsBerth, type PluginsCommand } from './plugin-commands.js';
import { berth } from './test-cli.js';

const TIMEOUT_MS = 60_000;

describe('plugin-plugins commands', () => {
  it('are the plugins topic less berth\'s own `plugins new`', () => {
    expect(['plugins', 'plugins:inspect', 'plugins:install', 'plugins:uninstall', 'plugins:remove'].every(isPluginsCommand)).toBe(true);
    expect(isPluginsCommand('plugins:new')).toBe(false);
    expect(isPluginsCommand('volume:list')).toBe(false);
  });

  it('turn "not installed" into NOT_FOUND and leave other errors alone', () => {
    for (const message of ['nope not installed', 'nope is not installed']) {
      const error = pluginsCommandError(new Error(message));
      expect(BerthError.is(error) && { code: error.code, message: error.message, hint: error.hint }).toEqual({
        code: 'NOT_FOUND',
        message: 'plugin nope is not installed',
        hint: '`berth plugins` lists the installed plugins',
      });
    }
    const other = new Error('npm install failed');
    expect(pluginsCommandError(other)).toBe(other);
    expect(pluginsCommandError('text')).toBe('text');
  });

  it('list name, version, type and root, core plugins only when asked', () => {
    const result = [
      { name: '@berth/cli', version: '0.1.0', type: 'core', root: '/cli', commands: [{ id: 'volume:list' }] },
      { name: 'berth-plugin-fixture', version: '1.0.0', type: 'user', root: '/data/node_modules/berth-plugin-fixture', config: {} },
      { name: 'berth-plugin-later', version: '2.0.0', type: 'jit' },
    ];
    expect(listedPlugins(result, false)).toEqual([
      { name: 'berth-plugin-fixture', version: '1.0.0', type: 'user', root: '/data/node_modules/berth-plugin-fixture' },
      { name: 'berth-plugin-later', version: '2.0.0', type: 'jit' },
    ]);
    expect(listedPlugins(result, true).map((p) => p.name)).toEqual(['@berth/cli', 'berth-plugin-fixture', 'berth-plugin-later']);
    expect(listedPlugins(undefined, false)).toEqual([]);
  });

  it('rethrow a failure under --json (the bin prints it), and let oclif handle it otherwise', async () => {
    const handled: Error[] = [];
    const command = (json: boolean): PluginsCommand => ({
      argv: [],
      jsonEnabled: () => json,
      catch: (error) => {
        handled.push(error);
        return Promise.resolve();
      },
      log: () => undefined,
      toSuccessJson: (result) => result,
    });
    const withJson = command(true);
    reportAsBerth(withJson, 'plugins:inspect');
    await expect(withJson.catch(new Error('nope not installed'))).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(handled).toEqual([]);

    const human = command(false);
    reportAsBerth(human, 'plugins:inspect');
    await human.catch(new Error('nope not installed'));
    expect(handled).toEqual([expect.objectContaining({ code: 'NOT_FOUND' })]);
    expect(human.toSuccessJson([{ name: 'x', version: '1', type: 'core' }])).toEqual([{ name: 'x', version: '1', type: 'core' }]);
  });
});

it('inspect drops its own `failed` line and nothing else', () => {
  const logged: unknown[] = [];
  const inspect: PluginsCommand = {
    argv: [],
    jsonEnabled: () => false,
    catch: () => Promise.resolve(),
    log: (message) => logged.push(message),
    toSuccessJson: (result) => result,
  };
  reportAsBerth(inspect, 'plugins:inspect');
  inspect.log('\u001B[1m\u001B[31mfailed\u001B[39m\u001B[22m');
  inspect.log('└─ x\n   └─ failed');
  expect(logged).toEqual(['└─ x\n   └─ failed']);
});

it('plugins link refuses a path that does not exist or is no package, naming it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-cli-link-'));
  try {
    const error = (argv: string[]): unknown => {
      try {
        return checkLinkPath(argv, dir);
      } catch (e) {
        return BerthError.is(e) && { code: e.code, message: e.message };
      }
    };
    expect(error(['nope'])).toEqual({ code: 'VALIDATION', message: `no such file or directory: ${join(dir, 'nope')}` });
    expect(error(['--no-install'])).toEqual({ code: 'VALIDATION', message: `not a plugin package: no package.json in ${dir}` });
    await writeFile(join(dir, 'package.json'), '{}');
    expect(error(['.', '--no-install'])).toBe(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

describe('berth plugins on the built CLI', { timeout: TIMEOUT_MS }, () => {
  let dataDir: string;

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'berth-cli-plugins-'));
  });

  afterEach(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('--json lists the installed plugins (none), and the core ones with --core', async () => {
    const none = await berth(dataDir, ['plugins', '--json']);
    expect(none.exitCode).toBe(0);
    expect(JSON.parse(none.stdout)).toEqual([]);

    const core = await berth(dataDir, ['plugins', '--core', '--json']);
    expect(core.exitCode).toBe(0);
    const listed = JSON.parse(core.stdout) as Array<Record<string, unknown>>;
    expect(listed).toContainEqual({ name: '@berth/cli', version: expect.any(String), type: 'core', root: expect.any(String) });
    expect(listed.every((p) => Object.keys(p).every((key) => ['name', 'version', 'type', 'root'].includes(key)))).toBe(true);
  });

  it('a plugin that is not installed is NOT_FOUND (exit 3), in berth\'s error shape with --json', async () => {
    const json = await berth(dataDir, ['plugins', 'inspect', 'berth-plugin-nope', '--json']);
    expect(json.exitCode).toBe(EXIT_CODES.NOT_FOUND);
    expect(JSON.parse(json.stdout)).toEqual({
      error: { code: 'NOT_FOUND', message: 'plugin berth-plugin-nope is not installed', hint: '`berth plugins` lists the installed plugins' },
    });

    const human = await berth(dataDir, ['plugins', 'uninstall', 'berth-plugin-nope']);
    expect(human.exitCode).toBe(EXIT_CODES.NOT_FOUND);
    expect(human.stderr.trim().split('\n')).toEqual(['Error: plugin berth-plugin-nope is not installed', 'Hint: `berth plugins` lists the installed plugins']);
  });

  it('a usage error under --json is berth\'s {"error": …} with exit 2, not oclif\'s error object', async () => {
    const run = await berth(dataDir, ['plugins', '--bogus', '--json']);
    expect(run.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(JSON.parse(run.stdout)).toEqual({ error: { code: 'VALIDATION', message: 'unknown flag --bogus', hint: expect.any(String) } });
  });
});

describe('berth plugins link and inspect on the built CLI', { timeout: TIMEOUT_MS }, () => {
  let dataDir: string;

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'berth-cli-plugins-'));
  });

  afterEach(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('inspect of a plugin that is not installed prints no `failed` line', async () => {
    const run = await berth(dataDir, ['plugins', 'inspect', 'berth-plugin-nope']);
    expect(run.exitCode).toBe(EXIT_CODES.NOT_FOUND);
    expect(run.stdout).toBe('');
  });

  it('link of a path that does not exist, or is no package, is VALIDATION naming it', async () => {
    const hint = 'Hint: give the directory of a plugin package to link (the one with its package.json)';
    const nowhere = join(dataDir, 'nowhere');
    const missing = await berth(dataDir, ['plugins', 'link', nowhere]);
    expect(missing.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(missing.stderr.trim().split('\n')).toEqual([`Error: no such file or directory: ${nowhere}`, hint]);

    // plugin-plugins linked the data dir's own package.json for a directory in it.
    const empty = join(dataDir, 'empty');
    await mkdir(empty);
    const run = await berth(dataDir, ['plugins', 'link', empty]);
    expect(run.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(run.stderr.trim().split('\n')).toEqual([`Error: not a plugin package: no package.json in ${empty}`, hint]);
    const listed = await berth(dataDir, ['plugins', '--json']);
    expect(JSON.parse(listed.stdout)).toEqual([]);
  });
});
