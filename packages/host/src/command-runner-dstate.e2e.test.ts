import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ABANDON_AFTER_KILL_MS, createCommandRunner } from './command-runner.js';
import { CommandError } from './errors.js';
import { createDeviceWaiter } from './device-waiter.js';
import { createHostFs } from './host-fs.js';
import { processAliveSync } from './proc-stat.js';

// A command in uninterruptible sleep (D state) does not die of SIGKILL until its I/O ends. Made
// for real here: a loop device over a file of a FUSE export whose server (qemu-storage-daemon) is
// SIGSTOPped; an O_DIRECT read of the device then waits in the kernel for an answer that does not
// come. The runner must end the call anyway (the step's deadline holds) and say what it left.

const waiter = createDeviceWaiter(createHostFs());
const host = createCommandRunner({ nodeSpawn: true });
const signal = new AbortController().signal;

async function stateOf(pid: number): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  // The state follows the command name, which is in parentheses and may hold spaces.
  return stat?.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

async function mounted(mountpoint: string): Promise<boolean> {
  const table = await readFile('/proc/self/mountinfo', 'utf8');
  return table.split('\n').some((line) => line.split(' ')[4] === mountpoint);
}

describe('a command stuck in the kernel (D state)', () => {
  let dir = '';
  let daemon: ChildProcess | undefined;
  let loop = '';
  let mountpoint = '';
  const stuck: number[] = [];
  let reads = 0;
  /** `skip=` of a 4 KiB block 16 MiB past the last one read. */
  const nextBlock = (): string => `skip=${(reads++) * 4096}`;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'berth-host-dstate-'));
    const image = path.join(dir, 'disk.raw');
    mountpoint = path.join(dir, 'export');
    // Sparse, and each read far from the others: a block the kernel read ahead earlier would be
    // answered from its page cache, without asking the stopped server.
    await writeFile(image, '');
    await truncate(image, 64 * 1024 * 1024);
    await writeFile(mountpoint, '');
    daemon = spawn(
      'qemu-storage-daemon',
      ['--blockdev', `driver=file,node-name=f,filename=${image}`, '--export', `type=fuse,id=e,node-name=f,mountpoint=${mountpoint},writable=off`],
      { stdio: 'ignore' },
    );
    await waiter.waitUntil(mountpoint, async () => ((await mounted(mountpoint)) ? true : undefined), { timeoutMs: 10_000, pollMs: 20, what: 'the FUSE export', signal });
    // No direct I/O on the loop device: a FUSE export behind a direct-io loop device corrupts writes (HOST-FACTS).
    loop = (await host.run('losetup', ['--find', '--show', '--read-only', '--direct-io=off', mountpoint])).stdout.trim();
  }, 30_000);

  afterAll(async () => {
    daemon?.kill('SIGCONT');
    // The stuck reads end once their FUSE server answers again.
    for (const pid of stuck) {
      await waiter.waitUntil(`/proc/${pid}`, async () => (processAliveSync(pid) ? undefined : true), { timeoutMs: 10_000, pollMs: 20, what: `pid ${pid} gone`, signal }).catch(() => undefined);
    }
    if (loop !== '') await host.run('losetup', ['--detach', loop], { reject: false });
    if (daemon && daemon.exitCode === null) {
      const exited = new Promise((resolve) => daemon?.once('exit', resolve));
      daemon.kill('SIGTERM');
      await exited;
    }
    if (mountpoint !== '' && (await mounted(mountpoint))) await host.run('umount', ['-l', mountpoint], { reject: false });
    await rm(dir, { recursive: true, force: true });
  }, 30_000);

  it.each([
    ['berth-spawner', false],
    ['Node spawn', true],
  ])('ends the call after SIGKILL plus a grace, leaving the command running and naming it (%s)', async (_starter, nodeSpawn) => {
    daemon?.kill('SIGSTOP');
    try {
      const runner = createCommandRunner({ nodeSpawn });
      const started = performance.now();
      const timeoutMs = 300;
      const error = await runner.run('dd', [`if=${loop}`, 'of=/dev/null', 'bs=4096', 'count=1', nextBlock(), 'iflag=direct'], { timeoutMs, abandonIfStuck: true }).then(
        () => undefined,
        (e: unknown) => e,
      );
      const elapsed = performance.now() - started;
      expect(error).toBeInstanceOf(CommandError);
      const result = (error as CommandError).result;
      expect(result).toMatchObject({ exitCode: -1, timedOut: true });
      expect(result.stuckPid).toBeTypeOf('number');
      stuck.push(result.stuckPid as number);
      expect((error as CommandError).message).toContain(`left running as pid ${result.stuckPid}`);
      // Timeout, SIGTERM's grace (2 s), then the grace after SIGKILL; not the hang's length.
      expect(elapsed).toBeGreaterThanOrEqual(timeoutMs + 2_000 + ABANDON_AFTER_KILL_MS - 50);
      expect(elapsed).toBeLessThan(timeoutMs + 2_000 + ABANDON_AFTER_KILL_MS + 3_000);
      // It really is still there, in the kernel.
      expect(await stateOf(result.stuckPid as number)).toBe('D');
    } finally {
      daemon?.kill('SIGCONT');
    }
    // Once the server answers, the read ends and nothing is left.
    const pid = stuck.at(-1) as number;
    await waiter.waitUntil(`/proc/${pid}`, async () => (processAliveSync(pid) ? undefined : true), { timeoutMs: 10_000, pollMs: 20, what: `pid ${pid} gone`, signal });
  }, 30_000);

  it('without abandonIfStuck (a command that acts) the call waits for the command to end, however long its I/O hangs', async () => {
    daemon?.kill('SIGSTOP');
    const call = createCommandRunner().run('dd', [`if=${loop}`, 'of=/dev/null', 'bs=4096', 'count=1', nextBlock(), 'iflag=direct'], { timeoutMs: 300, reject: false });
    try {
      // Well past the timeout, SIGTERM's grace and the abandon grace: still waiting.
      const early = await Promise.race([call, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 300 + 2_000 + ABANDON_AFTER_KILL_MS + 1_500))]);
      expect(early).toBeUndefined();
    } finally {
      daemon?.kill('SIGCONT');
    }
    const result = await call;
    expect(result).toMatchObject({ exitCode: -1, timedOut: true });
    expect(result.stuckPid).toBeUndefined();
  }, 30_000);

  it('an abort (the step\'s deadline) ends the call the same way', async () => {
    daemon?.kill('SIGSTOP');
    try {
      const controller = new AbortController();
      const skip = nextBlock();
      const call = createCommandRunner().run('dd', [`if=${loop}`, 'of=/dev/null', 'bs=4096', 'count=1', skip, 'iflag=direct'], { timeoutMs: 60_000, signal: controller.signal, reject: false, abandonIfStuck: true });
      // Aborted once the read is in the kernel.
      await waiter.waitUntil('/proc', async () => ((await host.run('pgrep', ['-f', `if=${loop} of=/dev/null bs=4096 count=1 ${skip}`], { reject: false })).exitCode === 0 ? true : undefined), { timeoutMs: 10_000, pollMs: 20, what: 'dd started', signal });
      controller.abort(new Error("deadline"));
      const result = await call;
      expect(result).toMatchObject({ exitCode: -1, aborted: true });
      expect(result.stuckPid).toBeTypeOf('number');
      stuck.push(result.stuckPid as number);
    } finally {
      daemon?.kill('SIGCONT');
    }
  }, 30_000);
});
