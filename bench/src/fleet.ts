import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startApiServer } from '@berth/api';
import { AgentClient } from '@berth/client';
import { Worker } from 'node:worker_threads';
import { silentLogger, type BerthService } from '@berth/core';
import { AgentRunner, openAgent, openBerth, type AgentHost } from '@berth/runtime';
import { postgresTransactionAttempts } from '@berth/store';
import { queryOn, startPostgresCluster, type PostgresCluster } from '@berth/store/testing';
import { operateOverHttp, postOrThrow } from './api-operations.js';
import { FAST_CONFIG, fastPlugin, type ReplicaMessage, type ReplicaStart } from './fleet-parts.js';
import { onSignalCleanup } from './signal-cleanup.js';
import { printTable, runSpread, summarize } from './stats.js';

// Issue 10's fleet figure: 100 hosts, each with its own agent (in this process, each with its
// own token, session and long-poll over real HTTP), PostgreSQL, 1 and 2 API replicas (each in its
// own worker thread, with its own event loop as on its own machine; or, with
// BENCH_FLEET_REPLICA_THREADS=0, in this thread beside the agents), and a transport that costs
// nothing — so what is measured is berth's control plane (journal, work items, NOTIFY,
// long-polls), not losetup. Beside the embedded default with the same transport.

const HOST_PREFIX = 'fh';

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** How long the trace watches an idle fleet's commits (a measuring window, not a wait for an event). */
const IDLE_WINDOW_MS = 5_000;

/** Transactions committed so far in the database at `url` (PostgreSQL's statistics, one round trip). */
async function commitsOf(url: string): Promise<number> {
  // Other backends flush their counts at most once a second (up to 10 s late when idle), so this lags
  // a little; at both ends of a window the lag is alike, which is good enough for a per-cycle ratio.
  const [row] = await queryOn<{ n: string }>(url, `select xact_commit::text n from pg_stat_database where datname = current_database()`);
  return Number(row?.n ?? 0);
}

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux). */
const USER_HZ = 100;

/**
 * CPU ms the cluster's server has used so far: the postmaster's own and its reaped children's
 * (`cutime`/`cstime`), plus its live children's (backends, WAL writer, …). Linux /proc only.
 */
async function postgresCpuMs(cluster: PostgresCluster): Promise<number> {
  const postmaster = Number((await readFile(path.join(cluster.dir, 'data', 'postmaster.pid'), 'utf8')).split('\n')[0]);
  let ticks = 0;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    // Fields after the command name (which may hold spaces) start at state (field 3).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const [ppid, utime, stime, cutime, cstime] = [fields[1], fields[11], fields[12], fields[13], fields[14]].map(Number);
    if (Number(entry) === postmaster) ticks += (utime ?? 0) + (stime ?? 0) + (cutime ?? 0) + (cstime ?? 0);
    else if (ppid === postmaster) ticks += (utime ?? 0) + (stime ?? 0);
  }
  return (ticks * 1000) / USER_HZ;
}

/** What a replica has done so far. */
interface Counters {
  attempts: number[];
  statements: Record<string, number>;
}

/** An API replica of the fleet, in this thread or in a worker thread of its own. */
interface Replica {
  url: string;
  /** Its store's transactions by attempt so far (`postgresTransactionAttempts`: one per thread) and, in a thread with the trace on, its statements by kind. */
  counters(): Promise<Counters>;
  /** Stop it (requests and operations in flight finish). Idempotent. */
  close(): Promise<void>;
}

/** A replica in this thread: it shares the event loop with the agents and the clients. */
async function replicaHere(start: ReplicaStart): Promise<Replica> {
  const server = await startApiServer({ ...start, logger: silentLogger, logLevel: 'error', extraPlugins: [fastPlugin] });
  return { url: server.url, counters: async () => ({ attempts: [...postgresTransactionAttempts], statements: {} }), close: () => server.close() };
}

/** A replica in a worker thread of its own (`fleet-replica.ts`). */
async function replicaThread(start: ReplicaStart): Promise<Replica> {
  const worker = new Worker(new URL('./fleet-replica.js', import.meta.url), { workerData: start });
  const next = (kind: ReplicaMessage['kind']): Promise<ReplicaMessage> =>
    new Promise((resolve, reject) => {
      const onMessage = (message: ReplicaMessage): void => {
        if (message.kind !== kind && message.kind !== 'failed') return;
        done();
        if (message.kind === 'failed') reject(new Error(`fleet replica thread: ${message.message}`));
        else resolve(message);
      };
      const onError = (error: Error): void => (done(), reject(error));
      const onExit = (code: number): void => (done(), reject(new Error(`fleet replica thread exited (${code}) before '${kind}'`)));
      const done = (): void => {
        worker.off('message', onMessage).off('error', onError).off('exit', onExit);
      };
      worker.on('message', onMessage).on('error', onError).on('exit', onExit);
    });
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      const closed = next('closed');
      worker.postMessage('close');
      await closed.catch(() => undefined);
      await worker.terminate();
    })());
  try {
    const listening = await next('listening');
    return {
      url: listening.kind === 'listening' ? listening.url : '',
      async counters() {
        const answer = next('attempts');
        worker.postMessage('attempts');
        const message = await answer;
        return message.kind === 'attempts' ? { attempts: message.attempts, statements: message.statements } : { attempts: [], statements: {} };
      },
      close,
    };
  } catch (error) {
    await worker.terminate();
    throw error;
  }
}

/** Counts by attempt, `after` minus `before`, slot by slot. */
function attemptsBetween(before: readonly number[], after: readonly number[]): number[] {
  return after.map((n, i) => n - (before[i] ?? 0));
}

/** Several replicas' counters added up: attempts slot by slot, statements kind by kind. */
function sumCounters(all: readonly Counters[]): Counters {
  const out: Counters = { attempts: [], statements: {} };
  for (const counts of all) {
    counts.attempts.forEach((n, i) => (out.attempts[i] = (out.attempts[i] ?? 0) + n));
    for (const [kind, n] of Object.entries(counts.statements)) out.statements[kind] = (out.statements[kind] ?? 0) + n;
  }
  return out;
}

/** One attach+detach cycle of worker `worker`: its wall time in ms. */
type Cycle = (worker: number) => Promise<number>;

interface Samples {
  cycles: number[];
  wallMs: number;
}

/** Embedded: the service in this process on SQLite. Worker w attaches its volume to server w's host (all local). */
function embeddedCycle(berth: BerthService): Cycle {
  return async (worker) => {
    const t = performance.now();
    await berth.attach({ volume: `fleet-${worker}` });
    await berth.detach({ volume: `fleet-${worker}` });
    return performance.now() - t;
  };
}

/**
 * Through the fleet: worker w's volume goes to a server on host `fh<k>`, k moving on every cycle,
 * so all hosts get work; requests go to the replicas in turn (with 2, half the host steps are
 * enqueued by the replica the host's agent does not talk to, and reach it by NOTIFY).
 */
function fleetCycle(urls: readonly string[], token: string, hosts: number): Cycle {
  let next = 0;
  return async (worker) => {
    const k = next++;
    const url = urls[k % urls.length] ?? '';
    const t = performance.now();
    await operateOverHttp(url, token, `fleet-${worker}`, 'attach', { server: `web-${HOST_PREFIX}${k % hosts}` });
    await operateOverHttp(url, token, `fleet-${worker}`, 'detach', {});
    return performance.now() - t;
  };
}

/** Run `count` cycles over `concurrency` workers into `samples`. */
async function drive(samples: Samples, concurrency: number, count: number, cycle: Cycle): Promise<void> {
  samples.wallMs += await runSpread(concurrency, count, async (worker) => {
    samples.cycles.push(await cycle(worker));
  });
}

/**
 * `hosts` agents (one AgentRunner each, its own token and HTTP long-poll; one shared agent host,
 * since the transport touches nothing), PostgreSQL, `replicas` API replicas; attach+detach cycles
 * at `concurrency` clients beside embedded. Prints cycles/s, × embedded, cycle p50/p99.
 */
export async function benchFleet(hosts = 100, cycles = 400, concurrency = 32, replicaCounts: readonly number[] = [1, 2]): Promise<void> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-fleet-'));
  const servers: Replica[] = [];
  const threads = process.env.BENCH_FLEET_REPLICA_THREADS !== '0';
  const trace = process.env.BENCH_FLEET_TRACE === '1';
  const runners: Array<{ runner: AgentRunner; done: Promise<void> }> = [];
  let cluster: PostgresCluster | undefined;
  let unregister = (): void => undefined;
  let embedded: BerthService | undefined;
  let agentHost: AgentHost | undefined;
  try {
    cluster = await startPostgresCluster();
    const started = cluster;
    unregister = onSignalCleanup(async () => {
      await started.stop();
      await rm(root, { recursive: true, force: true });
    });
    const adminToken = randomBytes(24).toString('hex');
    const names = Array.from({ length: hosts }, (_, i) => `${HOST_PREFIX}${i}`);
    const agentTokens = new Map(names.map((h) => [h, randomBytes(24).toString('hex')]));
    const tokens = [
      { name: 'admin', sha256: sha256(adminToken), role: 'admin' },
      ...names.map((h) => ({ name: `agent-${h}`, sha256: sha256(agentTokens.get(h) ?? ''), role: 'agent', host: h })),
    ];
    const writeConfig = async (dir: string, extra: object = {}): Promise<string> => {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...FAST_CONFIG, ...extra }));
      return dir;
    };
    const env = { HOME: root, NO_COLOR: '1' };
    const agentDir = await writeConfig(path.join(root, 'agent'));
    agentHost = await openAgent({ dataDir: agentDir, env, logger: silentLogger, extraPlugins: [fastPlugin] });
    embedded = await openBerth({ dataDir: await writeConfig(path.join(root, 'embedded')), env, logger: silentLogger, extraPlugins: [fastPlugin] });
    for (let i = 0; i < concurrency; i++) await embedded.createVolume({ name: `fleet-${i}`, sizeBytes: 1024 * 1024 });

    const rows: Array<Array<string | number>> = [];
    let baseRate = 0;
    const embeddedSamples: Samples = { cycles: [], wallMs: 0 };
    await drive({ cycles: [], wallMs: 0 }, concurrency, concurrency, embeddedCycle(embedded));
    await drive(embeddedSamples, concurrency, cycles, embeddedCycle(embedded));
    baseRate = embeddedSamples.cycles.length / embeddedSamples.wallMs;
    const row = (name: string, s: Samples): Array<string | number> => {
      const c = summarize(s.cycles);
      return [name, (s.cycles.length / s.wallMs) * 1000, s.cycles.length / s.wallMs / baseRate, c.p50, c.p99];
    };
    rows.push(row('embedded (SQLite, in-process)', embeddedSamples));
    console.error(`fleet: ${rows.at(-1)?.map(String).join('  ')}`);

    for (const replicas of replicaCounts) {
      const storeUrl = await cluster.createDatabase();
      const controllerDir = await writeConfig(path.join(root, `controller-${replicas}`), { api: { listen: '127.0.0.1:0', tokens } });
      const fleet: Replica[] = [];
      for (let i = 0; i < replicas; i++) {
        const start = { dataDir: controllerDir, storeUrl, env, countStatements: trace };
        const server = threads ? await replicaThread(start) : await replicaHere(start);
        servers.push(server);
        fleet.push(server);
      }
      const urls = fleet.map((s) => s.url);
      // Host k's agent talks to replica k mod n.
      const started = names.map((name, k) => {
        const client = new AgentClient({ url: urls[k % urls.length] ?? '', token: agentTokens.get(name) ?? '' });
        const runner = new AgentRunner({ host: agentHost!, api: client, apiUrl: client.url, version: 'bench', concurrency: 4 });
        const entry = { runner, done: runner.run().catch(() => undefined) };
        runners.push(entry);
        return entry;
      });
      // Registered: every host's session is there.
      const deadline = Date.now() + 120_000;
      while (started.some((e) => e.runner.current === undefined)) {
        if (Date.now() > deadline) throw new Error('the agents did not all register within 120 s');
        await new Promise((resolve) => setImmediate(resolve));
        await Promise.race([...started.map((e) => e.done), new Promise((resolve) => setTimeout(resolve, 50))]);
      }
      for (const name of names) await postOrThrow(urls[0] ?? '', adminToken, '/v1/servers', { name: `web-${name}`, host: name });
      for (let i = 0; i < concurrency; i++) await postOrThrow(urls[i % urls.length] ?? '', adminToken, '/v1/volumes', { name: `fleet-${i}`, sizeBytes: 1024 * 1024 });

      const cycle = fleetCycle(urls, adminToken, hosts);
      await drive({ cycles: [], wallMs: 0 }, concurrency, concurrency, cycle);
      const commitsBefore = trace ? await commitsOf(storeUrl) : 0;
      // Replicas in this thread share one counter; threads each have their own.
      const fleetCounters = async (): Promise<Counters> => (threads ? sumCounters(await Promise.all(fleet.map((r) => r.counters()))) : await (fleet[0]?.counters() ?? { attempts: [], statements: {} }));
      const countersBefore = trace ? await fleetCounters() : undefined;
      const samples: Samples = { cycles: [], wallMs: 0 };
      const cpuBefore = process.cpuUsage();
      const postgresBefore = trace ? await postgresCpuMs(cluster) : 0;
      const loopBefore = performance.eventLoopUtilization();
      await drive(samples, concurrency, cycles, cycle);
      const cpu = process.cpuUsage(cpuBefore);
      const loop = performance.eventLoopUtilization(loopBefore);
      const postgresDuring = trace ? (await postgresCpuMs(cluster)) - postgresBefore : 0;
      const commitsDuring = trace ? (await commitsOf(storeUrl)) - commitsBefore : 0;
      const countersAfter = trace ? await fleetCounters() : undefined;
      rows.push(row(`${hosts} hosts, ${replicas} replica${replicas === 1 ? '' : 's'} ${threads ? 'in threads' : 'in this thread'} (PostgreSQL, HTTP)`, samples));
      console.error(`fleet: ${rows.at(-1)?.map(String).join('  ')}`);

      if (trace) {
        // The fleet idle (its agents long-polling, heart-beating): what it commits with no cycles.
        const idleFrom = await commitsOf(storeUrl);
        const idleStarted = performance.now();
        await new Promise((resolve) => setTimeout(resolve, IDLE_WINDOW_MS));
        const idlePerSecond = ((await commitsOf(storeUrl)) - idleFrom) / ((performance.now() - idleStarted) / 1000);
        console.error(
          `commits: ${(commitsDuring / samples.cycles.length).toFixed(1)} per cycle (measured cycles, idle commits included); idle fleet ${idlePerSecond.toFixed(1)}/s`,
        );
        // This process (clients, agents, and the replicas in this thread or in theirs) during the
        // measured cycles; the main thread's busy loop (clients and agents, and the replicas when they
        // share it) near 100 % means cycles queue for the CPU here, not for a timer or the database.
        console.error(
          `this process: ${((cpu.user + cpu.system) / 1000 / samples.cycles.length).toFixed(1)} ms CPU per cycle; main thread's event loop busy ${(loop.utilization * 100).toFixed(0)} %; PostgreSQL (its server's processes): ${(postgresDuring / samples.cycles.length).toFixed(1)} ms CPU per cycle`,
        );
        // Store transactions by attempt (1st, 2nd, …, the last slot counting all from there on):
        // every attempt after the first is a serialization failure retried; from the third on
        // the transaction holds the gate lock exclusively (runs alone).
        const attempts = attemptsBetween(countersBefore?.attempts ?? [], countersAfter?.attempts ?? []);
        console.error(`store transactions by attempt (measured cycles): ${attempts.join(' / ')}; retries per cycle ${(attempts.slice(1).reduce((a, b) => a + b, 0) / samples.cycles.length).toFixed(2)}`);
        if (threads) {
          // The replicas' statements per cycle by kind (their pg clients' queries; this thread's not counted).
          const perCycle = Object.entries(countersAfter?.statements ?? {})
            .map(([kind, n]): [string, number] => [kind, (n - (countersBefore?.statements[kind] ?? 0)) / samples.cycles.length])
            .filter(([, n]) => n >= 0.05)
            .sort((a, b) => b[1] - a[1]);
          const total = perCycle.reduce((sum, [, n]) => sum + n, 0);
          console.error(`replicas' statements per cycle: ${total.toFixed(1)} — ${perCycle.map(([kind, n]) => `${kind} ${n.toFixed(1)}`).join(', ')}`);
        }
        const q = async (label: string, text: string): Promise<void> => console.error(label, JSON.stringify(await queryOn(storeUrl, text)));
        await q('steps', `select name, phase, count(*)::int n, round(avg(duration_ms))::int avg, max(duration_ms)::int max, percentile_cont(0.5) within group (order by duration_ms)::int p50 from operation_steps group by name, phase order by avg desc`);
        await q('items', `select step, count(*)::int n, round(avg(extract(epoch from (updated_at::timestamptz - created_at::timestamptz))*1000))::int avg_ms, max(attempts) max_attempts from work_items group by step`);
        await q('ops', `select kind, count(*)::int n, round(avg(extract(epoch from (ended_at::timestamptz - started_at::timestamptz))*1000))::int avg_ms from operations group by kind`);
        await q('db', `select xact_commit, xact_rollback, conflicts, deadlocks from pg_stat_database where datname = current_database()`);
      }
      for (const entry of started) entry.runner.stop();
      await Promise.all(started.map((e) => e.done));
      for (const server of fleet) await server.close();
    }
    printTable(
      `fleet: attach+detach cycles through ${hosts} hosts' agents (in-process, real HTTP; replicas ${threads ? 'each in its own worker thread' : 'in the agents\' thread'}), a transport that does nothing, ${cycles} cycles per mode, ${concurrency} concurrent clients (ms). Target: ≥ 100 cycles/s, p99 ≤ 1000 ms`,
      ['mode', 'cycles/s', '× embedded', 'cycle p50', 'cycle p99'],
      rows,
    );
  } finally {
    for (const { runner } of runners) runner.stop();
    await Promise.all(runners.map((e) => e.done));
    for (const server of servers) await server.close().catch(() => undefined);
    await embedded?.close();
    await agentHost?.close();
    await cluster?.stop();
    unregister();
    await rm(root, { recursive: true, force: true });
  }
}
