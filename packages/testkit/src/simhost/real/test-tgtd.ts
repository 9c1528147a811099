/**
 * A private tgtd for the real-backed tests: on 127.0.0.1 at a free high port, with its own control
 * port (`-C N`), started as a child of the test process and stopped in `stop()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { open, readFile, rm } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import path from 'node:path';
import { createCommandRunner, createDeviceWaiter, createHostFs, type CommandResult } from '@berth/host';

/** A running test tgtd. */
export interface TestTgtd {
  /** `127.0.0.1:<port>`. */
  portal: string;
  port: number;
  controlPort: number;
  /** Run `tgtadm -C N --lld iscsi ...args`; throws on a non-zero exit. */
  admin(...args: string[]): Promise<CommandResult>;
  /** Same, returning the result whatever the exit code (tgtadm's errors are rc 22). */
  adminResult(...args: string[]): Promise<CommandResult>;
  /** Listen on another address at the same port (`127.0.0.2`); returns its portal `addr:port`. */
  addPortal(address: string): Promise<string>;
  stop(): Promise<void>;
}

const runner = createCommandRunner({ defaultTimeoutMs: 10_000 });

/** A TCP port nothing listens on right now. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Start tgtd with its log in `dir`; ready when its portal accepts connections and tgtadm answers. */
export async function startTgtd(dir: string): Promise<TestTgtd> {
  const waiter = createDeviceWaiter(createHostFs('/'));
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    // tgtd's control socket is /var/run/tgtd/socket.N: pick an N other test runs are unlikely to use.
    const controlPort = 10_000 + Math.floor(Math.random() * 22_000); // -C takes a short (<= 32767)
    const logPath = path.join(dir, `tgtd-${controlPort}.log`);
    const log = await open(logPath, 'a');
    let child: ChildProcess;
    try {
      child = spawn('tgtd', ['-f', '-C', String(controlPort), '--iscsi', `portal=127.0.0.1:${port}`], { stdio: ['ignore', log.fd, log.fd] });
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
    try {
      await waiter.waitUntil(
        '/run/tgtd',
        async () => {
          if (exited) throw new Error('tgtd exited during start-up');
          if (!(await canConnect('127.0.0.1', port))) return undefined;
          return (await adminResult('--op', 'show', '--mode', 'sys')).exitCode === 0 ? true : undefined;
        },
        { timeoutMs: 10_000, what: `tgtd on 127.0.0.1:${port} (-C ${controlPort})` },
      );
    } catch (error) {
      child.kill('SIGKILL');
      await exit;
      if (attempt < 3) continue;
      const log = await readFile(logPath, 'utf8').catch(() => '');
      throw new Error(`${error instanceof Error ? error.message : String(error)}; tgtd log: ${log.trim().split('\n').slice(-5).join(' | ')}`, { cause: error });
    }
    let stopped: Promise<void> | undefined;
    const admin = async (...args: string[]): Promise<CommandResult> => {
      const result = await adminResult(...args);
      if (result.exitCode !== 0) throw new Error(`${result.command}: exit ${result.exitCode}: ${result.stderr.trim()}`);
      return result;
    };
    return {
      portal: `127.0.0.1:${port}`,
      port,
      controlPort,
      adminResult,
      admin,
      addPortal: async (address) => {
        await admin('--op', 'new', '--mode', 'portal', '--param', `portal=${address}:${port}`);
        await waiter.waitUntil('/run/tgtd', async () => ((await canConnect(address, port)) ? true : undefined), {
          timeoutMs: 10_000,
          what: `tgtd on ${address}:${port}`,
        });
        return `${address}:${port}`;
      },
      stop: () =>
        (stopped ??= (async () => {
          if (exited) return;
          // tgtd ignores SIGTERM and refuses `delete --mode system` (rc 22) while targets exist.
          const show = await adminResult('--op', 'show', '--mode', 'target');
          for (const match of show.stdout.matchAll(/^Target (\d+): /gm)) {
            await adminResult('--op', 'delete', '--mode', 'target', '--tid', match[1] ?? '', '--force');
          }
          await adminResult('--op', 'delete', '--mode', 'system');
          const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
          await exit;
          clearTimeout(timer);
          // tgtd leaves its control socket and lock file behind.
          await rm(`/run/tgtd/socket.${controlPort}`, { force: true });
          await rm(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
        })()),
    };
  }
}
