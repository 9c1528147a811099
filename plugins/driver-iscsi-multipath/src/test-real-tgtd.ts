/**
 * A private tgtd for the real-backed tests: listening on one free port on several loopback
 * addresses (127.0.0.1, 127.0.0.2, …: one portal each), with its own control port (`-C N`),
 * started as a child of the test process and stopped in `stop()`.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import path from 'node:path';
import { createCommandRunner, createDeviceWaiter, createHostFs, type CommandResult } from '@berth/host';

/** A running test tgtd. */
export interface RealTgtd {
  /** `127.0.0.X:<port>`, one per address. */
  portals: string[];
  /** Run `tgtadm -C N --lld iscsi ...args`; throws on a non-zero exit. */
  admin(...args: string[]): Promise<CommandResult>;
  stop(): Promise<void>;
}

const runner = createCommandRunner({ defaultTimeoutMs: 10_000 });

/** Whether the real-backed tests can run here: root, tgt, libiscsi-bin, qemu-storage-daemon, FUSE. */
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

async function freePort(hosts: readonly string[]): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.once('error', reject);
      server.listen(0, hosts[0], () => {
        const address = server.address();
        server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
      });
    });
    const taken = await Promise.all(hosts.slice(1).map((h) => canConnect(h, port)));
    if (!taken.some(Boolean)) return port;
  }
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

/** Start tgtd on `hosts` (one portal each, same port), its log in `dir`. */
export async function startRealTgtd(dir: string, hosts: readonly string[] = ['127.0.0.1', '127.0.0.2']): Promise<RealTgtd> {
  const waiter = createDeviceWaiter(createHostFs('/'));
  const port = await freePort(hosts);
  const controlPort = 10_000 + Math.floor(Math.random() * 22_000);
  const log = await open(path.join(dir, `tgtd-${controlPort}.log`), 'a');
  let child: ChildProcess;
  try {
    child = spawn('tgtd', ['-f', '-C', String(controlPort), '--iscsi', `portal=${hosts[0]}:${port}`], { stdio: ['ignore', log.fd, log.fd] });
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
  const adminResult = (...args: string[]): Promise<CommandResult> => runner.run('tgtadm', ['-C', String(controlPort), '--lld', 'iscsi', ...args], { reject: false });
  const admin = async (...args: string[]): Promise<CommandResult> => {
    const result = await adminResult(...args);
    if (result.exitCode !== 0) throw new Error(`${result.command}: exit ${result.exitCode}: ${result.stderr.trim()}`);
    return result;
  };
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (!exited) {
        // tgtd ignores SIGTERM and refuses `delete --mode system` while targets exist.
        const show = await adminResult('--op', 'show', '--mode', 'target');
        for (const match of show.stdout.matchAll(/^Target (\d+): /gm)) {
          await adminResult('--op', 'delete', '--mode', 'target', '--tid', match[1] ?? '', '--force');
        }
        await adminResult('--op', 'delete', '--mode', 'system');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exit;
        clearTimeout(timer);
      }
      await rm(`/run/tgtd/socket.${controlPort}`, { force: true });
      await rm(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
    })());
  try {
    await waiter.waitUntil(
      '/run/tgtd',
      async () => {
        if (exited) throw new Error('tgtd exited during start-up');
        if (!(await canConnect(hosts[0]!, port))) return undefined;
        return (await adminResult('--op', 'show', '--mode', 'sys')).exitCode === 0 ? true : undefined;
      },
      { timeoutMs: 10_000, what: `tgtd on ${hosts[0]}:${port}` },
    );
    for (const host of hosts.slice(1)) await admin('--op', 'new', '--mode', 'portal', '--param', `portal=${host}:${port}`);
  } catch (error) {
    await stop();
    throw error;
  }
  return { portals: hosts.map((h) => `${h}:${port}`), admin, stop };
}
