import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { z } from '@berth/core/zod';
import { AttachStateFileStore } from './attach-state-store.js';
import { zLeftLogin } from './left-login.js';

// Real processes on one state directory, as `berth serve` and a CLI `berth reconcile` (or two CLI
// runs) are on one host: each child runs the package's build (turbo's `test` depends on it), as
// the CLI does, and changes one volume's attach state through the left-login helpers.

const DIST = (file: string): string => pathToFileURL(fileURLToPath(new URL(`../dist/${file}`, import.meta.url))).href;
const ZOD = pathToFileURL(createRequire(import.meta.url).resolve('zod')).href;
const VOLUME = '5d1c7e0a-2f4b-4c1e-9a6d-3b8e2f0c7a11';

const zState = z.object({ version: z.literal(1), volumeId: z.string(), device: z.string().optional(), left_logins: z.array(zLeftLogin).optional() });

/** The child's preamble: the store on `dir` with a state schema of left logins (as the transports'). */
function preamble(dir: string): string {
  return `
    import { writeSync } from 'node:fs';
    import { z } from ${JSON.stringify(ZOD)};
    import { AttachStateFileStore } from ${JSON.stringify(DIST('attach-state-store.js'))};
    import { saveLeftLogins, zLeftLogin } from ${JSON.stringify(DIST('left-login.js'))};
    import { toPortal } from ${JSON.stringify(DIST('target.js'))};
    const schema = z.object({ version: z.literal(1), volumeId: z.string(), device: z.string().optional(), left_logins: z.array(zLeftLogin).optional() });
    const store = new AttachStateFileStore(${JSON.stringify(dir)}, schema);
    const logger = { info() {}, debug() {}, error() {}, warn(o, m) { writeSync(2, m + ' ' + JSON.stringify(o) + '\\n'); }, child() { return logger; } };
    const say = (line) => writeSync(1, line + '\\n');
  `;
}

/**
 * A child that, once told `go` on stdin, keeps `count` logins given up at its own target (one per
 * portal), one `saveLeftLogins` each: a failed connect of the volume after another.
 */
function saverScript(dir: string, name: string, count: number): string {
  return `${preamble(dir)}
    say('ready');
    await new Promise((resolve) => process.stdin.once('data', resolve));
    for (let i = 0; i < ${count}; i++) {
      const portalText = '192.0.2.' + (i + 1) + ':3260';
      const startedAt = Date.now();
      const left = { target: { iqn: 'iqn.2026-01.test.berth:${name}', portal: toPortal(portalText), portalText, lun: 1, kernelLun: 1 }, startedAt, until: startedAt + 600000 };
      await saveLeftLogins(store, ${JSON.stringify(VOLUME)}, () => ({ version: 1, volumeId: ${JSON.stringify(VOLUME)} }), [left], logger);
    }
    say('done');
    process.exit(0);
  `;
}

const children = new Set<ChildProcess>();

function start(script: string): { child: ChildProcess; line: (want: string) => Promise<void> } {
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let out = '';
  let err = '';
  const waiters: Array<() => void> = [];
  child.stdout!.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    for (const w of waiters.splice(0)) w();
  });
  child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const line = (want: string): Promise<void> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        if (out.split('\n').includes(want)) resolve();
        else if (child.exitCode !== null || child.signalCode !== null) reject(new Error(`child exited (${child.exitCode ?? child.signalCode}) before '${want}': ${err}`));
        else waiters.push(check);
      };
      child.once('exit', () => setImmediate(check));
      check();
    });
  return { child, line };
}

describe('one volume\'s attach state changed by several processes at once', { timeout: 120_000 }, () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-state-lock-'));
  });
  afterEach(async () => {
    for (const child of children) child.kill('SIGKILL');
    await Promise.all([...children].map((child) => once(child, 'exit')));
    await rm(dir, { recursive: true, force: true });
  });

  it('no process loses another\'s change: every left login three processes kept at once is in the state', async () => {
    const count = 60;
    const savers = ['one', 'two', 'three'].map((name) => ({ name, ...start(saverScript(dir, name, count)) }));
    await Promise.all(savers.map((s) => s.line('ready')));
    for (const s of savers) s.child.stdin!.write('go\n');
    await Promise.all(savers.map((s) => s.line('done')));
    const state = await new AttachStateFileStore(dir, zState).load(VOLUME);
    // Without the volume's lock each read the file, added its login and wrote it back: a save
    // landing between another's read and write was lost (left logins of a failed connect that
    // nobody then finished: sessions left owned by nobody).
    const byName = (name: string): number => (state?.left_logins ?? []).filter((e) => e.target_iqn.endsWith(`:${name}`)).length;
    expect({ one: byName('one'), two: byName('two'), three: byName('three') }).toEqual({ one: count, two: count, three: count });
  });

  /** A child that takes the volume's lock and stops inside the change (a synchronous spin: it never writes). */
  async function startHolder(): Promise<ReturnType<typeof start>> {
    const holder = start(`${preamble(dir)}
      await store.update(${JSON.stringify(VOLUME)}, () => {
        say('holding');
        for (;;) {}
      });
    `);
    await holder.line('holding');
    return holder;
  }

  it('a process SIGKILLed while holding a volume\'s lock does not block it: the next change breaks the lock and goes on', async () => {
    const holder = await startHolder();
    const lockFile = path.join(dir, `${VOLUME}.lock`);
    expect(JSON.parse(await readFile(lockFile, 'utf8'))).toMatchObject({ pid: holder.child.pid });
    holder.child.kill('SIGKILL');
    await once(holder.child, 'exit');
    const store = new AttachStateFileStore(dir, zState, 10_000);
    const after = await store.update(VOLUME, (current) => ({ ...(current ?? { version: 1 as const, volumeId: VOLUME }), device: '/dev/sdq' }));
    expect(after).toEqual({ version: 1, volumeId: VOLUME, device: '/dev/sdq' });
    expect(await store.load(VOLUME)).toEqual(after);
    // Released: the lock file is gone again.
    await expect(stat(lockFile)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a live holder in another process is waited for, not broken; past the timeout a TIMEOUT names it', async () => {
    const holder = await startHolder();
    const error = await new AttachStateFileStore(dir, zState, 300).update(VOLUME, () => ({ version: 1, volumeId: VOLUME })).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'TIMEOUT', details: { volumeId: VOLUME, holderPid: holder.child.pid } });
    expect(await new AttachStateFileStore(dir, zState).load(VOLUME)).toBeUndefined();
  });
});
