import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { berth } from './test-cli.js';

// A third-party transport plugin that ignores its AbortSignal (its connect and disconnect never
// settle, with or without a timer of its own), or returns /dev/null as its block device, installed
// with `berth plugins install <dir>`: the built berth answers within its deadline and ends.

const PLUGIN = `
const mode = process.env.HANG_MODE ?? 'interval';
export default {
  name: 'hang', apiVersion: 1,
  register(r) {
    r.transport('hang', () => ({
      name: 'hang', protocols: ['file'],
      connectorProperties: async () => ({}),
      connect: async () => {
        if (mode === 'devnull') return { path: '/dev/null', type: 'block' };
        if (mode === 'bare') return new Promise(() => {});
        await new Promise(() => setInterval(() => {}, 1000));
      },
      disconnect: async () => { if (mode !== 'devnull') await new Promise(() => {}); },
      check: async () => ({ ok: true, summary: 'hang' }),
    }));
  },
};
`;

let dataDir: string;
beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'berth-cli-hostile-'));
  const plugin = join(dataDir, 'plugin-src');
  await mkdir(join(plugin, 'dist'), { recursive: true });
  await writeFile(join(plugin, 'package.json'), JSON.stringify({ name: 'berth-plugin-hang', version: '1.0.0', type: 'module', main: './dist/index.js', berth: { entry: './dist/index.js' }, oclif: {} }));
  await writeFile(join(plugin, 'dist', 'index.js'), PLUGIN);
  await writeFile(join(dataDir, 'config.json'), JSON.stringify({ operationTimeoutMs: 1_000, undoTimeoutMs: 1_000 }));
  const installed = await berth(dataDir, ['plugins', 'install', plugin, '--json']);
  expect(installed.exitCode, installed.stderr).toBe(0);
}, 120_000);
afterAll(async () => {
  await rm(dataDir, { recursive: true, force: true });
});

describe('a transport plugin that ignores its AbortSignal', () => {
  for (const mode of ['interval', 'bare']) {
    it(`is answered TIMEOUT (exit 10) by the deadline, with --json output, and berth ends (${mode === 'bare' ? 'a bare never-settling promise: no exit 13' : 'its own interval left running'})`, async () => {
      const volume = `v-${mode}`;
      expect((await berth(dataDir, ['volume', 'create', volume, '--size', '1MiB', '--json'])).exitCode).toBe(0);
      const started = Date.now();
      const attach = await berth(dataDir, ['attach', volume, '--transport', 'hang', '--json'], { HANG_MODE: mode });
      expect(attach.exitCode, attach.stderr).toBe(10);
      const error = (JSON.parse(attach.stdout) as { error: { code: string; message: string; hint: string } }).error;
      expect(error.code).toBe('TIMEOUT');
      expect(error.message).toMatch(/^transport hang \(hang\)'s connect did not return within its deadline \(it ignored the cancel\)/);
      expect(error.hint).toMatch(/must honour the AbortSignal/);
      expect(Date.now() - started).toBeLessThan(20_000);
      const list = await berth(dataDir, ['attachment', 'list', '--volume', volume, '--json']);
      expect((JSON.parse(list.stdout) as Array<{ status: string }>).map((a) => a.status)).toEqual(['error_attaching']);
    }, 40_000);
  }

  it("returning /dev/null as its block device is DRIVER_ERROR (exit 15) and the attach rolls back", async () => {
    expect((await berth(dataDir, ['volume', 'create', 'v-null', '--size', '1MiB', '--json'])).exitCode).toBe(0);
    const attach = await berth(dataDir, ['attach', 'v-null', '--transport', 'hang', '--json'], { HANG_MODE: 'devnull' });
    expect(attach.exitCode, attach.stderr).toBe(15);
    expect((JSON.parse(attach.stdout) as { error: { message: string } }).error.message).toBe('transport hang (hang) returned device /dev/null, which is not a block device');
    const volume = await berth(dataDir, ['volume', 'show', 'v-null', '--json']);
    expect((JSON.parse(volume.stdout) as { status: string }).status).toBe('available');
  }, 40_000);
});
