import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseTargetList, stopManagedTgtd, type TgtTarget } from '@berth/backend-tgt';
import { silentLogger, type BerthService, type Logger } from '@berth/core';
import { openBerth } from './open-berth.js';
import { simulatedHostPaths, stopSimulatedHost } from './simulate.js';

// A private berth for iSCSI tests on the simulated host in real-backed mode: its own data dir,
// its own tgtd (a free control port and TCP port), and the detached simulated host under the data
// dir, as `berth --simulate` runs it. Everything it starts is stopped by `cleanup`.

/** What a test sees of one such berth. */
export interface SimIscsiBerth {
  dataDir: string;
  controlPort: number;
  portal: string;
  /** The simulated host's root and the real-backed disks' work dir. */
  root: string;
  workDir: string;
  /** The environment a child `berth` process needs to use this berth (simulate mode). */
  childEnv: Record<string, string>;
  open(options?: { logger?: Logger; env?: Record<string, string>; recover?: boolean }): Promise<BerthService>;
  /** tgtd's targets (with their ACLs and sessions) on this berth's control port. */
  targets(): TgtTarget[];
  /** Run the simulated host's iscsiadm (as an operator would on a real host). */
  iscsiadm(args: readonly string[]): { exitCode: number; stdout: string; stderr: string };
  /** open-iscsi node records left in the simulated host's database. */
  nodeRecords(): string[];
  /** Loop devices, FUSE mounts and qemu-storage-daemon processes of the real-backed disks. */
  leftovers(): { loops: string[]; mounts: string[]; qsd: string[] };
  cleanup(): Promise<void>;
}

/** A TCP port nothing listens on at 127.0.0.1. */
export async function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** A tgtd control port no tgtd answers on (tgtadm exits 107 when nobody is there). */
export function freeControlPort(): number {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const candidate = 20_000 + Math.floor(Math.random() * 40_000);
    const probe = spawnSync('tgtadm', ['-C', String(candidate), '--lld', 'iscsi', '--op', 'show', '--mode', 'sys'], { timeout: 5_000 });
    if (probe.status === 107) return candidate;
  }
  throw new Error('no free tgtd control port');
}

/** Make a private simulated-iSCSI berth; call `cleanup` in afterAll. */
export async function createSimIscsiBerth(
  options: { backendOptions?: Record<string, unknown>; /** one portal per address, same port (default 127.0.0.1) */ portalHosts?: string[] } = {},
): Promise<SimIscsiBerth> {
  const dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-sim-')));
  const port = await freeTcpPort();
  const controlPort = freeControlPort();
  const portals = (options.portalHosts ?? ['127.0.0.1']).map((host) => `${host}:${port}`);
  const portal = portals[0]!;
  writeFileSync(
    path.join(dataDir, 'config.json'),
    JSON.stringify({ defaultBackend: 'tgt', pluginOptions: { '@berth/backend-tgt': { portals, controlPort, ...options.backendOptions } } }),
  );
  const { root, workDir } = simulatedHostPaths(dataDir);
  const opened: BerthService[] = [];
  return {
    dataDir,
    controlPort,
    portal,
    root,
    workDir,
    childEnv: { BERTH_SIMULATE: '1' },
    async open(openOptions = {}) {
      const service = await openBerth({
        dataDir,
        env: { ...openOptions.env },
        logger: openOptions.logger ?? silentLogger,
        simulate: true,
        ...(openOptions.recover === undefined ? {} : { recover: openOptions.recover }),
      });
      opened.push(service);
      return service;
    },
    targets() {
      const out = execFileSync('tgtadm', ['-C', String(controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'], { encoding: 'utf8' });
      return parseTargetList(out);
    },
    iscsiadm(args) {
      const result = spawnSync(path.join(root, 'bin', 'iscsiadm'), [...args], { encoding: 'utf8', timeout: 30_000 });
      return { exitCode: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
    },
    nodeRecords() {
      const nodes = path.join(root, 'etc', 'iscsi', 'nodes');
      return existsSync(nodes) ? readdirSync(nodes) : [];
    },
    leftovers() {
      const out = execFileSync('losetup', ['--json', '--list'], { encoding: 'utf8' }).trim();
      const loops = out
        ? (JSON.parse(out) as { loopdevices: Array<{ name: string; 'back-file'?: string | null }> }).loopdevices
            .filter((d) => (d['back-file'] ?? '').startsWith(workDir))
            .map((d) => d.name)
        : [];
      const mounts = readFileSync('/proc/mounts', 'utf8')
        .split('\n')
        .filter((l) => l.includes(workDir));
      const pgrep = spawnSync('pgrep', ['-f', `qemu-storage-daemon.*${workDir}`], { encoding: 'utf8' });
      const qsd = pgrep.stdout.trim().split('\n').filter(Boolean);
      return { loops, mounts, qsd };
    },
    async cleanup() {
      for (const service of opened) await service.close().catch(() => undefined);
      await stopSimulatedHost(dataDir).catch(() => undefined);
      await stopManagedTgtd(dataDir, controlPort).catch(() => undefined);
      // tgtd leaves its control socket behind when it exits; this control port was this berth's own.
      if (spawnSync('tgtadm', ['-C', String(controlPort), '--op', 'show', '--mode', 'sys']).status === 107) {
        rmSync(`/run/tgtd/socket.${controlPort}`, { force: true });
        rmSync(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
      }
      const { sweepStrays } = await import('@berth/simhost/real');
      await sweepStrays(workDir).catch(() => undefined);
      // Stable links made for this berth's volumes point into its simulated host.
      if (existsSync('/dev/berth')) {
        for (const name of readdirSync('/dev/berth')) {
          const link = path.join('/dev/berth', name);
          try {
            if (lstatSync(link).isSymbolicLink() && readlinkSync(link).startsWith(dataDir + path.sep)) rmSync(link, { force: true });
          } catch {
            // gone meanwhile
          }
        }
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
