import { mkdtemp, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { processStartTicks } from './daemon.js';
import { LockTimeoutError } from './errors.js';
import { acquireFileLock } from './file-lock.js';

let dir: string;
let lockPath: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'berth-host-lock-'));
  lockPath = path.join(dir, 'state.lock');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const options = (timeoutMs = 5_000) => ({ timeoutMs, what: 'test state' });

/** A lock as another process would have written it. */
async function foreignLock(pid: number, startTicks: string): Promise<void> {
  await writeFile(lockPath, JSON.stringify({ pid, startTicks, token: 'theirs' }), { mode: 0o600 });
}

describe('acquireFileLock', () => {
  it('creates the lock file (mode 0600, naming this process) and removes it on release', async () => {
    const release = await acquireFileLock(lockPath, options());
    const holder = JSON.parse(await readFile(lockPath, 'utf8')) as { pid: number; startTicks: string };
    expect(holder.pid).toBe(process.pid);
    expect(holder.startTicks).toBe(await processStartTicks(process.pid));
    expect((await stat(lockPath)).mode & 0o777).toBe(0o600);
    await release();
    await release();
    expect(await readdir(dir)).toEqual([]);
  });

  it('makes a second taker wait until the first releases', async () => {
    const releaseFirst = await acquireFileLock(lockPath, options());
    let secondHas = false;
    const second = acquireFileLock(lockPath, options()).then((release) => {
      secondHas = true;
      return release;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(secondHas).toBe(false);
    await releaseFirst();
    const releaseSecond = await second;
    expect(secondHas).toBe(true);
    await releaseSecond();
    expect(await readdir(dir)).toEqual([]);
  });

  it('breaks the lock of a process that is gone', { timeout: 60_000 }, async () => {
    await foreignLock(2 ** 22 + 1, '12345');
    const started = Date.now();
    const release = await acquireFileLock(lockPath, options(60_000));
    // Broken at once, not waited out: well under the deadline whatever the machine's load.
    expect(Date.now() - started).toBeLessThan(30_000);
    expect((JSON.parse(await readFile(lockPath, 'utf8')) as { pid: number }).pid).toBe(process.pid);
    await release();
    expect(await readdir(dir)).toEqual([]);
  });

  it('breaks the lock of a recycled pid (alive, but started at another time)', async () => {
    await foreignLock(process.ppid, '1');
    const release = await acquireFileLock(lockPath, options());
    await release();
  });

  it('waits for a live holder and times out naming it, leaving its lock alone', async () => {
    const ticks = await processStartTicks(process.ppid);
    await foreignLock(process.ppid, ticks ?? '');
    const error = await acquireFileLock(lockPath, options(200)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LockTimeoutError);
    expect((error as LockTimeoutError).holderPid).toBe(process.ppid);
    expect((error as LockTimeoutError).message).toContain(`pid ${process.ppid}`);
    expect(JSON.parse(await readFile(lockPath, 'utf8'))).toMatchObject({ pid: process.ppid, token: 'theirs' });
  });

  it('stops waiting when the signal aborts', async () => {
    await foreignLock(process.ppid, (await processStartTicks(process.ppid)) ?? '');
    const controller = new AbortController();
    const waiting = acquireFileLock(lockPath, { ...options(), signal: controller.signal }).catch((e: unknown) => e);
    const reason = new Error('stop');
    controller.abort(reason);
    const error = await waiting;
    expect(error).toBe(reason);
    expect(JSON.parse(await readFile(lockPath, 'utf8'))).toMatchObject({ token: 'theirs' });
  });

  it('waits on a lock still being written, and breaks one abandoned half-written', async () => {
    await writeFile(lockPath, '');
    const error = await acquireFileLock(lockPath, options(100)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LockTimeoutError);
    const old = new Date(Date.now() - 60_000);
    await utimes(lockPath, old, old);
    const release = await acquireFileLock(lockPath, options());
    await release();
  });

  it('breaks a dead holder\'s lock only in its turn among breakers, and clears a breaker that died at it', async () => {
    await foreignLock(2 ** 22 + 1, '12345');
    // Another breaker, alive, is at it: this taker waits for it, touching neither file.
    const breaking = `${lockPath}.break`;
    const ticks = (await processStartTicks(process.ppid)) ?? '';
    await writeFile(breaking, JSON.stringify({ pid: process.ppid, startTicks: ticks, token: 'breaker' }), { mode: 0o600 });
    const error = await acquireFileLock(lockPath, options(300)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LockTimeoutError);
    expect(JSON.parse(await readFile(lockPath, 'utf8'))).toMatchObject({ token: 'theirs' });
    expect(JSON.parse(await readFile(breaking, 'utf8'))).toMatchObject({ token: 'breaker' });
    // That breaker died before it finished: its turn is cleared, and the dead lock broken.
    await writeFile(breaking, JSON.stringify({ pid: 2 ** 22 + 2, startTicks: '1', token: 'breaker' }), { mode: 0o600 });
    const release = await acquireFileLock(lockPath, options());
    expect((JSON.parse(await readFile(lockPath, 'utf8')) as { pid: number }).pid).toBe(process.pid);
    await release();
    expect(await readdir(dir)).toEqual([]);
  });

  it('clears a breaker\'s turn stranded past its time, though it names a live process', async () => {
    await foreignLock(2 ** 22 + 1, '12345');
    const breaking = `${lockPath}.break`;
    await writeFile(breaking, JSON.stringify({ pid: process.ppid, startTicks: (await processStartTicks(process.ppid)) ?? '', token: 'stranded' }), { mode: 0o600 });
    const old = new Date(Date.now() - 60_000);
    await utimes(breaking, old, old);
    const release = await acquireFileLock(lockPath, options());
    await release();
    expect(await readdir(dir)).toEqual([]);
  });

  it('serialises many takers: no two hold it at once', async () => {
    let holders = 0;
    let most = 0;
    await Promise.all(
      Array.from({ length: 12 }, async () => {
        const release = await acquireFileLock(lockPath, options(20_000));
        holders += 1;
        most = Math.max(most, holders);
        await new Promise((resolve) => setImmediate(resolve));
        holders -= 1;
        await release();
      }),
    );
    expect(most).toBe(1);
    expect(await readdir(dir)).toEqual([]);
  });
});
