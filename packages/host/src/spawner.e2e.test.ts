import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createCommandRunner } from './command-runner.js';
import { createDeviceWaiter } from './device-waiter.js';
import { createHostFs } from './host-fs.js';
import { processRuns } from './daemon.js';
import { LockTimeoutError } from './errors.js';
import { acquireFileLock } from './file-lock.js';
import { commandStarter, commandsOutlive } from './spawner.js';
import { killedWithCommand } from './testing/index.js';

const temps: string[] = [];
afterEach(async () => {
  await Promise.all(temps.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

const waiter = createDeviceWaiter(createHostFs());
const signal = new AbortController().signal;

/** Resolves once `pid` is gone (its /proc entry), within 10 s. */
async function gone(pid: number): Promise<void> {
  await waiter.waitForGone(`/proc/${pid}`, { timeoutMs: 10_000, signal });
}

// The last test loses the spawner on purpose: this file runs in its own worker, so the others do not.
describe('berth-spawner', () => {
  it('is built, and starts the commands: they are its children, not this process\'s', async () => {
    expect(commandStarter()).toBe('berth-spawner');
    const result = await createCommandRunner().run('sh', ['-c', 'echo $PPID']);
    const parent = Number(result.stdout.trim());
    expect(parent).not.toBe(process.pid);
    expect((await readFile(`/proc/${parent}/comm`, 'utf8')).trim()).toBe('berth-spawner');
    const viaNode = await createCommandRunner({ nodeSpawn: true }).run('sh', ['-c', 'echo $PPID']);
    expect(Number(viaNode.stdout.trim())).toBe(process.pid);
  });

  it('keeps the output of many commands run at once apart', async () => {
    const runner = createCommandRunner();
    const results = await Promise.all(
      Array.from({ length: 64 }, (_, i) => runner.run('sh', ['-c', `i=0; while [ $i -lt 50 ]; do printf '${i}.'; printf '${i}!' >&2; i=$((i+1)); done; exit ${i % 7}`], { reject: false })),
    );
    results.forEach((result, i) => {
      expect(result.exitCode).toBe(i % 7);
      expect(result.stdout).toBe(`${i}.`.repeat(50));
      expect(result.stderr).toBe(`${i}!`.repeat(50));
    });
  });

  it('looks the file up in the command\'s own PATH, runs it in this process\'s directory, and passes empty and odd arguments', async () => {
    const runner = createCommandRunner({ env: { PATH: '/nonexistent:/usr/bin:/bin' } });
    const result = await runner.run('printf', ['[%s]', '', 'a b', 'é\n', '--']);
    expect(result.stdout).toBe('[][a b][é\n][--]');
    expect((await runner.run('pwd', [])).stdout.trim()).toBe(process.cwd());
    // After a chdir of this process, commands follow it (the spawner started elsewhere).
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-spawner-'));
    temps.push(dir);
    const before = process.cwd();
    process.chdir(dir);
    try {
      expect((await runner.run('pwd', [])).stdout.trim()).toBe(dir);
    } finally {
      process.chdir(before);
    }
    const missing = await createCommandRunner({ env: { PATH: '/nonexistent' } }).run('printf', ['x'], { reject: false });
    expect(missing).toMatchObject({ exitCode: -1, notFound: true });
  });

  it('sends SIGTERM to the commands still running when this process exits normally', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-spawner-'));
    temps.push(dir);
    const pidFile = path.join(dir, 'pid');
    const script = [
      `const { createCommandRunner } = await import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)});`,
      `createCommandRunner().run('sh', ['-c', 'echo $$ > ${pidFile}.tmp && mv ${pidFile}.tmp ${pidFile} && exec sleep 60'], { reject: false });`,
      `const fs = await import('node:fs');`,
      `const until = Date.now() + 10_000;`,
      `const check = () => { if (fs.existsSync(${JSON.stringify(pidFile)}) || Date.now() > until) process.exit(0); else setImmediate(check); };`,
      'check();',
    ].join('\n');
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: 'ignore' });
    await new Promise((resolve) => child.once('exit', resolve));
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    expect(pid).toBeGreaterThan(0);
    await gone(pid);
  });

  it('stays for the commands of a SIGKILLed process, standing for them: its lock is not broken until they ended', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-spawner-'));
    temps.push(dir);
    const lock = path.join(dir, 'target.lock');
    // The command ends when the test says (a logout that takes its time).
    const killed = await killedWithCommand({ timeoutMs: 20_000, lock });
    try {
      expect(await processRuns(killed.command, undefined)).toBe(true);
      expect(commandsOutlive(killed.pid)).toBe(true);
      // Any dead process's (a replica taking over does not know whose operation it took).
      expect(commandsOutlive()).toBe(true);
      // The holder is dead, its command runs: the lock stands.
      await expect(acquireFileLock(lock, { timeoutMs: 300, what: 'the test lock' })).rejects.toBeInstanceOf(LockTimeoutError);
      const taken = acquireFileLock(lock, { timeoutMs: 10_000, what: 'the test lock' }).then(async (release) => {
        const running = await processRuns(killed.command, undefined);
        await release();
        return running;
      });
      await killed.finish();
      // Taken only once the command ended (before: at once, beside it).
      expect(await taken).toBe(false);
      expect(commandsOutlive(killed.pid)).toBe(false);
    } finally {
      await killed.dispose();
    }
  }, 30_000);

  it('ends a dead process\'s command at its timeout: SIGTERM, then SIGKILL when it ignores that', async () => {
    const killed = await killedWithCommand({ timeoutMs: 500, trapTerm: true });
    try {
      await gone(killed.command);
      await waiter.waitUntil('/proc', async () => (commandsOutlive(killed.pid) ? undefined : true), { timeoutMs: 10_000, signal, what: 'the spawner to go' });
    } finally {
      await killed.dispose();
    }
  }, 30_000);

  it.each(['SIGHUP', 'SIGTERM'] as const)('outlives a %s to the whole process group (an ssh session that drops) while a command that survives it runs', async (groupSignal) => {
    const killed = await killedWithCommand({ timeoutMs: 20_000, trapTerm: true, groupSignal });
    try {
      expect(await processRuns(killed.command, undefined)).toBe(true);
      expect(commandsOutlive(killed.pid)).toBe(true);
      await killed.finish();
      await gone(killed.command);
      await waiter.waitUntil('/proc', async () => (commandsOutlive(killed.pid) ? undefined : true), { timeoutMs: 10_000, signal, what: 'the spawner to go' });
    } finally {
      await killed.dispose();
    }
  }, 30_000);

  it('when the spawner dies, its running commands fail (and get SIGTERM) and later commands start with Node', async () => {
    const runner = createCommandRunner();
    const running = runner.run('sh', ['-c', 'echo $$; exec sleep 60'], { reject: false, timeoutMs: 20_000 });
    // The spawner's pid, from a command it started.
    const parent = Number((await runner.run('sh', ['-c', 'echo $PPID'])).stdout.trim());
    expect((await readFile(`/proc/${parent}/comm`, 'utf8')).trim()).toBe('berth-spawner');
    process.kill(parent, 'SIGKILL');
    const lost = await running;
    const orphan = Number(lost.stdout.trim());
    try {
      expect(lost.exitCode).toBe(-1);
      expect(lost.notFound).toBeUndefined();
      expect(lost.stderr).toBe('');
      // Reported failed, so it is not left running behind berth's back: it got SIGTERM.
      await gone(orphan);
      const after = await runner.run('sh', ['-c', 'echo $PPID']);
      expect(Number(after.stdout.trim())).toBe(process.pid);
      expect(commandStarter()).toBe('node');
    } finally {
      try {
        process.kill(orphan, 'SIGKILL');
      } catch {
        // gone already
      }
    }
  });
});
