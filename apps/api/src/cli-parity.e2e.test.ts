import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, createTestApi, releaseMachine, runCli as berth, TOKENS, type CliResult as Result, type TestApi } from './test-support.js';

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;
const TIME = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z/g;

/** Ids by order of appearance, timestamps, durations, loop numbers, owners and the data dir made neutral. */
function normalise(results: Result[], dataDir: string): unknown {
  const ids = new Map<string, string>();
  const walk = (value: unknown, key: string | undefined, inTimings: boolean): unknown => {
    if (typeof value === 'number' && (inTimings || key === 'durationMs')) return 0;
    // A device's identity (device number, backing inode) differs between the two data dirs by nature.
    if (key === 'identity') return '<identity>';
    if (typeof value === 'string') {
      if (key === 'owner') return '<owner>';
      return value
        .replaceAll(dataDir, '<data>')
        .replace(UUID, (id) => {
          if (!ids.has(id)) ids.set(id, `<id${ids.size}>`);
          return ids.get(id) ?? id;
        })
        .replace(TIME, '<time>')
        .replace(/\/dev\/loop\d+/g, '/dev/loopN');
    }
    if (Array.isArray(value)) return value.map((v) => walk(v, undefined, inTimings));
    if (typeof value === 'object' && value !== null) {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, walk(v, k, inTimings || k === 'timings')]));
    }
    return value;
  };
  return results.map((r) => ({ exitCode: r.exitCode, json: walk(r.json, undefined, false) }));
}

/** One sequence of commands; later ones use ids from earlier outputs. */
async function scenario(env: Record<string, string>): Promise<Result[]> {
  const out: Result[] = [];
  const step = async (...args: string[]): Promise<Result> => {
    const result = await berth(args, env);
    out.push(result);
    return result;
  };
  await step('volume', 'create', '--size', '16MiB', '--name', 'data1');
  await step('volume', 'create', '--size', '1MiB', '--name', 'data2', '--multiattach');
  await step('server', 'create', 'web1');
  await step('volume', 'list');
  const attached = await step('attach', 'data1');
  await step('attach', 'data2', '--server', 'web1', '--mode', 'ro');
  await step('attach', 'data1');
  await step('volume', 'show', 'data1');
  await step('server', 'show', 'web1');
  await step('server', 'list');
  await step('attachment', 'list');
  const attachmentId = String((attached.json as { attachment?: { id?: string } }).attachment?.id);
  const operationId = String((attached.json as { operation?: { id?: string } }).operation?.id);
  await step('attachment', 'show', attachmentId);
  await step('operation', 'show', operationId);
  await step('operation', 'list');
  await step('operation', 'list', '--volume', 'data1');
  await step('operation', 'list', '--volume', 'nope');
  await step('operation', 'prune', '--older-than', '2h', '--dry-run');
  await step('operation', 'prune', '--older-than', '20m', '--yes');
  await step('volume', 'extend', 'data2', '--size', '2MiB');
  await step('detach', 'data1');
  await step('detach', 'data2');
  await step('detach', 'data2');
  await step('volume', 'extend', 'data2', '--size', '2MiB');
  await step('volume', 'delete', 'data1', '--yes');
  await step('volume', 'show', 'nope');
  await step('server', 'delete', 'web1', '--yes');
  await step('volume', 'create', '--size', '1MiB', '--name', 'bad', '--backend', 'no-such-backend');
  await step('connector');
  await step('operation', 'list', '--state', 'running');
  await step('volume', 'list');
  return out;
}

let api: TestApi;
let embeddedDir: string;

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`build the CLI first (cd apps/cli && npx tsc -p tsconfig.build.json): ${CLI} is missing`);
  api = await createTestApi();
  embeddedDir = await mkdtemp(path.join(os.tmpdir(), 'berth-cli-embedded-'));
});

afterAll(async () => {
  await api.cleanup();
  releaseMachine(embeddedDir);
  await rm(embeddedDir, { recursive: true, force: true });
});

describe('the CLI as a client of the API', () => {
  it('prints the same --json and exits with the same codes as embedded mode, command for command', async () => {
    // Both at once (separate state, so they cannot meet): the suite takes half the time.
    const [embedded, remote] = await Promise.all([
      scenario({ BERTH_DATA_DIR: embeddedDir }),
      scenario({ BERTH_API_URL: api.url, BERTH_TOKEN: TOKENS.admin, BERTH_DATA_DIR: path.join(embeddedDir, 'unused') }),
    ]);
    expect(embedded.map((r) => r.exitCode)).toEqual([0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 2, 4, 0, 0, 4, 0, 0, 3, 0, 6, 0, 0, 0]);
    // `operation list --volume data1`: data1's attach (the second one was refused before it began), nothing of data2's.
    expect((embedded[14]!.json as Array<{ kind: string; state: string }>).map((o) => `${o.kind}:${o.state}`)).toEqual(['attach:succeeded']);
    expect(normalise(remote, api.dataDir)).toEqual(normalise(embedded, embeddedDir));
    // The remote run changed the server's state, not a local one.
    expect(existsSync(path.join(embeddedDir, 'unused'))).toBe(false);
    expect((await api.service.listVolumes()).map((v) => `${v.name}:${v.sizeBytes}`)).toEqual(['data2:2097152']);
    // 56 CLI processes, two at a time: each start costs 1–4 s on a loaded 2-core machine (issue 12's CLI start).
  }, 360_000);

  it('reports a bad token and an unreachable server with the codes of their errors', async () => {
    const unauthenticated = await berth(['volume', 'list'], { BERTH_API_URL: api.url, BERTH_TOKEN: 'wrong-token' });
    expect(unauthenticated.exitCode).toBe(7);
    expect(unauthenticated.json).toMatchObject({ error: { code: 'UNAUTHENTICATED' } });
    const forbidden = await berth(['doctor'], { BERTH_API_URL: api.url, BERTH_TOKEN: TOKENS.memberA });
    expect(forbidden.exitCode).toBe(8);
    const unreachable = await berth(['volume', 'list', '--api', 'http://127.0.0.1:1'], {});
    expect(unreachable.exitCode).toBe(18);
    expect(unreachable.json).toMatchObject({ error: { code: 'CONFIG', hint: expect.stringContaining('berth serve') } });
  });
});
