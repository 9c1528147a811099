import { copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { berthAt, type Run } from './test-cli.js';

// bin/run.js compiles the bundle with V8's code cache and keeps the cache up to date (scripts/bundle.mjs,
// README "Start time"). Tried on a copy of the built package (its bin, bundle, package.json and
// manifest) inside apps/cli, so that it finds the same node_modules and the build's own cache is
// never touched while other tests run berth.

const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..');

let pkg: string;
let dataDir: string;
let cache: string;

function berth(args: string[]): Promise<Run> {
  return berthAt(join(pkg, 'bin', 'run.js'), dataDir, args);
}

// The cache file's layout (bin/run.js): MAGIC (16 bytes) | sha256(bundle) | sha256(rest) | rest,
// rest = u32le n | n bytes of command ids, one per line | V8's data.
const AT_COUNT = 16 + 32 + 32;

/** The commands the cache says it holds. */
async function indexed(): Promise<string[]> {
  const file = await readFile(cache);
  const n = file.readUInt32LE(AT_COUNT);
  return file.subarray(AT_COUNT + 4, AT_COUNT + 4 + n).toString('utf8').split('\n').filter(Boolean);
}

beforeAll(async () => {
  pkg = await mkdtemp(join(CLI, '.code-cache-test-'));
  dataDir = join(pkg, 'data');
  await mkdir(join(pkg, 'bin'), { recursive: true });
  await mkdir(join(pkg, 'dist', 'bundle'), { recursive: true });
  await mkdir(dataDir);
  for (const file of ['package.json', 'oclif.manifest.json', join('bin', 'run.js'), join('dist', 'bundle', 'berth.cjs')]) await copyFile(join(CLI, file), join(pkg, file));
  cache = join(pkg, 'dist', 'bundle', 'berth.cjs.cache');
});

afterAll(async () => {
  await rm(pkg, { recursive: true, force: true });
});

describe('the code cache of the bundled CLI', () => {
  it('is written by the first start without one, and grows with each command that succeeds', async () => {
    const version = await berth(['--version']);
    expect(version.exitCode, version.stderr).toBe(0);
    expect(version.stdout).toMatch(/^@berth\/cli\//);
    expect((await stat(cache)).size).toBeGreaterThan(10_000);
    expect(await indexed()).toEqual(['-']);

    const list = await berth(['volume', 'list', '--json']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([]);
    expect(await indexed()).toEqual(['-', 'volume:list']);
  });

  it('is used as it is by a command it already holds (not written again)', async () => {
    const before = await stat(cache);
    const list = await berth(['volume', 'list']);
    expect(list.exitCode, list.stderr).toBe(0);
    const after = await stat(cache);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    expect(after.ino).toBe(before.ino);
  });

  it("leaves the bundle's import() working in functions compiled from the cache (pg for a PostgreSQL store)", async () => {
    // Node 20.20 drops a vm.Script's dynamic-import callback from functions deserialised from its
    // code cache; bin/run.js gives the bundle one of its own (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING
    // before). Port 1 refuses: pg was imported and tried to connect.
    const list = await berth(['volume', 'list', '--store', 'postgres://berth@127.0.0.1:1/berth']);
    expect(list.stderr).toContain('cannot reach the berth database');
    expect(list.stderr).not.toContain('dynamic import');
    expect(list.exitCode).toBe(19);
  });

  it('is not written by a command that fails (its code would be a partial path)', async () => {
    const before = await stat(cache);
    const show = await berth(['volume', 'show', 'nope']);
    expect(show.exitCode).not.toBe(0);
    expect(show.stderr).toContain('nope');
    expect((await stat(cache)).ino).toBe(before.ino);
    expect(await indexed()).toEqual(['-', 'volume:list']);
  });

  it('damaged (a flipped byte in V8\'s data, which V8 does not check: it crashed the process) is not used: the command works and the cache is written again', async () => {
    const file = await readFile(cache);
    const damaged = Buffer.from(file);
    for (let i = file.length - 4096; i < file.length - 4032; i++) damaged[i] = (damaged[i] ?? 0) ^ 0xff;
    await writeFile(cache, damaged);
    const list = await berth(['volume', 'list', '--json']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([]);
    expect(list.stderr).toBe('');
    const rewritten = await readFile(cache);
    expect(rewritten.equals(damaged)).toBe(false);
    // A cache not used starts the list again: only what this process compiled is in the new one.
    expect(await indexed()).toEqual(['volume:list']);
  });

  it('of another bundle of the same length is not used (V8 would have run the old code)', async () => {
    const bundle = join(pkg, 'dist', 'bundle', 'berth.cjs');
    const text = await readFile(bundle, 'utf8');
    const before = 'No volumes. Create one with';
    const after = 'NO VOLUMES! Create one with';
    expect(text).toContain(before);
    await writeFile(bundle, text.replace(before, after));
    const list = await berth(['volume', 'list']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(list.stdout).toContain(after);
    // Written again for the new bundle, and used by the next start.
    const written = await stat(cache);
    const again = await berth(['volume', 'list']);
    expect(again.stdout).toContain(after);
    expect((await stat(cache)).ino).toBe(written.ino);
  });

  it('rejected as garbage costs only the compile: the command works and the cache is written again', async () => {
    await writeFile(cache, Buffer.alloc(4096, 7));
    const list = await berth(['volume', 'list', '--json']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([]);
    expect(list.stderr).toBe('');
    expect((await readFile(cache)).subarray(0, 16).toString()).toBe('berth-v8-cache1\n');
    expect(await indexed()).toEqual(['volume:list']);
  });
});
