import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { silentLogger, type BerthService } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { createApiApp, hashToken, TokenTable } from '@berth/api';
import { RemoteBerthService } from '@berth/client';
import { printTable, runSpread, summarize } from './stats.js';

const TOKEN = 'bench-admin-token-0123456789abcdef';

/** What one attach+detach cycle took: the attach and the detach as the caller saw them, and inside the journal. */
interface CycleResult {
  attachMs: number;
  detachMs: number;
  /** The two operations' own durations (journal start to end): the part HTTP cannot change. */
  operationsMs: number;
  requests: number;
}

/** One way of running an attach+detach cycle on a volume. */
type Cycle = (volume: string) => Promise<CycleResult>;

/**
 * A mode's samples over every round: whole cycles, attaches and detaches, each cycle's time outside
 * its two operations (ms), requests and busy time.
 */
interface Samples {
  cycles: number[];
  attaches: number[];
  detaches: number[];
  outside: number[];
  requests: number;
  wallMs: number;
}

const empty = (): Samples => ({ cycles: [], attaches: [], detaches: [], outside: [], requests: 0, wallMs: 0 });

/** An operation's journalled duration in ms. */
function journalled(operation: { startedAt: string; endedAt: string | null }): number {
  return operation.endedAt === null ? 0 : Date.parse(operation.endedAt) - Date.parse(operation.startedAt);
}

/** Run `cycles` cycles spread over `concurrency` workers, each on its own volume, into `samples`. */
async function drive(samples: Samples, concurrency: number, cycles: number, cycle: Cycle): Promise<void> {
  samples.wallMs += await runSpread(concurrency, cycles, async (worker) => {
    const t0 = performance.now();
    const { attachMs, detachMs, operationsMs, requests } = await cycle(`bench-${worker}`);
    const cycleMs = performance.now() - t0;
    samples.cycles.push(cycleMs);
    samples.outside.push(cycleMs - operationsMs);
    samples.attaches.push(attachMs);
    samples.detaches.push(detachMs);
    samples.requests += requests;
  });
}

/**
 * A cycle through `berth` (the embedded service, or the HTTP client that implements the same
 * interface): `attach`/`detach`, or with `viaStart` `startAttach(...).done` — over HTTP that is the
 * POST and a long-poll of the outcome, as `attach` did before it asked `Prefer: wait`.
 * `requests` is what one cycle sends (2 when each operation ends within the POST's wait).
 */
function serviceCycle(berth: BerthService, requests: number, viaStart = false): Cycle {
  return async (volume) => {
    let t = performance.now();
    const attached = viaStart ? await (await berth.startAttach({ volume })).done : await berth.attach({ volume });
    const attachMs = performance.now() - t;
    t = performance.now();
    const detached = viaStart ? await (await berth.startDetach({ volume })).done : await berth.detach({ volume });
    const detachMs = performance.now() - t;
    return { attachMs, detachMs, operationsMs: journalled(attached.operation) + journalled(detached.operation), requests };
  };
}

/**
 * The bare protocol: POST (start), then GET the outcome with a long-poll until it is there. With
 * `preferWait` the POST asks `Prefer: wait=30`: an operation that succeeds in time comes back in
 * the POST's own answer (200), with no long-poll.
 */
function fetchCycle(url: string, preferWait = false): Cycle {
  const headers = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', ...(preferWait ? { prefer: 'wait=30' } : {}) };
  const operate = async (volume: string, action: 'attach' | 'detach'): Promise<{ requests: number; operationMs: number }> => {
    const started = await fetch(`${url}/v1/volumes/${volume}/${action}`, { method: 'POST', headers, body: '{}' });
    if (started.status === 200 && preferWait) {
      const { operation } = (await started.json()) as { operation: { startedAt: string; endedAt: string | null } };
      return { requests: 1, operationMs: journalled(operation) };
    }
    if (started.status !== 202) throw new Error(`${action} ${volume}: ${started.status} ${await started.text()}`);
    const { id } = (await started.json()) as { id: string };
    let requests = 1;
    for (;;) {
      const answer = await fetch(`${url}/v1/operations/${id}/outcome?wait=30s`, { headers });
      requests += 1;
      const body = (await answer.json()) as { operation?: { startedAt: string; endedAt: string | null } };
      if (answer.status === 200 && body.operation !== undefined) return { requests, operationMs: journalled(body.operation) };
      if (answer.status !== 202) throw new Error(`${action} ${volume}: operation ${id} answered ${answer.status}`);
    }
  };
  return async (volume) => {
    let t = performance.now();
    const a = await operate(volume, 'attach');
    const attachMs = performance.now() - t;
    t = performance.now();
    const d = await operate(volume, 'detach');
    return { attachMs, detachMs: performance.now() - t, operationsMs: a.operationMs + d.operationMs, requests: a.requests + d.requests };
  };
}

/**
 * Attach+detach cycles on the loop transport, embedded (`BerthService`), through the HTTP app with
 * bare `fetch` (POST, then a long-poll of the outcome; and POST with `Prefer: wait`, one request),
 * and with `@berth/client` (its `startAttach(...).done`: POST + long-poll, as before `Prefer: wait`;
 * and `attach`, what `berth --api` does), at each concurrency. All modes share one data dir and one
 * service, and run in alternating rounds, so the machine's load falls on each alike: the gap is
 * what HTTP costs, and the protocol's before/after is measured in one run.
 */
export async function benchApiCycle(cycles = 100, concurrencies: readonly number[] = [1, 4], rounds = 4): Promise<void> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-api-'));
  const berth = await openBerth({ dataDir, env: {}, logger: silentLogger });
  const app = await createApiApp({
    service: berth,
    tokens: TokenTable.fromConfig([{ name: 'bench', sha256: hashToken(TOKEN), role: 'admin' }], {}),
    defaultProject: 'default',
    defaultMetrics: false,
  });
  let client: RemoteBerthService | undefined;
  const summary: string[] = [];
  try {
    const url = await app.listen('127.0.0.1', 0);
    client = new RemoteBerthService({ url, token: TOKEN });
    for (let i = 0; i < Math.max(...concurrencies); i++) await berth.createVolume({ name: `bench-${i}`, sizeBytes: 16 * 1024 * 1024 });
    const modes: Array<{ name: string; cycle: Cycle }> = [
      { name: 'embedded (BerthService)', cycle: serviceCycle(berth, 0) },
      { name: 'HTTP, fetch + long-poll', cycle: fetchCycle(url) },
      { name: 'HTTP, fetch + Prefer: wait', cycle: fetchCycle(url, true) },
      { name: 'HTTP, @berth/client, start + long-poll', cycle: serviceCycle(client, 4, true) },
      { name: 'HTTP, @berth/client', cycle: serviceCycle(client, 2) },
    ];
    // One warm-up cycle per mode: module loading and the first connection are not the HTTP layer.
    for (const mode of modes) await drive(empty(), 1, 1, mode.cycle);
    for (const concurrency of concurrencies) {
      const samples = modes.map(() => empty());
      // One client alternates the modes cycle by cycle; several alternate in rounds (a round must
      // keep every client busy for the throughput to mean something).
      const roundCount = concurrency === 1 ? cycles : rounds;
      const perRound = Math.max(1, Math.round(cycles / roundCount));
      for (let round = 0; round < roundCount; round++) {
        for (const [i, mode] of modes.entries()) await drive(samples[i]!, concurrency, perRound, mode.cycle);
      }
      const base = samples[0]!;
      const baseP50 = summarize(base.cycles).p50;
      const baseRate = base.cycles.length / base.wallMs;
      const baseOutside = summarize(base.outside).p50;
      printTable(
        `attach+detach cycles, loop transport, ${perRound * roundCount} cycles per mode in ${roundCount} alternating rounds, ${concurrency} concurrent client(s) (ms)`,
        ['mode', 'cycles/s', '× embedded', 'requests/s', 'cycle p50', 'cycle p99', 'Δ cycle p50', 'outside ops p50', 'Δ outside p50', 'attach p50', 'detach p50'],
        modes.map((mode, i) => {
          const s = samples[i]!;
          const c = summarize(s.cycles);
          const outside = summarize(s.outside).p50;
          return [
            mode.name,
            (s.cycles.length / s.wallMs) * 1000,
            s.cycles.length / s.wallMs / baseRate,
            i === 0 ? '-' : (s.requests / s.wallMs) * 1000,
            c.p50,
            c.p99,
            i === 0 ? '-' : c.p50 - baseP50,
            outside,
            i === 0 ? '-' : outside - baseOutside,
            summarize(s.attaches).p50,
            summarize(s.detaches).p50,
          ];
        }),
      );
      const http = samples[1]!;
      const preferWait = samples[2]!;
      const clientPolling = samples[3]!;
      const viaClient = samples[4]!;
      const overhead = (s: Samples): string => `${(summarize(s.outside).p50 - baseOutside).toFixed(2)} ms`;
      summary.push(
        `${concurrency} client(s): HTTP overhead per cycle (time outside the operations, p50, minus embedded's) ${overhead(http)} (fetch + long-poll), ` +
          `${overhead(preferWait)} (fetch + Prefer: wait), ${overhead(clientPolling)} (@berth/client, start + long-poll), ${overhead(viaClient)} (@berth/client); throughput ` +
          `${[http, preferWait, clientPolling, viaClient].map((s) => `${(s.cycles.length / s.wallMs / baseRate).toFixed(2)}×`).join(' / ')} embedded`,
      );
    }
  } finally {
    await client?.close();
    await app.close();
    await berth.close();
    await rm(dataDir, { recursive: true, force: true });
  }
  console.log(`\n${summary.join('\n')}\ntargets: overhead ≤ 5 ms p50 at 1 client; throughput ≥ 0.8× embedded at 4 clients`);
}
