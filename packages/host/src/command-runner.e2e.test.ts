import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createCommandRunner as createRunner, type CommandRunnerOptions } from './command-runner.js';
import { CommandError } from './errors.js';
import { createDeviceWaiter } from './device-waiter.js';
import { createHostFs } from './host-fs.js';

function collectingLogger(): { lines: Array<{ obj: Record<string, unknown>; msg?: string }>; debug(obj: Record<string, unknown>, msg?: string): void } {
  const lines: Array<{ obj: Record<string, unknown>; msg?: string }> = [];
  return {
    lines,
    debug(obj, msg) {
      lines.push(msg === undefined ? { obj } : { obj, msg });
    },
  };
}

const temps: string[] = [];
afterEach(async () => {
  await Promise.all(temps.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

// Every behaviour holds whoever starts the commands: berth-spawner (the default once built) or Node's spawn.
const waiter = createDeviceWaiter(createHostFs());

/** Resolves once no process's command line holds `marker` (within 10 s). */
async function noProcessWith(marker: string): Promise<void> {
  const runner = createRunner({ nodeSpawn: true });
  await waiter.waitUntil('/proc', async () => ((await runner.run('pgrep', ['-f', marker], { reject: false })).exitCode === 1 ? true : undefined), {
    timeoutMs: 10_000,
    pollMs: 50,
    what: `no process running ${marker}`,
    signal: new AbortController().signal,
  });
}

/** Runs `body` (ES module code that has `createCommandRunner` in scope) in a child Node process; resolves with it. */
function nodeChild(body: string): ReturnType<typeof spawn> {
  const script = `const { createCommandRunner } = await import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)});\n${body}`;
  return spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
}

describe.each([
  ['berth-spawner', false],
  ['Node spawn', true],
])('createCommandRunner (%s)', (_starter, nodeSpawn) => {
  const createCommandRunner = (options: CommandRunnerOptions = {}): ReturnType<typeof createRunner> => createRunner({ ...options, nodeSpawn });
  it('passes arguments with spaces and shell metacharacters literally', async () => {
    const runner = createCommandRunner();
    const result = await runner.run('printf', ['%s|%s', 'a; rm -rf /', '$(echo no) `x` *']);
    expect(result.stdout).toBe('a; rm -rf /|$(echo no) `x` *');
    expect(result.exitCode).toBe(0);
    expect(result.command).toBe("printf '%s|%s' 'a; rm -rf /' '$(echo no) `x` *'");
    expect(result.durationMs).toBeGreaterThan(0);
  });

  it('keeps the final newline and feeds input on stdin', async () => {
    const result = await createCommandRunner().run('cat', [], { input: 'line one\nline two\n' });
    expect(result.stdout).toBe('line one\nline two\n');
  });

  it('throws a CommandError with exit code and stderr on failure', async () => {
    const runner = createCommandRunner();
    const error = await runner.run('sh', ['-c', 'echo out; echo "went wrong" >&2; exit 7']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CommandError);
    const { result } = error as CommandError;
    expect(result.exitCode).toBe(7);
    expect(result.stderr).toBe('went wrong\n');
    expect(result.stdout).toBe('out\n');
    expect((error as CommandError).message).toContain('exit 7: went wrong');
  });

  it('returns the failed result when reject is false', async () => {
    const result = await createCommandRunner().run('sh', ['-c', 'echo nope >&2; exit 21'], { reject: false });
    expect(result.exitCode).toBe(21);
    expect(result.stderr).toBe('nope\n');
    expect(result.timedOut).toBe(false);
  });

  it('kills a command at its timeout', async () => {
    const started = performance.now();
    const error = await createCommandRunner().run('sleep', ['5'], { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(performance.now() - started).toBeLessThan(3000);
    expect(error).toBeInstanceOf(CommandError);
    expect((error as CommandError).result).toMatchObject({ exitCode: -1, timedOut: true, aborted: false });
    expect((error as CommandError).message).toMatch(/timed out/);
  });

  it('uses the default timeout of the runner', async () => {
    const result = await createCommandRunner({ defaultTimeoutMs: 150 }).run('sleep', ['5'], { reject: false });
    expect(result.timedOut).toBe(true);
    expect(result.durationMs).toBeLessThan(3000);
  });

  it('kills a command when its signal fires', async () => {
    const controller = new AbortController();
    const started = performance.now();
    const running = createCommandRunner().run('sleep', ['5'], { signal: controller.signal, reject: false });
    setTimeout(() => controller.abort(), 50);
    const result = await running;
    expect(performance.now() - started).toBeLessThan(3000);
    expect(result).toMatchObject({ exitCode: -1, aborted: true, timedOut: false });
  });

  it('does not start a command whose signal has already fired', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-host-'));
    temps.push(dir);
    const marker = path.join(dir, 'ran');
    const controller = new AbortController();
    controller.abort();
    const error = await createCommandRunner()
      .run('touch', [marker], { signal: controller.signal })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CommandError);
    expect((error as CommandError).result.aborted).toBe(true);
    const { existsSync } = await import('node:fs');
    expect(existsSync(marker)).toBe(false);
  });

  it('reports a missing executable as notFound', async () => {
    const error = await createCommandRunner().run('berth-no-such-tool', ['x']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CommandError);
    expect((error as CommandError).notFound).toBe(true);
    expect((error as CommandError).result.exitCode).toBe(-1);
    expect((error as CommandError).message).toBe('berth-no-such-tool x: command not found');
    const result = await createCommandRunner().run('berth-no-such-tool', [], { reject: false });
    expect(result).toMatchObject({ exitCode: -1, notFound: true });
  });

  it('masks secrets in the error, the command line and the log, but returns real output on success', async () => {
    const logger = collectingLogger();
    const runner = createCommandRunner({ logger });
    const secret = 'chap-Secret-42';
    const error = await runner
      .run('sh', ['-c', `echo "login with ${secret}"; echo "bad password ${secret}" >&2; exit 24`, secret], { secrets: [secret] })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CommandError);
    const ce = error as CommandError;
    expect(ce.message).not.toContain(secret);
    expect(ce.message).toContain('bad password ***');
    expect(ce.result.command).not.toContain(secret);
    expect(ce.result.stdout).toBe('login with ***\n');
    expect(ce.result.stderr).toBe('bad password ***\n');
    expect(JSON.stringify(ce.cause ?? null)).not.toContain(secret);
    expect(String((ce.cause as Error | undefined)?.message ?? '')).not.toContain(secret);

    const ok = await runner.run('printf', ['%s', secret], { secrets: [secret] });
    expect(ok.stdout).toBe(secret);
    expect(ok.command).toBe("printf %s ***");

    expect(logger.lines).toHaveLength(2);
    expect(JSON.stringify(logger.lines)).not.toContain(secret);
    expect(logger.lines[0]?.obj).toMatchObject({ exitCode: 24 });
    expect(logger.lines[1]?.obj).toMatchObject({ command: 'printf %s ***', exitCode: 0 });
    expect(typeof logger.lines[1]?.obj.durationMs).toBe('number');
  });

  it('merges the runner and call environments over the process environment', async () => {
    const runner = createCommandRunner({ env: { BERTH_A: 'runner', BERTH_B: 'runner' } });
    const result = await runner.run('sh', ['-c', 'printf "%s %s %s" "$BERTH_A" "$BERTH_B" "$HOME"'], { env: { BERTH_B: 'call' } });
    expect(result.stdout).toBe(`runner call ${process.env.HOME ?? ''}`);
  });

  it('finds executables in pathPrepend before PATH', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-host-'));
    temps.push(dir);
    const fake = path.join(dir, 'uname');
    await writeFile(fake, '#!/bin/sh\necho "fake uname $*"\n');
    await chmod(fake, 0o755);
    const result = await createCommandRunner({ pathPrepend: [dir] }).run('uname', ['-r']);
    expect(result.stdout).toBe('fake uname -r\n');
    const real = await createCommandRunner().run('uname', ['-s']);
    expect(real.stdout).toBe('Linux\n');
  });

  it('looks a name up in PATH as execvp does: past a missing dir, a dangling link and a file it may not run; EACCES (not "not found") when only that is found', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-host-'));
    temps.push(dir);
    const noExec = path.join(dir, 'a');
    const dangling = path.join(dir, 'b');
    const good = path.join(dir, 'c');
    for (const d of [noExec, dangling, good]) await mkdir(d);
    await writeFile(path.join(noExec, 'berth-probe'), '#!/bin/sh\necho wrong\n');
    await symlink(path.join(dir, 'nowhere'), path.join(dangling, 'berth-probe'));
    await writeFile(path.join(good, 'berth-probe'), '#!/bin/sh\necho found\n');
    await chmod(path.join(good, 'berth-probe'), 0o755);
    const env = { PATH: [path.join(dir, 'missing'), noExec, dangling, good].join(':') };
    expect((await createCommandRunner({ env }).run('berth-probe', [])).stdout).toBe('found\n');
    // Found but not runnable (EACCES) is a failed start, not "not found"; nothing at all is.
    const denied = await createCommandRunner({ env: { PATH: [path.join(dir, 'missing'), noExec].join(':') } }).run('berth-probe', [], { reject: false });
    expect(denied).toMatchObject({ exitCode: -1, stdout: '' });
    expect(denied.notFound).toBeUndefined();
    const missing = await createCommandRunner({ env: { PATH: [path.join(dir, 'missing'), dangling].join(':') } }).run('berth-probe', [], { reject: false });
    expect(missing).toMatchObject({ exitCode: -1, notFound: true });
  });

  it('searchPath() is the PATH its commands get: pathPrepend first, then the runner\'s env over the process\'s', async () => {
    const runner = createCommandRunner({ pathPrepend: ['/opt/fake', '/opt/fake2'], env: { PATH: '/usr/bin:/bin' } });
    expect(runner.searchPath?.()).toEqual(['/opt/fake', '/opt/fake2', '/usr/bin', '/bin']);
    const printed = await runner.run('printenv', ['PATH']);
    expect(printed.stdout.trim()).toBe(runner.searchPath?.().join(':'));
    expect(createCommandRunner().searchPath?.().join(':')).toBe(process.env.PATH ?? '');
  });

  it('kills a command that ignores SIGTERM with SIGKILL after the grace, and reports it timed out', async () => {
    const started = performance.now();
    // The shell ignores TERM and waits on a child that is in its process group: only SIGKILL ends the shell.
    const result = await createCommandRunner().run('sh', ['-c', 'trap "" TERM; while :; do sleep 0.05; done'], { timeoutMs: 100, reject: false });
    expect(result).toMatchObject({ exitCode: -1, timedOut: true });
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  it('reports a command killed by a signal it did not get from berth with exit -1 and the signal', async () => {
    const error = await createCommandRunner().run('sh', ['-c', 'kill -KILL $$']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CommandError);
    expect((error as CommandError).result).toMatchObject({ exitCode: -1, timedOut: false, aborted: false });
    expect(String(((error as CommandError).cause as Error).message)).toMatch(/killed with SIGKILL/);
  });

  it('decodes UTF-8 split across reads and keeps an EPIPE on stdin out of the result', async () => {
    const text = 'é'.repeat(200_000);
    const echoed = await createCommandRunner().run('cat', [], { input: text });
    expect(echoed.stdout).toBe(text);
    // `true` never reads its input: the write fails with EPIPE, which is not the command's failure.
    const ignored = await createCommandRunner().run('true', [], { input: 'x'.repeat(1 << 20) });
    expect(ignored.exitCode).toBe(0);
  });

  it('refuses an argument Node cannot pass (a NUL byte) as a failed command, without throwing past the runner', async () => {
    const result = await createCommandRunner().run('printf', ['a\0b'], { reject: false });
    expect(result.exitCode).toBe(-1);
    const error = await createCommandRunner().run('printf', ['a\0b']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CommandError);
  });

  it('runs an executable script with no #! line with /bin/sh, as execvp does', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-host-'));
    temps.push(dir);
    const script = path.join(dir, 'no-shebang');
    await writeFile(script, 'echo "ran with $1"\n');
    await chmod(script, 0o755);
    expect((await createCommandRunner().run(script, ['x'])).stdout).toBe('ran with x\n');
    expect((await createCommandRunner({ pathPrepend: [dir] }).run('no-shebang', ['y'])).stdout).toBe('ran with y\n');
  });

  it('names the signal that killed a command as Node does (SIGABRT, not SIGIOT)', async () => {
    const error = await createCommandRunner().run('sh', ['-c', 'kill -ABRT $$']).catch((e: unknown) => e);
    expect(String(((error as CommandError).cause as Error).message)).toMatch(/killed with SIGABRT/);
  });

  it('runs a command when its working directory was removed', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-host-'));
    const before = process.cwd();
    const runner = createCommandRunner();
    await runner.run('true', []);
    process.chdir(dir);
    try {
      await rm(dir, { recursive: true });
      expect((await runner.run('printf', ['ok'])).stdout).toBe('ok');
    } finally {
      process.chdir(before);
    }
  });

  it('a command started just before a normal exit does not outlive it', async () => {
    // `sleep` under a name of its own, so that its command line says which test started it.
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-host-'));
    temps.push(dir);
    const marker = path.join(dir, `berth-exit-marker-${nodeSpawn ? 'node' : 'spawner'}`);
    await symlink((await createRunner({ nodeSpawn: true }).run('sh', ['-c', 'command -v sleep'])).stdout.trim(), marker);
    const child = nodeChild(`createCommandRunner({ nodeSpawn: ${nodeSpawn} }).run('${marker}', ['30'], { reject: false });\nprocess.exit(0);`);
    await new Promise((resolve) => child.once('exit', resolve));
    await noProcessWith(marker);
  });

  it('a command that writes dies of SIGPIPE when berth is killed, as before', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-host-'));
    temps.push(dir);
    const marker = `berth-kill-marker-${process.pid}-${nodeSpawn ? 'node' : 'spawner'}`;
    const started = path.join(dir, 'started');
    const child = nodeChild(`createCommandRunner({ nodeSpawn: ${nodeSpawn} }).run('sh', ['-c', ': > ${started}; while :; do echo tick; sleep 0.05; done', '${marker}'], { reject: false });`);
    try {
      await waiter.waitForPath(started, { timeoutMs: 10_000, signal: new AbortController().signal });
    } finally {
      child.kill('SIGKILL');
    }
    await new Promise((resolve) => child.once('exit', resolve));
    await noProcessWith(marker);
    expect(await readFile(started, 'utf8')).toBe('');
  });
});
