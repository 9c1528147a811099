// A fleet on one machine for the many-hosts suites: a throwaway PostgreSQL cluster on 127.0.0.1,
// `berth serve` replicas listening on the bridge address of support/netns.ts, and one `berth agent`
// per host inside that host's network namespace. The agents reach the replicas and nothing else:
// PostgreSQL listens on 127.0.0.1, which inside a namespace is the namespace's own loopback — the
// "agents hold no database credentials" rule is physical here, not a convention.
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll } from 'vitest';
import { startPostgresCluster, type PostgresCluster } from '@berth/store/testing';
import { BERTH_BIN, inheritedEnv, makeSandbox, type BerthRun, type BerthSandbox } from './berth-cli.js';
import { removeBerthLinks } from './loop-devices.js';
import { makeTestHosts, sweepOrphanedTestHosts, type TestHost, type TestHosts } from './netns.js';
import { sweepOrphanedSandboxes } from './orphans.js';

/** Options of `startManyHosts`. */
export interface ManyHostsOptions {
  /** Hosts (network namespaces), each with its agent: h1, h2, ... */
  hosts: number;
  /** `berth serve` processes on the one database (default 1). */
  replicas?: number;
  /** Extra config for the replicas (merged over the tokens and listen address). */
  config?: Record<string, unknown>;
  /** Extra environment of the replicas (e.g. BERTH_FAULTS). */
  replicaEnv?: Record<string, string>;
  /** Extra environment of one replica, by index, over `replicaEnv` (a fault armed in one replica only). */
  replicaEnvs?: ReadonlyArray<Record<string, string> | undefined>;
  /** The agents' `--api`: replica 0's URL (default), every replica's, comma-separated (`all`), or replica N's only. */
  agentApi?: 'first' | 'all' | number;
}

/** One `berth serve`. */
export interface Replica {
  url: string;
  child: ResultPromise;
  stderr(): string;
}

/** One host's `berth agent`. */
export interface AgentProcess {
  host: TestHost;
  child: ResultPromise;
  dataDir: string;
  tokenFile: string;
  stderr(): string;
}

/** What `startManyHosts` runs, and how to drive and remove it. */
export interface ManyHosts {
  cluster: PostgresCluster;
  /** The database URL (the replicas' `--store`). */
  storeUrl: string;
  /** The database name in the cluster (for `cluster.query`). */
  database: string;
  net: TestHosts;
  sandbox: BerthSandbox;
  replicas: Replica[];
  agents: Map<string, AgentProcess>;
  /** The admin token (what the suites' `berth --api` clients use). */
  adminToken: string;
  /** Each host's agent token, by host name. */
  agentTokens: Map<string, string>;
  /** `berth --api <replica> ARGS` as admin; never throws on a non-zero exit. */
  berth(args: readonly string[], replica?: number): Promise<BerthRun>;
  /** `berth --api <replica> ARGS --json` as admin: exit 0 expected, output parsed. */
  json<T>(args: readonly string[], replica?: number): Promise<T>;
  /**
   * SIGKILL replica `index` (when it still runs) and start it again on the same address, with
   * `env` over the replicas' environment; resolves once it listens. Agents keep their URL.
   */
  restartReplica(index: number, env?: Record<string, string>): Promise<Replica>;
  /** Start `host`'s agent (again, talking to replica 0, or to all with `agentApi: 'all'`) and wait for its registration line. */
  startAgent(name: string, env?: Record<string, string>): Promise<AgentProcess>;
  /** Send `signal` to `host`'s agent and wait for it to exit; resolves to its exit code. */
  stopAgent(name: string, signal?: NodeJS.Signals): Promise<number | undefined>;
  /**
   * SIGSTOP replica `index` (a long GC pause, a VM stall): it stays frozen, its sockets open,
   * until `thawReplica`; `cleanup` thaws whatever is still frozen before it stops anything.
   */
  freezeReplica(index: number): void;
  /** SIGCONT replica `index`. */
  thawReplica(index: number): void;
  /** SIGSTOP `host`'s agent (see `freezeReplica`). */
  freezeAgent(name: string): void;
  /** SIGCONT `host`'s agent. */
  thawAgent(name: string): void;
  /** Stop everything, sweep loop devices and links this run made, remove the namespaces, stop PostgreSQL. */
  cleanup(): Promise<void>;
}

const START_TIMEOUT_MS = 90_000;

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** Resolve when `read()` matches `pattern` (checked on each chunk `child` writes), or reject at the deadline or on exit. */
function waitForOutput(child: ResultPromise, read: () => string, pattern: RegExp, what: string): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      const match = read().match(pattern);
      if (match === null) return false;
      finish();
      resolve(match);
      return true;
    };
    const onExit = (): void => {
      if (check()) return;
      finish();
      reject(new Error(`${what} exited before it was ready:\n${read()}`));
    };
    const timer = setTimeout(() => {
      finish();
      reject(new Error(`${what} was not ready within ${START_TIMEOUT_MS} ms:\n${read()}`));
    }, START_TIMEOUT_MS);
    const finish = (): void => {
      clearTimeout(timer);
      child.stderr?.off('data', check);
      child.off('exit', onExit);
    };
    child.stderr?.on('data', check);
    child.once('exit', onExit);
    check();
  });
}

/** Collect a child's stderr as text. */
function captureStderr(child: ResultPromise): () => string {
  let text = '';
  child.stderr?.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
  return () => text;
}

/**
 * Start a fleet: PostgreSQL, `replicas` × `berth serve --store … --listen <bridge>:0` sharing one
 * data dir (the file backend's volumes and the tgt backend's state live there: replicas of one
 * fleet share it, see the root README), and an agent per host in its namespace with its own data
 * dir and token file.
 */
export async function startManyHosts(options: ManyHostsOptions): Promise<ManyHosts> {
  await sweepOrphanedSandboxes();
  await sweepOrphanedTestHosts();
  const cleanups: Array<() => Promise<void>> = [];
  const cleanup = async (): Promise<void> => {
    for (const step of cleanups.splice(0).reverse()) await step().catch(() => undefined);
  };
  try {
    const cluster = await startPostgresCluster();
    cleanups.push(() => cluster.stop());
    const storeUrl = await cluster.createDatabase();
    const database = new URL(storeUrl).pathname.slice(1);
    const net = await makeTestHosts(options.hosts);
    cleanups.push(() => net.cleanup());
    const sandbox = await makeSandbox();
    // Before the namespaces go: the agents (their children) first, then the sandbox's devices and links.
    cleanups.push(() => sandbox.remove());

    const adminToken = randomBytes(24).toString('hex');
    const agentTokens = new Map(net.hosts.map((h) => [h.name, randomBytes(24).toString('hex')]));
    const tokens = [
      { name: 'admin', sha256: sha256(adminToken), role: 'admin' },
      ...net.hosts.map((h) => ({ name: `agent-${h.name}`, sha256: sha256(agentTokens.get(h.name) ?? ''), role: 'agent', host: h.name })),
    ];
    const config = { ...options.config, api: { listen: `${net.gateway}:0`, tokens } };
    await mkdir(sandbox.dataDir, { recursive: true, mode: 0o700 });
    await writeFile(join(sandbox.dataDir, 'config.json'), JSON.stringify(config, null, 2));

    const replicas: Replica[] = [];
    const children = new Set<ResultPromise>();
    // Processes SIGSTOPped by a test: thawed first, whatever happens, so nothing waits on a stopped one.
    const frozen = new Set<number>();
    const sendSignal = (child: ResultPromise, what: string, sig: 'SIGSTOP' | 'SIGCONT'): void => {
      const pid = child.pid;
      if (pid === undefined || child.exitCode !== null || child.signalCode !== null) throw new Error(`${what} does not run; cannot send ${sig}`);
      process.kill(pid, sig);
      if (sig === 'SIGSTOP') frozen.add(pid);
      else frozen.delete(pid);
    };
    const resume = (pid: number): void => {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // Gone already.
      }
    };
    const thawIfFrozen = (child: ResultPromise): void => {
      if (child.pid !== undefined && frozen.delete(child.pid)) resume(child.pid);
    };
    cleanups.push(async () => {
      for (const pid of frozen) resume(pid);
      frozen.clear();
      for (const child of children) child.kill('SIGKILL');
      await Promise.allSettled([...children]);
    });
    const startReplica = async (i: number, env: Record<string, string> | undefined, listen?: string): Promise<Replica> => {
      const child = execa(process.execPath, [BERTH_BIN, 'serve', '--store', storeUrl, ...(listen === undefined ? [] : ['--listen', listen])], {
        env: { ...inheritedEnv(), ...sandbox.env, ...options.replicaEnv, ...env },
        extendEnv: false,
        reject: false,
        cwd: sandbox.root,
        stdin: 'ignore',
      });
      children.add(child);
      const stderr = captureStderr(child);
      const [, url] = await waitForOutput(child, stderr, /berth API listening on (\S+) /, `replica ${i}`);
      return { url: url ?? '', child, stderr };
    };
    for (let i = 0; i < (options.replicas ?? 1); i++) replicas.push(await startReplica(i, options.replicaEnvs?.[i]));

    const agents = new Map<string, AgentProcess>();
    const startAgent = async (name: string, env: Record<string, string> = {}): Promise<AgentProcess> => {
      const host = net.hosts.find((h) => h.name === name);
      if (host === undefined) throw new Error(`no test host ${name}`);
      const dataDir = join(sandbox.root, `agent-${name}`);
      await mkdir(dataDir, { recursive: true, mode: 0o700 });
      const tokenFile = join(dataDir, 'agent.token');
      await writeFile(tokenFile, agentTokens.get(name) ?? '', { mode: 0o600 });
      await chmod(tokenFile, 0o600);
      const api =
        options.agentApi === 'all' ? replicas.map((r) => r.url).join(',') : (replicas[typeof options.agentApi === 'number' ? options.agentApi : 0]?.url ?? '');
      const child = net.spawnIn(host, process.execPath, [BERTH_BIN, 'agent', '--api', api, '--token-file', tokenFile], {
        env: { ...inheritedEnv(), HOME: sandbox.home, NO_COLOR: '1', BERTH_DATA_DIR: dataDir, ...env },
        extendEnv: false,
        cwd: sandbox.root,
        stdin: 'ignore',
      });
      children.add(child);
      const stderr = captureStderr(child);
      await waitForOutput(child, stderr, /registered host \S+ with the API/, `the agent of ${name}`);
      const agent = { host, child, dataDir, tokenFile, stderr };
      agents.set(name, agent);
      return agent;
    };
    for (const host of net.hosts) await startAgent(host.name);

    const replicaAt = (index: number): Replica => {
      const replica = replicas[index];
      if (replica === undefined) throw new Error(`no replica ${index}`);
      return replica;
    };
    const agentOf = (name: string): AgentProcess => {
      const agent = agents.get(name);
      if (agent === undefined) throw new Error(`no agent runs on ${name}`);
      return agent;
    };
    const berth = (args: readonly string[], replica = 0): Promise<BerthRun> =>
      sandbox.run(args, { BERTH_API_URL: replicas[replica]?.url ?? '', BERTH_TOKEN: adminToken });

    return {
      cluster,
      storeUrl,
      database,
      net,
      sandbox,
      replicas,
      agents,
      adminToken,
      agentTokens,
      berth,
      async json<T>(args: readonly string[], replica = 0): Promise<T> {
        const run = await berth([...args, '--json'], replica);
        if (run.exitCode !== 0) throw new Error(`berth ${args.join(' ')} --json exited ${run.exitCode}\nstdout: ${run.stdout}\nstderr: ${run.stderr}`);
        return JSON.parse(run.stdout) as T;
      },
      async restartReplica(index: number, env?: Record<string, string>): Promise<Replica> {
        const old = replicas[index];
        if (old === undefined) throw new Error(`no replica ${index}`);
        old.child.kill('SIGKILL');
        thawIfFrozen(old.child);
        await old.child;
        children.delete(old.child);
        const restarted = await startReplica(index, env, new URL(old.url).host);
        replicas[index] = restarted;
        return restarted;
      },
      startAgent,
      freezeReplica: (index: number) => sendSignal(replicaAt(index).child, `replica ${index}`, 'SIGSTOP'),
      thawReplica: (index: number) => sendSignal(replicaAt(index).child, `replica ${index}`, 'SIGCONT'),
      freezeAgent: (name: string) => sendSignal(agentOf(name).child, `the agent of ${name}`, 'SIGSTOP'),
      thawAgent: (name: string) => sendSignal(agentOf(name).child, `the agent of ${name}`, 'SIGCONT'),
      async stopAgent(name: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | undefined> {
        const agent = agents.get(name);
        if (agent === undefined) return undefined;
        agent.child.kill(signal);
        // A frozen agent would never handle a SIGTERM.
        thawIfFrozen(agent.child);
        const result = await agent.child;
        agents.delete(name);
        return result.exitCode;
      },
      cleanup,
    };
  } catch (error) {
    await cleanup();
    throw error;
  }
}

/**
 * A fleet for one describe block: started in beforeAll, removed in afterAll — the fleet first
 * (while a replica or an agent runs it may still publish a link), then the `/dev/berth` links of
 * the ids `linkIds()` gives (the volumes the tests made), dangling ones included — even when a
 * test failed. `world()` is the running fleet.
 */
export function useManyHosts(options: ManyHostsOptions, linkIds: () => readonly string[], hookTimeoutMs = 240_000): () => ManyHosts {
  let fleet: ManyHosts | undefined;
  beforeAll(async () => {
    fleet = await startManyHosts(options);
  }, hookTimeoutMs);
  afterAll(async () => {
    try {
      await fleet?.cleanup();
    } finally {
      await removeBerthLinks(linkIds());
    }
  }, hookTimeoutMs);
  return () => {
    if (fleet === undefined) throw new Error('the fleet did not start');
    return fleet;
  };
}
