import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { discoverPlugins, loadPluginModules } from './plugin-loader.js';

let dir: string;

async function pkg(name: string, manifest: Record<string, unknown>, files: Record<string, string>): Promise<void> {
  const root = path.join(dir, 'node_modules', name);
  await mkdir(root, { recursive: true });
  await writeFile(path.join(root, 'package.json'), JSON.stringify({ name, version: '1.2.3', type: 'module', ...manifest }));
  for (const [file, text] of Object.entries(files)) await writeFile(path.join(root, file), text);
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'berth-loader-'));
  await writeFile(
    path.join(dir, 'package.json'),
    JSON.stringify({ name: 'app', dependencies: { good: '1', broken: '1', 'not-a-plugin': '1', 'bad-export': '1', future: '1', missing: '1' } }),
  );
  await pkg('good', { berth: { entry: './index.js' } }, {
    'index.js': "export default { name: 'good', apiVersion: 1, register(r) { r.transport('good', () => ({})); } };",
  });
  await pkg('broken', { berth: './index.js' }, { 'index.js': "throw new Error('broken at import');" });
  await pkg('not-a-plugin', {}, { 'index.js': 'export default 1;' });
  await pkg('bad-export', { berth: './index.js' }, { 'index.js': 'export default { name: 1 };' });
  await pkg('future', { berth: './index.js' }, {
    'index.js': "export default { name: 'future', apiVersion: 99, register() {} };",
  });
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('plugin loader', () => {
  it('finds dependencies with a "berth" field, as oclif finds its plugins', async () => {
    const sources = await discoverPlugins([dir]);
    expect(sources.map((s) => s.packageName).sort()).toEqual(['bad-export', 'broken', 'future', 'good']);
  });

  it('in a directory `berth plugins` manages, counts only the plugins oclif lists (not one whose install it refused)', async () => {
    await writeFile(
      path.join(dir, 'package.json'),
      JSON.stringify({ name: 'berth', oclif: { schema: 1, plugins: [{ name: 'good', type: 'user' }, 'future'] }, dependencies: { good: '1', broken: '1', future: '1' } }),
    );
    const sources = await discoverPlugins([dir]);
    expect(sources.map((s) => s.packageName).sort()).toEqual(['future', 'good']);
  });

  it('loads good plugins and reports each broken one without throwing', async () => {
    const sources = await discoverPlugins([dir]);
    sources.push({ packageName: 'missing', from: dir });
    const { loaded, failed } = await loadPluginModules(sources);
    expect(loaded.map((l) => [l.packageName, l.version])).toEqual([['good', '1.2.3']]);
    const reasons = Object.fromEntries(failed.map((f) => [f.packageName, f.error]));
    expect(reasons.broken).toMatch(/broken at import/);
    expect(reasons['bad-export']).toMatch(/not a berth plugin descriptor/);
    expect(reasons.future).toMatch(/written for berth plugin API 99, this berth speaks plugin API 1: upgrade berth/);
    expect(reasons.missing).toMatch(/not installed/);
  });

  it('refuses an entry that points outside its package', async () => {
    await pkg('escape', { berth: '../good/index.js' }, {});
    const { failed } = await loadPluginModules([{ packageName: 'escape', from: dir }]);
    expect(failed[0]?.error).toMatch(/outside the package/);
  });
});
