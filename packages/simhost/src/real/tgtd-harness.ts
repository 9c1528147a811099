/**
 * A private tgtd for real-backed tests: one free port on one or more loopback addresses
 * (127.0.0.1, 127.0.0.2, …: one portal each), its own control port (`-C N`), started as a child
 * of the test process and stopped in `stop()`.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { acceptsConnection, createCommandRunner, createDeviceWaiter, createHostFs, freeTcpPort, type CommandResult } from '@berth/host';

/** A running test tgtd. */
export interface TestTgtd {
  /** `<first address>:<port>`. */
  portal: string;
  /** `<address>:<port>`, one per address it was started on. */
  portals: string[];
  port: number;
  controlPort: number;
  /** Run `tgtadm -C N --lld iscsi ...args`; throws on a non-zero exit. */
  admin(...args: string[]): Promise<CommandResult>;
  /** Same, returning the result whatever the exit code (tgtadm's errors are rc 22). */
  adminResult(...args: string[]): Promise<CommandResult>;
  /** Listen on another address at the same port (`127.0.0.2`); returns its portal `addr:port`. */
  addPortal(address: string): Promise<string>;
  /**
   * Send tgtd a signal, as a fault: `SIGKILL` (resolves once it exited; `stop` then only removes
   * its socket), `SIGSTOP` (it stops answering; connections still complete in the kernel's
   * backlog) or `SIGCONT`.
   */
  signal(name: 'SIGKILL' | 'SIGSTOP' | 'SIGCONT'): Promise<void>;
  /** Remove every target, stop tgtd and remove its control socket (idempotent). */
  stop(): Promise<void>;
}

/** Options of `startTgtd`. */
export interface StartTgtdOptions {
  /** The addresses to listen on, one portal each at the same port (default `['127.0.0.1']`). */
  addresses?: readonly string[];
}

const runner = createCommandRunner({ defaultTimeoutMs: 10_000 });

/** Whether real-backed tests can run here: root, tgt, libiscsi-bin, qemu-storage-daemon, losetup, mknod and FUSE. */
export function realBackedAvailable(): boolean {
  const have = (tool: string): boolean => {
    try {
      execFileSync('which', [tool], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  };
  return process.getuid?.() === 0 && ['tgtd', 'tgtadm', 'qemu-storage-daemon', 'losetup', 'iscsi-inq', 'iscsi-ls', 'mknod'].every(have) && existsSync('/dev/fuse');
}

/** A TCP port nothing listens on right now on any of `hosts`. */
export function freePort(hosts: readonly string[] = ['127.0.0.1']): Promise<number> {
  return freeTcpPort(hosts);
}

/** A tgtd control port no tgtd answers on (tgtadm exits 107); random in tgtd's short range so parallel runs do not collide. */
export async function freeControlPort(): Promise<number> {
  const runner = createCommandRunner();
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const candidate = 10_000 + Math.floor(Math.random() * 22_000); // -C takes a short (<= 32767)
    const probe = await runner.run('tgtadm', ['-C', String(candidate), '--lld', 'iscsi', '--op', 'show', '--mode', 'sys'], { reject: false, timeoutMs: 5_000 });
    if (probe.exitCode === 107) return candidate;
  }
  throw new Error('no free tgtd control port');
}

/** Start tgtd with its log in `dir`; ready when every portal accepts connections and tgtadm answers. */
export async function startTgtd(dir: string, options: StartTgtdOptions = {}): Promise<TestTgtd> {
  const addresses = options.addresses ?? ['127.0.0.1'];
  const [first, ...others] = addresses;
  if (first === undefined) throw new RangeError('startTgtd needs at least one address');
  const waiter = createDeviceWaiter(createHostFs('/'));
  for (let attempt = 0; ; attempt++) {
    const port = await freePort(addresses);
    // tgtd's control socket is /var/run/tgtd/socket.N: pick an N other test runs are unlikely to use.
    const controlPort = 10_000 + Math.floor(Math.random() * 22_000); // -C takes a short (<= 32767)
    const logPath = path.join(dir, `tgtd-${controlPort}.log`);
    const log = await open(logPath, 'a');
    let child: ChildProcess;
    try {
      child = spawn('tgtd', ['-f', '-C', String(controlPort), '--iscsi', `portal=${first}:${port}`], { stdio: ['ignore', log.fd, log.fd] });
    } finally {
      await log.close();
    }
    let exited = false;
    const exit = new Promise<void>((resolve) => {
      child.once('exit', () => {
        exited = true;
        resolve();
      });
      child.once('error', () => {
        exited = true;
        resolve();
      });
    });
    const adminResult = (...args: string[]): Promise<CommandResult> =>
      runner.run('tgtadm', ['-C', String(controlPort), '--lld', 'iscsi', ...args], { reject: false });
    const admin = async (...args: string[]): Promise<CommandResult> => {
      const result = await adminResult(...args);
      if (result.exitCode !== 0) throw new Error(`${result.command}: exit ${result.exitCode}: ${result.stderr.trim()}`);
      return result;
    };
    const addPortal = async (address: string): Promise<string> => {
      await admin('--op', 'new', '--mode', 'portal', '--param', `portal=${address}:${port}`);
      await waiter.waitUntil('/run/tgtd', async () => ((await acceptsConnection(address, port)) ? true : undefined), {
        timeoutMs: 10_000,
        what: `tgtd on ${address}:${port}`,
      });
      return `${address}:${port}`;
    };
    const signal = async (name: 'SIGKILL' | 'SIGSTOP' | 'SIGCONT'): Promise<void> => {
      if (exited) return;
      child.kill(name);
      if (name === 'SIGKILL') await exit;
    };
    let stopped: Promise<void> | undefined;
    const stop = (): Promise<void> =>
      (stopped ??= (async () => {
        // A stopped tgtd answers nothing, tgtadm included.
        if (!exited) child.kill('SIGCONT');
        if (!exited) {
          // tgtd ignores SIGTERM and refuses `delete --mode system` (rc 22) while targets exist.
          const show = await adminResult('--op', 'show', '--mode', 'target');
          for (const match of show.stdout.matchAll(/^Target (\d+): /gm)) {
            await adminResult('--op', 'delete', '--mode', 'target', '--tid', match[1] ?? '', '--force');
          }
          await adminResult('--op', 'delete', '--mode', 'system');
          const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
          await exit;
          clearTimeout(timer);
        }
        // tgtd leaves its control socket and lock file behind.
        await rm(`/run/tgtd/socket.${controlPort}`, { force: true });
        await rm(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
      })());
    try {
      await waiter.waitUntil(
        '/run/tgtd',
        async () => {
          if (exited) throw new Error('tgtd exited during start-up');
          if (!(await acceptsConnection(first, port))) return undefined;
          return (await adminResult('--op', 'show', '--mode', 'sys')).exitCode === 0 ? true : undefined;
        },
        { timeoutMs: 10_000, what: `tgtd on ${first}:${port} (-C ${controlPort})` },
      );
    } catch (error) {
      child.kill('SIGKILL');
      await exit;
      await rm(`/run/tgtd/socket.${controlPort}`, { force: true });
      await rm(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
      if (attempt < 3) continue;
      const text = await readFile(logPath, 'utf8').catch(() => '');
      throw new Error(`${error instanceof Error ? error.message : String(error)}; tgtd log: ${text.trim().split('\n').slice(-5).join(' | ')}`, { cause: error });
    }
    try {
      for (const address of others) await addPortal(address);
    } catch (error) {
      await stop();
      throw error;
    }
    return { portal: `${first}:${port}`, portals: addresses.map((a) => `${a}:${port}`), port, controlPort, admin, adminResult, addPortal, signal, stop };
  }
}
