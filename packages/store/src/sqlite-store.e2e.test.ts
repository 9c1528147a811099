import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createMigrations } from './migrations.js';
import { openSqliteStore, relayDir } from './open-sqlite-store.js';
import { sqliteStoreDialect } from './sqlite-dialect.js';

// The workers run the built package: Node 20 cannot load the TypeScript sources.
const entryUrl = new URL('../dist/index.js', import.meta.url);
const workerPath = fileURLToPath(new URL('./test-store-worker.mjs', import.meta.url));
const DEADLINE_MS = 60_000;

interface Worker {
  child: ChildProcess;
  /** Resolves with the next stdout line. */
  nextLine(): Promise<string>;
  /** Resolves with the exit code; rejects past the deadline. */
  exited: Promise<number | null>;
  stderr(): string;
}

const workers: Worker[] = [];
const tempDirs: string[] = [];

function startWorker(args: string[]): Worker {
  const child = spawn(process.execPath, [workerPath, entryUrl.href, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiters: Array<(line: string) => void> = [];
  let buffered = '';
  let errText = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    let newline = buffered.indexOf('\n');
    while (newline >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      const waiter = waiters.shift();
      if (waiter === undefined) lines.push(line);
      else waiter(line);
      newline = buffered.indexOf('\n');
    }
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    errText += chunk;
  });
  const exited = new Promise<number | null>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`worker ${args.join(' ')} still running after ${DEADLINE_MS} ms`)), DEADLINE_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
  // Whoever awaits `exited` still sees the rejection; this only keeps it from going unhandled.
  exited.catch(() => undefined);
  const worker: Worker = {
    child,
    exited,
    stderr: () => errText,
    nextLine: () =>
      new Promise<string>((resolve, reject) => {
        const early = lines.shift();
        if (early !== undefined) {
          resolve(early);
          return;
        }
        const timer = setTimeout(() => reject(new Error(`no output from worker within ${DEADLINE_MS} ms: ${errText}`)), DEADLINE_MS);
        const onExit = (code: number | null): void => {
          clearTimeout(timer);
          reject(new Error(`worker exited (${code}) before printing: ${errText}`));
        };
        child.once('exit', onExit);
        waiters.push((line) => {
          clearTimeout(timer);
          child.off('exit', onExit);
          resolve(line);
        });
      }),
  };
  workers.push(worker);
  return worker;
}

beforeAll(() => {
  if (!existsSync(fileURLToPath(entryUrl))) {
    throw new Error('dist/index.js is missing: build the package first (npx tsc -p tsconfig.build.json)');
  }
});

afterEach(async () => {
  for (const worker of workers.splice(0)) {
    if (worker.child.exitCode === null && worker.child.signalCode === null) {
      worker.child.kill('SIGKILL');
      await worker.exited.catch(() => undefined);
    }
  }
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'berth-store-e2e-'));
  tempDirs.push(dir);
  return dir;
}

interface CasReport {
  wins: string[];
  conflicts: number;
  errors: string[];
}

describe('SQLite store shared by OS processes', () => {
  it('four processes opening one fresh file at once all migrate it and write', async () => {
    const filename = join(tempDir(), 'state', 'berth.db');
    const started = Array.from({ length: 4 }, (_, i) => startWorker([filename, 'open', `node-${i}`]));
    for (const worker of started) {
      expect(JSON.parse(await worker.nextLine())).toEqual({ ok: true });
      expect(await worker.exited, worker.stderr()).toBe(0);
    }
    const store = await openSqliteStore({ filename });
    try {
      expect((await store.hosts.list()).map((h) => h.name)).toEqual(['node-0', 'node-1', 'node-2', 'node-3']);
    } finally {
      await store.close();
    }
    const raw = new BetterSqlite3(filename, { readonly: true });
    try {
      expect(raw.prepare('select count(*) as n from kysely_migration').get()).toEqual({ n: Object.keys(createMigrations(sqliteStoreDialect)).length });
    } finally {
      raw.close();
    }
  }, 2 * DEADLINE_MS);

  it('two processes racing 200 reservations: exactly one wins each, no SQLITE_BUSY, no lost update', async () => {
    const filename = join(tempDir(), 'berth.db');
    const rounds = 200;
    // A race both sides won some of, so that it was a race: a sibling SQLite's busy handler puts
    // to sleep (1, 2, 5, 10… ms) can, on a loaded machine, wake only after the other finished all
    // 200 rounds (~0.1 s) — CI runs met that twice. The CAS must hold on every attempt; the
    // attempts only repeat until the two processes met.
    const attempts = 4;
    const store = await openSqliteStore({ filename });
    let counterId: string;
    try {
      counterId = (await store.hosts.create({ name: 'counter', connector: { host: 'counter', n: 0 } })).id;
    } finally {
      await store.close();
    }
    let met = false;
    for (let attempt = 1; attempt <= attempts && !met; attempt += 1) {
      const project = `race-${attempt}`;
      const setup = await openSqliteStore({ filename });
      try {
        await setup.transaction(async (tx) => {
          for (let i = 0; i < rounds; i += 1) {
            await tx.volumes.create({
              name: `vol-${String(i).padStart(3, '0')}`,
              projectId: project,
              sizeBytes: 1 << 20,
              backend: 'file',
              multiattach: false,
              status: 'available',
            });
          }
        });
      } finally {
        await setup.close();
      }

      const pair = [1, 2].map((seed) => startWorker([filename, 'cas', project, counterId, String(seed + 10 * attempt)]));
      for (const worker of pair) expect(await worker.nextLine()).toBe('ready');
      for (const worker of pair) worker.child.stdin?.write('go\n');
      const reports: CasReport[] = [];
      for (const worker of pair) {
        reports.push(JSON.parse(await worker.nextLine()) as CasReport);
        expect(await worker.exited, worker.stderr()).toBe(0);
      }

      const [first, second] = reports as [CasReport, CasReport];
      expect([...first.errors, ...second.errors]).toEqual([]);
      const winners = [...first.wins, ...second.wins];
      expect(new Set(winners).size).toBe(rounds);
      expect(winners).toHaveLength(rounds);
      expect(first.conflicts + second.conflicts).toBe(rounds);
      expect(first.wins.length + first.conflicts).toBe(rounds);
      expect(second.wins.length + second.conflicts).toBe(rounds);
      met = first.wins.length > 0 && second.wins.length > 0;

      const after = await openSqliteStore({ filename });
      try {
        const volumes = await after.volumes.list({ projectId: project });
        expect(volumes.every((v) => v.status === 'reserved')).toBe(true);
        expect(new Set(winners)).toEqual(new Set(volumes.map((v) => v.id)));
        // Every read-modify-write transaction of both processes, in every attempt, counted: none was lost.
        expect((await after.hosts.require(counterId)).connector).toEqual({ host: 'counter', n: 2 * rounds * attempt });
      } finally {
        await after.close();
      }
    }
    // Both won some in one of the attempts: the shuffled orders made them meet on the same volumes.
    expect(met).toBe(true);
  }, 4 * DEADLINE_MS);
});

describe('notifications between processes on one SQLite file (sockets beside it: SQLite has no NOTIFY)', () => {
  it('a committed notification of another process wakes this one\'s listener; a rolled-back one never arrives; a dead listener\'s socket is removed', async () => {
    const dir = tempDir();
    const filename = join(dir, 'berth.db');
    const store = await openSqliteStore({ filename });
    try {
      const heard: string[] = [];
      let wake: (() => void) | undefined;
      const stop = await store.notifications!.listen('work_done', (payload) => {
        heard.push(payload);
        wake?.();
      });
      // A socket left by a process that died (bound, then its server gone without removing it).
      const stale = join(relayDir(filename), '999999-deadbeef0000.sock');
      await new Promise<void>((resolve) => {
        const server = createServer();
        server.listen(stale, () => {
          // Closing a listening server removes its socket file: put a plain file there instead,
          // which refuses connections as a dead process's socket does.
          server.close(() => {
            writeFileSync(stale, '');
            resolve();
          });
        });
      });
      const arrived = new Promise<void>((resolve) => (wake = resolve));
      const worker = startWorker([filename, 'notify', 'work_done', 'item-1']);
      expect(JSON.parse(await worker.nextLine())).toEqual({ ok: true });
      expect(await worker.exited).toBe(0);
      await arrived;
      expect(heard).toEqual(['item-1']);
      // Its close waited for its deliveries: the stale socket was found and removed by then.
      expect(existsSync(stale)).toBe(false);
      await stop();
    } finally {
      await store.close();
    }
    // Closing removed this process's own socket.
    expect(readdirSync(relayDir(filename))).toEqual([]);
  });
});
