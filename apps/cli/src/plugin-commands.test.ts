// plugin-plugins' commands reporting as berth's: the helpers, then the built `berth` (bin/run.js;
// needs `npx turbo run build`) with an empty data dir — nothing is installed or fetched.
import { mkdir, mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, EXIT_CODES } from '@berth/core/errors';
import {
  changedPlugins,
  checkLinkPath,
  installedPlugins,
  isPluginsCommand,
  listedPlugins,
  pluginsCommandError,
  reportAsBerth,
  type ListedPlugin,
  type PluginsCommand,
} from './plugin-commands.js';
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

  describe('on a command', () => {
    let dataDir: string;
    beforeEach(async () => {
      dataDir = await mkdtemp(join(tmpdir(), 'berth-cli-plugins-unit-'));
    });
    afterEach(async () => {
      await rm(dataDir, { recursive: true, force: true });
    });

    const handled: Error[] = [];
    const logged: unknown[] = [];
    const command = (json: boolean): PluginsCommand => ({
      argv: [],
      config: { dataDir, plugins: new Map() },
      jsonEnabled: () => json,
      catch: (error) => {
        handled.push(error);
        return Promise.resolve();
      },
      finally: () => Promise.resolve(),
      log: (message) => logged.push(message),
      logJson: (json) => logged.push(json),
      toSuccessJson: (result) => result,
    });
    beforeEach(() => {
      handled.length = 0;
      logged.length = 0;
    });

    it('rethrow a failure under --json (the bin prints it), and let oclif handle it otherwise', async () => {
      const withJson = command(true);
      await reportAsBerth(withJson, 'plugins:inspect', []);
      await expect(withJson.catch(new Error('nope not installed'))).rejects.toMatchObject({ code: 'NOT_FOUND' });
      expect(handled).toEqual([]);

      const human = command(false);
      await reportAsBerth(human, 'plugins:inspect', []);
      await human.catch(new Error('nope not installed'));
      expect(handled).toEqual([expect.objectContaining({ code: 'NOT_FOUND' })]);
      expect(human.toSuccessJson([{ name: 'x', version: '1', type: 'core' }])).toEqual([{ name: 'x', version: '1', type: 'core' }]);
    });

    it('take --json off the argv of the commands that declare none, and answer it', async () => {
      const uninstall = command(false);
      expect(await reportAsBerth(uninstall, 'plugins:uninstall', ['x', '--json', '--', '--json'])).toEqual(['x', '--', '--json']);
      expect(uninstall.jsonEnabled()).toBe(true);
      await uninstall.finally(undefined);
      expect(logged).toEqual([[]]);

      const failed = command(false);
      await reportAsBerth(failed, 'plugins:update', ['--json']);
      await failed.finally(new Error('npm failed'));
      expect(logged).toEqual([[]]);

      const human = command(false);
      expect(await reportAsBerth(human, 'plugins:link', ['dir', '--', '--json'])).toEqual(['dir', '--', '--json']);
      expect(human.jsonEnabled()).toBe(false);
    });

    it('keep npm quiet under install --json (plugin-plugins prints its output on stdout)', async () => {
      const quiet = command(true);
      expect(await reportAsBerth(quiet, 'plugins:install', ['./x', '--json'])).toEqual(['./x', '--json', '--silent']);
      await quiet.finally(new Error('not run'));
      const verbose = command(true);
      expect(await reportAsBerth(verbose, 'plugins:install', ['./x', '--json', '-v'])).toEqual(['./x', '--json', '-v']);
      await verbose.finally(new Error('not run'));
      expect(await reportAsBerth(command(false), 'plugins:install', ['./x'])).toEqual(['./x']);
    });

    it('send what is written to stdout to stderr while a changing command runs under --json, and stop when it ends', async () => {
      const write = process.stdout.write;
      const update = command(true);
      await reportAsBerth(update, 'plugins:update', ['--json']);
      try {
        expect(process.stdout.write).not.toBe(write);
      } finally {
        await update.finally(undefined);
      }
      expect(process.stdout.write).toBe(write);
      const human = command(false);
      await reportAsBerth(human, 'plugins:update', []);
      expect(process.stdout.write).toBe(write);
    });

    it('drop inspect\'s own `failed` line and nothing else', async () => {
      const inspect = command(false);
      await reportAsBerth(inspect, 'plugins:inspect', []);
      inspect.log('\u001B[1m\u001B[31mfailed\u001B[39m\u001B[22m');
      inspect.log('└─ x\n   └─ failed');
      expect(logged).toEqual(['└─ x\n   └─ failed']);
    });

    it('read the installed and linked plugins from the data dir', async () => {
      expect(await installedPlugins(dataDir)).toEqual([]);
      const linked = join(dataDir, 'src', 'linked');
      await mkdir(join(dataDir, 'node_modules', 'berth-plugin-a'), { recursive: true });
      await mkdir(linked, { recursive: true });
      await writeFile(join(dataDir, 'node_modules', 'berth-plugin-a', 'package.json'), JSON.stringify({ name: 'berth-plugin-a', version: '1.0.0' }));
      await writeFile(join(linked, 'package.json'), JSON.stringify({ name: 'berth-plugin-b', version: '2.0.0' }));
      await writeFile(
        join(dataDir, 'package.json'),
        JSON.stringify({ oclif: { plugins: [{ name: 'berth-plugin-a', type: 'user', url: 'file:/x' }, { name: 'berth-plugin-b', type: 'link', root: linked }, 'berth-plugin-gone'] } }),
      );
      const root = await realpath(dataDir);
      expect(await installedPlugins(dataDir)).toEqual([
        { name: 'berth-plugin-a', version: '1.0.0', type: 'user', root: join(root, 'node_modules', 'berth-plugin-a') },
        { name: 'berth-plugin-b', version: '2.0.0', type: 'link', root: join(root, 'src', 'linked') },
        { name: 'berth-plugin-gone', version: 'unknown', type: 'user', root: join(dataDir, 'node_modules', 'berth-plugin-gone') },
      ]);
      await writeFile(join(dataDir, 'package.json'), JSON.stringify({ oclif: { plugins: 'not a list' } }));
      expect(await installedPlugins(dataDir)).toEqual([]);
    });
  });

  it('report what install, uninstall, update, link and reset changed', () => {
    const a: ListedPlugin = { name: 'a', version: '1.0.0', type: 'user', root: '/d/node_modules/a' };
    const a2: ListedPlugin = { ...a, version: '1.1.0' };
    const b: ListedPlugin = { name: 'b', version: '2.0.0', type: 'user', root: '/d/node_modules/b' };
    const l: ListedPlugin = { name: 'l', version: '0.1.0', type: 'link', root: '/src/l' };
    const none = { loaded: [], argv: [] };
    expect(changedPlugins('install', { before: [a], after: [a, b], ...none })).toEqual([b]);
    expect(changedPlugins('install', { before: [a, b], after: [a, b], loaded: ['a'], argv: [] })).toEqual([a]);
    expect(changedPlugins('uninstall', { before: [a, b], after: [b], ...none })).toEqual([a]);
    expect(changedPlugins('update', { before: [a, b, l], after: [a2, b, l], ...none })).toEqual([{ ...a2, previousVersion: '1.0.0' }, b]);
    expect(changedPlugins('link', { before: [a], after: [a, l], ...none })).toEqual([l]);
    expect(changedPlugins('link', { before: [a, l], after: [a, l], loaded: [], argv: [], linkPath: '/src/l' })).toEqual([l]);
    expect(changedPlugins('reset', { before: [a, l], after: [], ...none })).toEqual({ removed: [a, l], reinstalled: [] });
    expect(changedPlugins('reset', { before: [a, l], after: [a2, l], loaded: [], argv: ['--reinstall'] })).toEqual({ removed: [a, l], reinstalled: [a2, l] });
  });

  it('refuse to link a path that does not exist or is no package, naming it', async () => {
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

// Install, inspect, update, uninstall, link and reset a plugin package made in a temp dir (no
// network: npm installs it from disk), each with --json, in a data dir of the test's own.
describe('berth plugins changing what is installed, on the built CLI', { timeout: TIMEOUT_MS * 3 }, () => {
  let dataDir: string;
  let pluginDir: string;

  beforeAll(async () => {
    pluginDir = await realpath(await mkdtemp(join(tmpdir(), 'berth-cli-plugin-pkg-')));
    await writeFile(join(pluginDir, 'package.json'), JSON.stringify({ name: 'berth-plugin-clitest', version: '1.2.3', type: 'module', main: './index.js', oclif: {} }));
    await writeFile(join(pluginDir, 'index.js'), 'export default {};\n');
  });

  afterAll(async () => {
    await rm(pluginDir, { recursive: true, force: true });
  });

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'berth-cli-plugins-'));
  });

  afterEach(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  const json = (run: { exitCode: number; stdout: string; stderr: string }): unknown => {
    expect(run, run.stderr).toMatchObject({ exitCode: 0 });
    return JSON.parse(run.stdout) as unknown;
  };

  it('install, inspect, update and uninstall --json print what they did', async () => {
    const plugin = { name: 'berth-plugin-clitest', version: '1.2.3', type: 'user', root: pluginDir };
    expect(json(await berth(dataDir, ['plugins', 'install', pluginDir, '--json']))).toEqual([plugin]);
    expect(json(await berth(dataDir, ['plugins', '--json']))).toEqual([plugin]);
    // Installed again: what is installed, though nothing changed.
    expect(json(await berth(dataDir, ['--json', 'plugins', 'install', pluginDir]))).toEqual([plugin]);

    const inspect = await berth(dataDir, ['plugins', 'inspect', 'berth-plugin-clitest']);
    expect(inspect.exitCode).toBe(0);
    expect(inspect.stdout).toContain('berth-plugin-clitest');
    expect(inspect.stdout).toContain('version 1.2.3');
    const missing = await berth(dataDir, ['plugins', 'inspect', 'berth-plugin-nope']);
    expect(missing.exitCode).toBe(EXIT_CODES.NOT_FOUND);
    expect(missing.stdout).toBe('');

    expect(json(await berth(dataDir, ['plugins', 'update', '--json']))).toEqual([plugin]);
    // npm's own output (--verbose) goes to stderr: stdout stays the JSON.
    const verbose = await berth(dataDir, ['plugins', 'update', '--json', '--verbose']);
    expect(json(verbose)).toEqual([plugin]);
    expect(verbose.stderr).toMatch(/npm/);
    expect(json(await berth(dataDir, ['plugins', 'uninstall', 'berth-plugin-clitest', '--json']))).toEqual([plugin]);
    expect(json(await berth(dataDir, ['plugins', '--json']))).toEqual([]);

    const again = await berth(dataDir, ['plugins', 'uninstall', 'berth-plugin-clitest', '--json']);
    expect(again.exitCode).toBe(EXIT_CODES.NOT_FOUND);
    expect(JSON.parse(again.stdout)).toMatchObject({ error: { code: 'NOT_FOUND' } });
  });

  it('install --json of a package that is no oclif plugin is berth\'s error, and installs nothing', async () => {
    const bad = join(dataDir, 'bad');
    await mkdir(bad);
    await writeFile(join(bad, 'package.json'), JSON.stringify({ name: 'berth-plugin-bad', version: '1.0.0' }));
    const run = await berth(dataDir, ['plugins', 'install', bad, '--json']);
    expect(run.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(JSON.parse(run.stdout)).toEqual({ error: { code: 'VALIDATION', message: 'plugin is invalid', hint: expect.any(String) } });
    expect(json(await berth(dataDir, ['plugins', '--json']))).toEqual([]);
  });

  it('link and reset --json print what they linked and removed', async () => {
    const linked = { name: 'berth-plugin-clitest', version: '1.2.3', type: 'link', root: pluginDir };
    expect(json(await berth(dataDir, ['plugins', 'link', pluginDir, '--no-install', '--json']))).toEqual([linked]);
    // Linked again: the same link.
    expect(json(await berth(dataDir, ['plugins', 'link', pluginDir, '--no-install', '--json']))).toEqual([linked]);
    expect(json(await berth(dataDir, ['plugins', '--json']))).toEqual([linked]);
    expect(json(await berth(dataDir, ['plugins', 'reset', '--json']))).toEqual({ removed: [linked], reinstalled: [] });
    expect(json(await berth(dataDir, ['plugins', '--json']))).toEqual([]);
  });

  it('link of a path that does not exist, or is no package, is VALIDATION naming it', async () => {
    const nowhere = join(dataDir, 'nowhere');
    const human = await berth(dataDir, ['plugins', 'link', nowhere]);
    expect(human.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(human.stderr.trim().split('\n')).toEqual([
      `Error: no such file or directory: ${nowhere}`,
      'Hint: give the directory of a plugin package to link (the one with its package.json)',
    ]);

    const empty = join(dataDir, 'empty');
    await mkdir(empty);
    const run = await berth(dataDir, ['plugins', 'link', empty, '--json']);
    expect(run.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(JSON.parse(run.stdout)).toEqual({
      error: { code: 'VALIDATION', message: `not a plugin package: no package.json in ${empty}`, hint: expect.any(String) },
    });
    expect(json(await berth(dataDir, ['plugins', '--json']))).toEqual([]);
  });
});
