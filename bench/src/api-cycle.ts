import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { silentLogger, type BerthService } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { createApiApp, hashToken, TokenTable } from '@berth/api';
import { printTable, summarize } from './stats.js';

const TOKEN = 'bench-admin-token-0123456789abcdef';

/** One run's samples: whole attach+detach cycles, and the attaches and detaches alone (ms). */
interface Samples {
  cycles: number[];
  attaches: number[];
  detaches: number[];
  requests: number;
  wallMs: number;
}

/** Run `cycles` attach+detach cycles spread over `concurrency` workers, each on its own volume. */
async function drive(concurrency: number, cycles: number, cycle: (volume: string) => Promise<{ attachMs: number; detachMs: number; requests: number }>): Promise<Samples> {
  const samples: Samples = { cycles: [], attaches: [], detaches: [], requests: 0, wallMs: 0 };
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, worker) => {
      while (next < cycles) {
        next += 1;
        const t0 = performance.now();
        const { attachMs, detachMs, requests } = await cycle(`bench-${worker}`);
        samples.cycles.push(performance.now() - t0);
        samples.attaches.push(attachMs);
        samples.detaches.push(detachMs);
        samples.requests += requests;
      }
    }),
  );
  samples.wallMs = performance.now() - started;
  return samples;
}

async function createVolumes(berth: BerthService, concurrency: number): Promise<void> {
  for (let i = 0; i < concurrency; i++) await berth.createVolume({ name: `bench-${i}`, sizeBytes: 16 * 1024 * 1024 });
}

async function embeddedRun(concurrency: number, cycles: number): Promise<Samples> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-embedded-'));
  const berth = await openBerth({ dataDir, env: {}, logger: silentLogger });
  try {
    await createVolumes(berth, concurrency);
    return await drive(concurrency, cycles, async (volume) => {
      let t = performance.now();
      await berth.attach({ volume });
      const attachMs = performance.now() - t;
      t = performance.now();
      await berth.detach({ volume });
      return { attachMs, detachMs: performance.now() - t, requests: 0 };
    });
  } finally {
    await berth.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

/** POST (start) then GET the outcome with a long-poll until it is there: 2+ requests per operation. */
async function operate(url: string, volume: string, action: 'attach' | 'detach'): Promise<number> {
  const headers = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const started = await fetch(`${url}/v1/volumes/${volume}/${action}`, { method: 'POST', headers, body: '{}' });
  if (started.status !== 202) throw new Error(`${action} ${volume}: ${started.status} ${await started.text()}`);
  const { id } = (await started.json()) as { id: string };
  let requests = 1;
  for (;;) {
    const answer = await fetch(`${url}/v1/operations/${id}/outcome?wait=30s`, { headers });
    requests += 1;
    await answer.arrayBuffer();
    if (answer.status === 200) return requests;
    if (answer.status !== 202) throw new Error(`${action} ${volume}: operation ${id} answered ${answer.status}`);
  }
}

async function apiRun(concurrency: number, cycles: number): Promise<Samples> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-api-'));
  const berth = await openBerth({ dataDir, env: {}, logger: silentLogger });
  const app = await createApiApp({
    service: berth,
    tokens: TokenTable.fromConfig([{ name: 'bench', sha256: hashToken(TOKEN), role: 'admin' }], {}),
    defaultProject: 'default',
    defaultMetrics: false,
  });
  try {
    const url = await app.listen('127.0.0.1', 0);
    await createVolumes(berth, concurrency);
    return await drive(concurrency, cycles, async (volume) => {
      let t = performance.now();
      const a = await operate(url, volume, 'attach');
      const attachMs = performance.now() - t;
      t = performance.now();
      const d = await operate(url, volume, 'detach');
      return { attachMs, detachMs: performance.now() - t, requests: a + d };
    });
  } finally {
    await app.close();
    await berth.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

/**
 * Attach+detach cycles on the loop transport through the HTTP API (a small concurrent client:
 * POST, then a long-poll of the outcome) beside the same cycles run embedded: the gap is what the
 * HTTP layer costs.
 */
export async function benchApiCycle(cycles = 100, concurrency = 4): Promise<void> {
  const embedded = await embeddedRun(concurrency, cycles);
  const api = await apiRun(concurrency, cycles);
  const row = (mode: string, s: Samples): Array<string | number> => {
    const c = summarize(s.cycles);
    return [
      mode,
      (s.cycles.length / s.wallMs) * 1000,
      s.requests === 0 ? '-' : (s.requests / s.wallMs) * 1000,
      c.p50,
      c.p99,
      summarize(s.attaches).p50,
      summarize(s.attaches).p99,
      summarize(s.detaches).p50,
      summarize(s.detaches).p99,
    ];
  };
  printTable(
    `attach+detach cycles, loop transport, ${cycles} cycles, ${concurrency} concurrent clients (cycle and step latencies in ms)`,
    ['mode', 'cycles/s', 'requests/s', 'cycle p50', 'cycle p99', 'attach p50', 'attach p99', 'detach p50', 'detach p99'],
    [row('embedded (BerthService)', embedded), row('HTTP API (fetch + long-poll)', api)],
  );
  const gap = summarize(api.cycles).p50 - summarize(embedded.cycles).p50;
  console.log(`HTTP layer cost per cycle at p50: ${gap.toFixed(2)} ms (${api.requests} requests in ${(api.wallMs / 1000).toFixed(2)} s)`);
}
