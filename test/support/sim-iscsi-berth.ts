import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseTargetList, stopManagedTgtd, type TgtTarget } from '@berth/backend-tgt';
import { silentLogger, type BerthService, type Logger } from '@berth/core';
import { openBerth, simulatedHostPaths, stopSimulatedHost } from '@berth/runtime';
import { loopDevicesUnder } from './loop-devices.js';
import { freeControlPort, freePort } from './ports.js';

// A private berth for iSCSI tests on the simulated host in real-backed mode: its own data dir,
// its own tgtd (a free control port and TCP port), and the detached simulated host under the data
// dir, as `berth --simulate` runs it. Everything it starts is stopped by `cleanup`.

/**
 * The multipath transport waits for every path: its default straggler grace (derived from the
 * first logins' times) gives a slow path up by design, and on a loaded machine a healthy path can
 * be that slow — these tests check that every portal has its path, not the grace.
 */
const EVERY_PATH = { stragglerGraceMs: 30_000 } as const;

/** What a test sees of one such berth. */
export interface SimIscsiBerth {
  dataDir: string;
  controlPort: number;
  portal: string;
  /** Every portal of its target (`<host>:<port>`, one per portal host). */
  portals: string[];
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
  /** open-iscsi node records left in the simulated host's database: `<target iqn>/<portal record>`, one per portal. */
  nodeRecords(): string[];
  /** Loop devices, FUSE mounts and qemu-storage-daemon processes of the real-backed disks. */
  leftovers(): { loops: string[]; mounts: string[]; qsd: string[] };
  cleanup(): Promise<void>;
}

/** Make a private simulated-iSCSI berth; call `cleanup` in afterAll. */
export async function createSimIscsiBerth(
  options: {
    backendOptions?: Record<string, unknown>;
    /** one portal per address, same port (default 127.0.0.1) */
    portalHosts?: string[];
    /** The config's `plugins` (a guest consumer, for attaches into a VM). */
    plugins?: unknown[];
  } = {},
): Promise<SimIscsiBerth> {
  const dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-sim-')));
  const hosts = options.portalHosts ?? ['127.0.0.1'];
  const port = await freePort(hosts);
  const controlPort = await freeControlPort();
  const portals = hosts.map((host) => `${host}:${port}`);
  const portal = portals[0]!;
  writeFileSync(
    path.join(dataDir, 'config.json'),
    JSON.stringify({
      defaultBackend: 'tgt',
      ...(options.plugins ? { plugins: options.plugins } : {}),
      pluginOptions: { '@berth/backend-tgt': { portals, controlPort, ...options.backendOptions }, '@berth/driver-iscsi-multipath': EVERY_PATH },
    }),
  );
  const { root, workDir } = simulatedHostPaths(dataDir);
  const opened: BerthService[] = [];
  return {
    dataDir,
    controlPort,
    portal,
    portals,
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
      if (!existsSync(nodes)) return [];
      return readdirSync(nodes).flatMap((iqn) => readdirSync(path.join(nodes, iqn)).map((record) => `${iqn}/${record}`));
    },
    leftovers() {
      const loops = loopDevicesUnder(workDir);
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
