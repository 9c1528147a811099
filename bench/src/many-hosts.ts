import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { silentLogger, type BerthService } from '@berth/core';
import { createCommandRunner } from '@berth/host';
import { openBerth } from '@berth/runtime';
import { startPostgresCluster, type PostgresCluster } from '@berth/store/testing';
import { operateOverHttp, postOrThrow } from './api-operations.js';
import { onSignalCleanup } from './signal-cleanup.js';
import { printTable, runSpread, summarize } from './stats.js';

// The built binary as a user runs it (`@berth/cli`'s bin), resolved through the workspace link.
const BERTH_BIN = path.join(path.dirname(createRequire(import.meta.url).resolve('@berth/cli/package.json')), 'bin', 'run.js');
const READY_TIMEOUT_MS = 90_000;
const VOLUME_BYTES = 16 * 1024 * 1024;

/** One attach+detach cycle on volume number `worker`: its wall time in ms. */
type Cycle = (worker: number) => Promise<number>;

/** A mode's cycle times and busy wall time. */
interface Samples {
  cycles: number[];
  wallMs: number;
}

/** A long-running `berth` child (serve or agent) and what it printed on stderr. */
interface Child {
  process: ChildProcess;
  stderr(): string;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** Start `node BERTH_BIN ARGS` and wait for its stderr to match `ready` (reject if it exits first or at the deadline). */
async function startChild(args: readonly string[], env: NodeJS.ProcessEnv, ready: RegExp, children: Child[]): Promise<RegExpMatchArray> {
  const child = spawn(process.execPath, [BERTH_BIN, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let text = '';
  const entry: Child = { process: child, stderr: () => text };
  children.push(entry);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`berth ${args[0]} was not ready within ${READY_TIMEOUT_MS} ms:\n${text}`)), READY_TIMEOUT_MS);
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('utf8');
      const match = text.match(ready);
      if (match !== null) done(undefined, match);
    };
    const onExit = (): void => done(new Error(`berth ${args[0]} exited before it was ready:\n${text}`));
    const done = (error?: Error, match?: RegExpMatchArray): void => {
      clearTimeout(timer);
      child.off('exit', onExit);
      if (error) reject(error);
      else resolve(match as RegExpMatchArray);
    };
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
  });
}

/** Stop children (SIGTERM: they finish what runs), SIGKILL whatever is left after 15 s. */
async function stopChildren(children: readonly Child[]): Promise<void> {
  await Promise.all(
    children.map(
      ({ process: child }) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          const force = setTimeout(() => child.kill('SIGKILL'), 15_000);
          child.once('exit', () => {
            clearTimeout(force);
            resolve();
          });
          child.kill('SIGTERM');
        }),
    ),
  );
}

/**
 * After a failed run: detach the loop devices whose backing file is under `root` (the volumes this
 * run made, embedded and fleet alike) and remove the `/dev/berth` links that lead to them. A run
 * that finished detached everything, and this finds nothing.
 */
async function sweep(root: string): Promise<void> {
  const runner = createCommandRunner({ defaultTimeoutMs: 30_000 });
  const { stdout } = await runner.run('losetup', ['--json', '--list']);
  const listed = stdout.trim() === '' ? [] : ((JSON.parse(stdout) as { loopdevices?: Array<{ name: string; 'back-file': string | null }> }).loopdevices ?? []);
  const ours = listed.filter((d) => (d['back-file'] ?? '').startsWith(`${root}/`)).map((d) => d.name);
  if (ours.length === 0) return;
  const links = await readdir('/dev/berth').catch(() => [] as string[]);
  for (const link of links) {
    const target = await readlink(path.join('/dev/berth', link)).catch(() => '');
    if (ours.includes(target)) await rm(path.join('/dev/berth', link), { force: true });
  }
  for (const device of ours) await runner.run('losetup', ['-d', device]).catch(() => undefined);
}

/** Run `cycles` cycles over `concurrency` workers (each on its own volume) into `samples`. */
async function drive(samples: Samples, concurrency: number, cycles: number, cycle: Cycle): Promise<void> {
  samples.wallMs += await runSpread(concurrency, cycles, async (worker) => {
    samples.cycles.push(await cycle(worker));
  });
}

/** Embedded: the service in this process on SQLite, the local host's loop devices. */
function embeddedCycle(berth: BerthService): Cycle {
  return async (worker) => {
    const t = performance.now();
    await berth.attach({ volume: `bench-${worker}` });
    await berth.detach({ volume: `bench-${worker}` });
    return performance.now() - t;
  };
}

/**
 * The fleet: workers 0..3 take every pairing of replica and host (w div 2 mod 2, w mod 2), so half
 * the host steps are enqueued by the replica the host's agent does not talk to (woken by NOTIFY).
 */
function fleetCycle(urls: readonly string[], token: string): Cycle {
  return async (worker) => {
    const url = urls[Math.floor(worker / 2) % urls.length] ?? '';
    const t = performance.now();
    await operateOverHttp(url, token, `bench-${worker}`, 'attach', { server: `web-h${(worker % 2) + 1}` });
    await operateOverHttp(url, token, `bench-${worker}`, 'detach', {});
    return performance.now() - t;
  };
}

/**
 * Attach+detach cycles through a fleet — PostgreSQL, 2 `berth serve` replicas, 2 `berth agent`s
 * (hosts h1, h2 on this machine, loop transport) — beside the embedded default (SQLite, in-process)
 * at the same concurrency, in alternating rounds so the machine's load falls on both alike.
 * Prints cycles/s, the ratio to embedded and cycle p50/p99.
 */
export async function benchManyHosts(cycles = 40, concurrency = 4, rounds = 4): Promise<void> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-hosts-'));
  const children: Child[] = [];
  let cluster: PostgresCluster | undefined;
  let unregister = (): void => undefined;
  let embedded: BerthService | undefined;
  try {
    cluster = await startPostgresCluster();
    const started = cluster;
    unregister = onSignalCleanup(async () => {
      await stopChildren(children);
      await started.stop();
      await sweep(root);
      await rm(root, { recursive: true, force: true });
    });
    const storeUrl = await cluster.createDatabase();
    const adminToken = randomBytes(24).toString('hex');
    const hosts = ['h1', 'h2'];
    const agentTokens = new Map(hosts.map((h) => [h, randomBytes(24).toString('hex')]));
    const controllerDir = path.join(root, 'controller');
    await mkdir(controllerDir, { mode: 0o700 });
    const tokens = [
      { name: 'admin', sha256: sha256(adminToken), role: 'admin' },
      ...hosts.map((h) => ({ name: `agent-${h}`, sha256: sha256(agentTokens.get(h) ?? ''), role: 'agent', host: h })),
    ];
    await writeFile(path.join(controllerDir, 'config.json'), JSON.stringify({ api: { listen: '127.0.0.1:0', tokens } }));
    const baseEnv: NodeJS.ProcessEnv = { ...process.env, HOME: root, NO_COLOR: '1' };
    for (const name of ['BERTH_API_URL', 'BERTH_CONFIG', 'BERTH_STORE_URL', 'BERTH_TOKEN', 'BERTH_FAULTS']) delete baseEnv[name];

    const urls: string[] = [];
    for (let i = 0; i < 2; i++) {
      const [, url] = await startChild(['serve', '--store', storeUrl], { ...baseEnv, BERTH_DATA_DIR: controllerDir }, /berth API listening on (\S+) /, children);
      urls.push(url ?? '');
    }
    for (const [i, host] of hosts.entries()) {
      const dataDir = path.join(root, `agent-${host}`);
      await mkdir(dataDir, { mode: 0o700 });
      const tokenFile = path.join(dataDir, 'agent.token');
      await writeFile(tokenFile, agentTokens.get(host) ?? '', { mode: 0o600 });
      await chmod(tokenFile, 0o600);
      // Each agent talks to its own replica: the work of a host enqueued by the other one reaches it by NOTIFY.
      await startChild(['agent', '--api', urls[i] ?? '', '--token-file', tokenFile], { ...baseEnv, BERTH_DATA_DIR: dataDir }, /registered host \S+ with the API/, children);
    }
    for (const host of hosts) await postOrThrow(urls[0] ?? '', adminToken, '/v1/servers', { name: `web-${host}`, host }, 201);

    embedded = await openBerth({ dataDir: path.join(root, 'embedded'), env: {}, logger: silentLogger });
    for (let i = 0; i < concurrency; i++) {
      await embedded.createVolume({ name: `bench-${i}`, sizeBytes: VOLUME_BYTES });
      await postOrThrow(urls[i % 2] ?? '', adminToken, '/v1/volumes', { name: `bench-${i}`, sizeBytes: VOLUME_BYTES }, 201);
    }

    const modes = [
      { name: 'embedded (SQLite, in-process)', cycle: embeddedCycle(embedded) },
      { name: '2 replicas + 2 agents (PostgreSQL, HTTP)', cycle: fleetCycle(urls, adminToken) },
    ];
    const samples: Samples[] = modes.map(() => ({ cycles: [], wallMs: 0 }));
    // One warm-up cycle per worker and mode: first connections and module loading are not the steady state.
    for (const mode of modes) await drive({ cycles: [], wallMs: 0 }, concurrency, concurrency, mode.cycle);
    const perRound = Math.max(concurrency, Math.round(cycles / rounds));
    for (let round = 0; round < rounds; round++) {
      for (const [i, mode] of modes.entries()) await drive(samples[i]!, concurrency, perRound, mode.cycle);
    }
    const baseRate = samples[0]!.cycles.length / samples[0]!.wallMs;
    printTable(
      `many-hosts: attach+detach cycles, loop transport, ${perRound * rounds} cycles per mode in ${rounds} alternating rounds, ${concurrency} concurrent clients (ms)`,
      ['mode', 'cycles/s', '× embedded', 'cycle p50', 'cycle p99'],
      modes.map((mode, i) => {
        const s = samples[i]!;
        const c = summarize(s.cycles);
        return [mode.name, (s.cycles.length / s.wallMs) * 1000, s.cycles.length / s.wallMs / baseRate, c.p50, c.p99];
      }),
    );
  } finally {
    await stopChildren(children);
    await embedded?.close();
    await cluster?.stop();
    unregister();
    await sweep(root);
    await rm(root, { recursive: true, force: true });
  }
}
