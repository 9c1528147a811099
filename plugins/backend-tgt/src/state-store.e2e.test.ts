import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { TgtStateStore } from './state-store.js';

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../dist/state-store.js');
const temps: string[] = [];

afterEach(async () => {
  await Promise.all(temps.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

/** Another process (as a concurrent CLI invocation is) adding `count` volumes named `<prefix>N`. */
function writer(dir: string, prefix: string, count: number): Promise<number | null> {
  const script = `
    const { TgtStateStore } = await import(${JSON.stringify(DIST)});
    const store = new TgtStateStore(${JSON.stringify(dir)});
    for (let i = 0; i < ${count}; i++) {
      await store.transaction(undefined, async (state) => {
        await new Promise((r) => setImmediate(r));
        state.volumes['${prefix}' + i] = { tid: 1000 + i, iqn: 'iqn.x:${prefix}' + i, file: '/f', sizeBytes: 512, initiators: [], createdAt: 'now' };
      });
    }`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'inherit', 'inherit'] });
  return new Promise((resolve) => child.on('exit', resolve));
}

describe('TgtStateStore across processes', () => {
  it('loses no update when two processes and this one write at the same time', async () => {
    expect(existsSync(DIST), `build the package first (npx tsc -p tsconfig.build.json): ${DIST}`).toBe(true);
    const dir = path.join(await mkdtemp(path.join(tmpdir(), 'berth-tgt-xproc-')), 'backend-tgt');
    temps.push(path.dirname(dir));
    const store = new TgtStateStore(dir);
    const local = (async () => {
      for (let i = 0; i < 25; i += 1) {
        await store.transaction(undefined, async (state) => {
          await new Promise((r) => setImmediate(r));
          state.volumes[`c${i}`] = { tid: 3000 + i, iqn: `iqn.x:c${i}`, file: '/f', sizeBytes: 512, initiators: [], createdAt: 'now' };
        });
      }
    })();
    const codes = await Promise.all([writer(dir, 'a', 25), writer(dir, 'b', 25), local]);
    expect(codes.slice(0, 2)).toEqual([0, 0]);
    const keys = Object.keys((await store.read()).volumes);
    expect(keys).toHaveLength(75);
  });
});
