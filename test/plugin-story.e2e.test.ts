// The plugin story as a third-party author lives it: the README's "Writing a transport plugin" is
// what `berth plugins new` writes, it builds and passes the conformance suite, `npm pack` +
// `berth plugins install` make it usable by an attach (its `import '@berth/core'` reaching the
// running berth's core), a plugin for another plugin API is refused with what to do, and berth's own
// packages, packed and installed together into a prefix, give a `berth` that runs the same plugin.
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Attachment, DoctorEntry, OperationOutcome, PluginReport, Volume } from '@berth/core';
import { BERTH_BIN, makeSandbox, REPO_ROOT, type BerthSandbox } from './support/berth-cli.js';
import { detachLoopDevicesUnder, loopDevicesBacking, removeBerthLinks } from './support/loop-devices.js';
import { sweepOrphanedSandboxes } from './support/orphans.js';

const isRoot = process.getuid?.() === 0;
const PLUGIN = 'berth-transport-4k';
const TRANSPORT = 'loop-4k';
const HOOK_TIMEOUT_MS = 120_000;
// Generous: `berth plugins install` runs npm, and this machine is shared and often loaded.
const TEST_TIMEOUT_MS = 420_000;
// Packing and installing every berth package (third-party dependencies from npm's cache) takes minutes here.
const PREFIX_TEST_TIMEOUT_MS = 15 * 60_000;
const BIN_DIR = join(REPO_ROOT, 'node_modules', '.bin');

interface DoctorReport {
  entries: DoctorEntry[];
  plugins: PluginReport;
}

/** The files of the README's plugin: each code block after a `<!-- plugin-file: PATH -->` marker. */
function readmePluginFiles(readme: string): Map<string, string> {
  const files = new Map<string, string>();
  for (const match of readme.matchAll(/<!-- plugin-file: (\S+) -->\n```\w*\n([\s\S]*?)```\n/g)) {
    files.set(match[1] ?? '', match[2] ?? '');
  }
  return files;
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile()).map((e) => relative(dir, join(e.parentPath, e.name))).sort();
}

// npm (run by `berth plugins install` and the pack script) takes zod and the rest from the machine's
// npm cache when it has them, instead of the network; each sandbox otherwise has an empty one.
async function sharedNpmCache(): Promise<string> {
  const { stdout } = await execa('npm', ['config', 'get', 'cache'], { cwd: tmpdir(), env: cleanEnv({}), extendEnv: false, timeout: 30_000 });
  return stdout.trim();
}

/** The environment minus npm's own variables (a test started by `npm test` inherits npm_config_*). */
function cleanEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('npm_') && !key.startsWith('BERTH_')) env[key] = value;
  }
  return { ...env, ...extra };
}

// A run killed before its afterAll (a CI timeout) leaves sandboxes behind: clean them first.
beforeAll(async () => {
  if (isRoot) await sweepOrphanedSandboxes();
}, HOOK_TIMEOUT_MS);

describe.skipIf(!isRoot)('a transport plugin written from the README', { timeout: TEST_TIMEOUT_MS }, () => {
  // Inside the checkout (gitignored tmp/), so that the plugin resolves its dev dependencies
  // (@berth/testkit, typescript, vitest) from the workspace's node_modules, as after `npm install`.
  let work = '';
  let pluginDir = '';
  let tarball = '';
  let npmCache = '';
  const sandboxes: BerthSandbox[] = [];
  const volumeIds = new Set<string>();

  beforeAll(async () => {
    await mkdir(join(REPO_ROOT, 'tmp'), { recursive: true });
    work = await mkdtemp(join(REPO_ROOT, 'tmp', 'plugin-story-'));
    pluginDir = join(work, PLUGIN);
    npmCache = await sharedNpmCache();
    const created = await execa(process.execPath, [BERTH_BIN, 'plugins', 'new', PLUGIN, '--transport', TRANSPORT, '--dir', pluginDir], {
      cwd: work,
      env: cleanEnv({ NO_COLOR: '1', BERTH_DATA_DIR: join(work, 'unused-data') }),
      extendEnv: false,
      reject: false,
      timeout: 60_000,
    });
    expect(created.exitCode, created.stderr).toBe(0);
    expect(created.stdout).toContain(`Created ${PLUGIN} (transport ${TRANSPORT})`);
  }, HOOK_TIMEOUT_MS);

  afterEach(async () => {
    for (const sandbox of sandboxes.splice(0)) await sandbox.remove();
    await removeBerthLinks(volumeIds);
    volumeIds.clear();
  }, HOOK_TIMEOUT_MS);

  afterAll(async () => {
    if (work !== '') {
      await detachLoopDevicesUnder(work);
      await rm(work, { recursive: true, force: true });
    }
  }, HOOK_TIMEOUT_MS);

  async function sandbox(bin?: string): Promise<BerthSandbox> {
    const made = await makeSandbox(bin === undefined ? {} : { bin });
    sandboxes.push(made);
    return made;
  }

  /** `berth plugins install` of the packed README plugin, then its options in the config file. */
  async function installPlugin(s: BerthSandbox): Promise<void> {
    const install = await s.run(['plugins', 'install', tarball], { npm_config_cache: npmCache, npm_config_prefer_offline: 'true' });
    expect(install.exitCode, `${install.stdout}\n${install.stderr}`).toBe(0);
    await mkdir(s.dataDir, { recursive: true });
    await writeFile(join(s.dataDir, 'config.json'), JSON.stringify({ pluginOptions: { [PLUGIN]: { directory: join(s.dataDir, 'volumes') } } }));
  }

  /** Attach a volume under the plugin's directory: the plugin's transport connects it, with 4 KiB sectors. */
  async function attachThroughPlugin(s: BerthSandbox): Promise<void> {
    const report = await s.json<DoctorReport>(['doctor']);
    expect(report.plugins.failed).toEqual([]);
    expect(report.plugins.loaded.find((p) => p.packageName === PLUGIN)?.transports).toEqual([TRANSPORT]);
    expect(report.entries.find((e) => e.kind === 'transport' && e.name === TRANSPORT)?.result.ok).toBe(true);

    const volume = await s.json<Volume>(['volume', 'create', '--size', '16MiB', '--name', 'sectors']);
    volumeIds.add(volume.id);
    const file = volume.providerLocation ?? '';
    const attached = await s.json<OperationOutcome>(['attach', 'sectors']);
    const attachment = attached.attachment as Attachment;
    expect(attachment.transport).toBe(TRANSPORT);
    const device = attachment.device?.path ?? '';
    expect(loopDevicesBacking(file)).toEqual([device]);
    const sectorSize = await readFile(`/sys/block/${basename(device)}/queue/logical_block_size`, 'utf8');
    expect(sectorSize.trim()).toBe('4096');
    expect(existsSync(`/dev/berth/${volume.id}`)).toBe(true);

    const detached = await s.json<OperationOutcome>(['detach', 'sectors']);
    expect(detached.volume.status).toBe('available');
    expect(loopDevicesBacking(file)).toEqual([]);
    expect(existsSync(`/dev/berth/${volume.id}`)).toBe(false);
    await s.json(['volume', 'delete', 'sectors', '--yes']);
    expect(existsSync(file)).toBe(false);
  }

  it('the README shows exactly the files `berth plugins new` writes', async () => {
    const shown = readmePluginFiles(await readFile(join(REPO_ROOT, 'README.md'), 'utf8'));
    const written = await filesUnder(pluginDir);
    // Every file but the plugin's own README is in the README, to the byte.
    expect([...shown.keys()].sort()).toEqual(written.filter((f) => f !== 'README.md'));
    for (const [file, text] of shown) expect(text, file).toBe(await readFile(join(pluginDir, file), 'utf8'));
  });

  it('builds, and passes the transport conformance suite as written', async () => {
    const build = await execa(join(BIN_DIR, 'tsc'), ['-p', 'tsconfig.json'], { cwd: pluginDir, reject: false, timeout: 120_000 });
    expect(build.exitCode, `${build.stdout}\n${build.stderr}`).toBe(0);
    expect(existsSync(join(pluginDir, 'dist', 'index.js'))).toBe(true);
    const conformance = await execa(join(BIN_DIR, 'vitest'), ['run'], {
      cwd: pluginDir,
      env: { ...cleanEnv({}), NO_COLOR: '1' },
      extendEnv: false,
      reject: false,
      timeout: 150_000,
    });
    expect(conformance.exitCode, `${conformance.stdout}\n${conformance.stderr}`).toBe(0);
    expect(conformance.stdout).toMatch(/src\/index\.test\.ts \(1\d tests\)/);
    expect(conformance.stdout).toMatch(/Tests\s+(\d+) passed \(\1\)/);
  });

  it('packed and installed with `berth plugins install` into a fresh data dir, it connects an attach', async () => {
    const packed = await execa('npm', ['pack', '--json', '--pack-destination', work], {
      cwd: pluginDir,
      env: cleanEnv({ npm_config_cache: npmCache }),
      extendEnv: false,
      timeout: 120_000,
    });
    tarball = join(work, (JSON.parse(packed.stdout) as Array<{ filename: string }>)[0]?.filename ?? 'missing.tgz');
    expect(existsSync(tarball)).toBe(true);

    const s = await sandbox();
    await installPlugin(s);
    // Nothing of berth is installed beside the plugin: its `import '@berth/core'` reaches the running berth's.
    expect(existsSync(join(s.dataDir, 'node_modules', '@berth'))).toBe(false);
    await attachThroughPlugin(s);
  });

  it("the installed plugin's BerthError is the running berth's class", async () => {
    expect(tarball).not.toBe('');
    const s = await sandbox();
    await installPlugin(s);
    // Loaded by core's loader from the data dir; its BerthError must be `instanceof` this core's.
    const probe = `
      import { BerthError, discoverPlugins, loadPluginModules, silentLogger } from '@berth/core';
      import { createHostServices } from '@berth/host';
      const { loaded, failed } = await loadPluginModules(await discoverPlugins([process.argv[1]]));
      if (failed.length > 0) throw new Error(JSON.stringify(failed));
      let transport;
      loaded[0].plugin.register({
        transport: (name, factory) => { transport = factory({ host: createHostServices(), dataDir: process.argv[1], options: { directory: '/', sectorSize: 4096, timeoutMs: 5000 }, logger: silentLogger }); },
        backend() {}, consumer() {},
      });
      const error = await transport.connect({ driver_volume_type: 'file', data: {} }, { signal: AbortSignal.timeout(5000) }).catch((e) => e);
      console.log(JSON.stringify({ sameClass: error instanceof BerthError, code: error.code }));
    `;
    const result = await execa(process.execPath, ['--input-type=module', '-e', probe, s.dataDir], { cwd: join(REPO_ROOT, 'test'), timeout: 60_000 });
    expect(JSON.parse(result.stdout)).toEqual({ sameClass: true, code: 'VALIDATION' });
  });

  it('a plugin written for another plugin API is refused, saying what to do', async () => {
    // The built plugin, as if built against a future berth: apiVersion 2.
    const root = join(work, 'future-plugins');
    const future = join(root, 'node_modules', 'berth-transport-future');
    await cp(pluginDir, future, { recursive: true, filter: (src) => !src.includes(`${PLUGIN}/node_modules`) });
    const manifest = JSON.parse(await readFile(join(future, 'package.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(join(future, 'package.json'), JSON.stringify({ ...manifest, name: 'berth-transport-future', version: '2.0.0' }));
    const entry = join(future, 'dist', 'index.js');
    await writeFile(entry, (await readFile(entry, 'utf8')).replace('apiVersion: PLUGIN_API_VERSION', 'apiVersion: 2'));
    await writeFile(join(root, 'package.json'), JSON.stringify({ name: 'future-plugins', private: true, dependencies: { 'berth-transport-future': '2.0.0' } }));

    const s = await makeSandbox({ pluginDirs: [root] });
    sandboxes.push(s);
    const report = await s.json<DoctorReport>(['doctor']);
    const failure = report.plugins.failed.find((f) => f.packageName === 'berth-transport-future');
    expect(failure?.error).toBe(
      'plugin berth-transport-future@2.0.0 was written for berth plugin API 2, this berth speaks plugin API 1: upgrade berth, or install a release of berth-transport-future written for plugin API 1',
    );
    const list = await s.run(['volume', 'list']);
    expect(list.exitCode).toBe(0);
    expect(list.stderr.split('\n').filter((line) => line.includes('berth-transport-future'))).toEqual([
      `Warning: plugin berth-transport-future could not be loaded: ${failure?.error ?? ''} (see \`berth doctor\`)`,
    ]);
  });

  it(
    'every berth package packed and installed into a prefix gives a `berth` that installs and runs the plugin',
    async () => {
      expect(tarball).not.toBe('');
      const prefix = await mkdtemp(join(tmpdir(), 'berth-prefix-'));
      try {
        const install = await execa(process.execPath, [join(REPO_ROOT, 'scripts', 'berth-packages.mjs'), 'install', '--prefix', prefix, '--reuse-native'], {
          cwd: REPO_ROOT,
          env: cleanEnv({ npm_config_cache: npmCache, npm_config_prefer_offline: 'true' }),
          extendEnv: false,
          reject: false,
          timeout: PREFIX_TEST_TIMEOUT_MS - 120_000,
        });
        expect(install.exitCode, `${install.stdout}\n${install.stderr}`).toBe(0);
        const berth = join(prefix, 'bin', 'berth');
        expect(install.stdout).toContain(`installed: ${berth}`);
        // Nothing of the checkout: every @berth package is the prefix's own.
        expect((await readdir(join(prefix, 'lib', 'node_modules', '@berth'))).sort()).toEqual(expect.arrayContaining(['cli', 'core', 'runtime', 'store']));

        // fastify's light-my-request is the pinned 6.6.0 (cookie 1, Node 20), not 6.8 (cookie 2, Node 22).
        const cookies = await execa('find', [join(prefix, 'lib', 'node_modules'), '-path', '*/node_modules/cookie/package.json'], { timeout: 60_000 });
        const versions = await Promise.all(cookies.stdout.split('\n').filter(Boolean).map(async (file) => (JSON.parse(await readFile(file, 'utf8')) as { version: string }).version));
        expect(versions.length).toBeGreaterThan(0);
        expect(versions.filter((v) => !v.startsWith('1.'))).toEqual([]);

        const s = await sandbox(berth);
        const version = await s.run(['--version']);
        expect(version.exitCode).toBe(0);
        expect(version.stdout).toMatch(/^@berth\/cli\/0\.1\.0 /);
        await installPlugin(s);
        await attachThroughPlugin(s);
      } finally {
        await rm(prefix, { recursive: true, force: true });
      }
    },
    PREFIX_TEST_TIMEOUT_MS,
  );
});
