import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect, inject } from 'vitest';
import { silentLogger, type BerthService, type Store } from '@berth/core';
import { stopManagedTgtd } from '@berth/backend-tgt';
import { openBerth, simulatedHostPaths, stopSimulatedHost } from '@berth/runtime';
import { openPostgresStore, openSqliteStore } from '@berth/store';
import { createDatabaseOn, queryOn } from '@berth/store/testing';
import { freeControlPort, freePort } from '@berth/simhost/real';
import { createApiApp, type ApiApp } from './app.js';
import { hashToken, TokenTable, type TokenEntry } from './auth.js';

/** The tokens every test API accepts. */
export const TOKENS = {
  admin: 'admin-token-0123456789abcdef',
  memberA: 'member-a-token-0123456789abcdef',
  memberB: 'member-b-token-0123456789abcdef',
  agent: 'agent-token-0123456789abcdef',
  /** The agent of host `h-1` (agent protocol, its host's secrets). */
  agentH1: 'agent-h1-token-0123456789abcdef',
  /** The agent of host `h-2`. */
  agentH2: 'agent-h2-token-0123456789abcdef',
  /** The agent of host `outside-1` (an orchestrator's host in the three-phase tests). */
  agentOutside: 'agent-outside-token-0123456789abcdef',
  /** A member of project B whose token entry has member A's name (names are labels, not identities). */
  twinOfA: 'twin-of-a-token-0123456789abcdef',
} as const;

/** The project of `TOKENS.memberA`. */
export const PROJECT_A = 'project-a';
/** The project of `TOKENS.memberB`. */
export const PROJECT_B = 'project-b';

/** The token table of `TOKENS` (as a config would list them: digests only). */
export function testTokenEntries(): TokenEntry[] {
  return [
    { name: 'admin', sha256: hashToken(TOKENS.admin), role: 'admin' },
    { name: 'member-a', sha256: hashToken(TOKENS.memberA), role: 'member', projectId: PROJECT_A },
    { name: 'member-b', sha256: hashToken(TOKENS.memberB), role: 'member', projectId: PROJECT_B },
    { name: 'agent', sha256: hashToken(TOKENS.agent), role: 'agent' },
    { name: 'agent-h1', sha256: hashToken(TOKENS.agentH1), role: 'agent', host: 'h-1' },
    { name: 'agent-h2', sha256: hashToken(TOKENS.agentH2), role: 'agent', host: 'h-2' },
    { name: 'agent-outside', sha256: hashToken(TOKENS.agentOutside), role: 'agent', host: 'outside-1' },
    { name: 'member-a', sha256: hashToken(TOKENS.twinOfA), role: 'member', projectId: PROJECT_B },
  ];
}

/** An answer as a test reads it. */
export interface TestAnswer {
  status: number;
  headers: Headers;
  /** Parsed JSON, or the text when it is not JSON. */
  body: unknown;
  text: string;
}

/** Options of one test request. */
export interface TestRequest {
  token?: string | undefined;
  /** A value sent as JSON. */
  json?: unknown;
  /** A body sent as is (hostile bodies), with `contentType`. */
  raw?: string;
  contentType?: string;
  headers?: Record<string, string>;
}

/** What a test sees of the private tgtd and simulated host of a `simulatedIscsi` API. */
export interface TestIscsi {
  /** tgtd's portals (`host:port`), as the config lists them. */
  portals: string[];
  controlPort: number;
  /** The simulated host's root and the real-backed disks' work dir. */
  root: string;
  workDir: string;
  /** Loop devices, FUSE mounts and qemu-storage-daemon processes of the real-backed disks. */
  leftovers(): { loops: string[]; mounts: string[]; qsd: string[] };
}

/** A private API on a temp data dir and a real socket. */
export interface TestApi {
  url: string;
  dataDir: string;
  service: BerthService;
  app: ApiApp;
  /** Present when the API runs iSCSI on the simulated host (`simulatedIscsi`). */
  iscsi: TestIscsi | undefined;
  /** The PostgreSQL database the API's berth uses; undefined on SQLite (`berth.db` in the data dir). */
  storeUrl: string | undefined;
  /** What a second berth process on the same store needs in its environment (BERTH_STORE_URL on PostgreSQL). */
  storeEnv: Record<string, string>;
  /** Run one SQL statement on the API's database by hand, behind berth's back (sqlite3 or a PostgreSQL connection). */
  sql(statement: string): Promise<void>;
  /** A second store on the API's database (another process's view, e.g. a replica's); close it. */
  openStore(): Promise<Store>;
  request(method: string, urlPath: string, options?: TestRequest): Promise<TestAnswer>;
  /** Close the app and service, detach this data dir's loop devices, remove their links and the dir. */
  cleanup(): Promise<void>;
}

/** Options of `createTestApi`. */
export interface TestApiOptions {
  logStream?: Writable;
  maxWaitMs?: number;
  env?: Record<string, string>;
  /**
   * Serve with `simulate: true`: the tgt backend on a private tgtd (a free TCP port on each of
   * `portalHosts`, a free control port) and the iSCSI transports on the simulated host under the
   * data dir, in real-backed mode. `cleanup` stops both.
   */
  simulatedIscsi?: { portalHosts: string[] };
  /** A PostgreSQL store (`--store`) instead of SQLite in the data dir. */
  storeUrl?: string;
  /** The agent protocol's timings. */
  agent?: { pollWaitMs: number; offlineAfterMs: number };
}

function realBackedLeftovers(workDir: string): { loops: string[]; mounts: string[]; qsd: string[] } {
  const loops = loopDevicesUnder(workDir);
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .filter((line) => line.includes(workDir));
  const pgrep = spawnSync('pgrep', ['-f', `qemu-storage-daemon.*${workDir}`], { encoding: 'utf8' });
  const qsd = pgrep.stdout.trim().split('\n').filter(Boolean);
  return { loops, mounts, qsd };
}

/** Write the config of a simulated-iSCSI test API into `dataDir`; what the test sees of it. */
async function prepareSimulatedIscsi(dataDir: string, portalHosts: readonly string[]): Promise<TestIscsi> {
  const port = await freePort(portalHosts);
  const controlPort = await freeControlPort();
  const portals = portalHosts.map((host) => `${host}:${port}`);
  // The multipath transport waits for every path (its default grace may give a slow path up on a
  // loaded machine, by design; these tests check every portal's path).
  writeFileSync(
    path.join(dataDir, 'config.json'),
    JSON.stringify({ pluginOptions: { '@berth/backend-tgt': { portals, controlPort }, '@berth/driver-iscsi-multipath': { stragglerGraceMs: 30_000 } } }),
  );
  const { root, workDir } = simulatedHostPaths(dataDir);
  return { portals, controlPort, root, workDir, leftovers: () => realBackedLeftovers(workDir) };
}

/** Stop the simulated host and tgtd of a simulated-iSCSI test API, and sweep what they left. */
async function stopSimulatedIscsi(dataDir: string, iscsi: TestIscsi): Promise<void> {
  await stopSimulatedHost(dataDir).catch(() => undefined);
  await stopManagedTgtd(dataDir, iscsi.controlPort).catch(() => undefined);
  const { sweepStrays } = await import('@berth/simhost/real');
  await sweepStrays(iscsi.workDir).catch(() => undefined);
  // Stable links of simulated devices point into the simulated host's root.
  if (existsSync('/dev/berth')) {
    for (const name of readdirSync('/dev/berth')) {
      const link = path.join('/dev/berth', name);
      if ((linkTarget(link) ?? '').startsWith(dataDir + path.sep)) rmSync(link, { force: true });
    }
  }
}

/** Loop devices whose backing file lies under `dir`. */
export function loopDevicesUnder(dir: string): string[] {
  const out = execFileSync('losetup', ['--json', '--list'], { encoding: 'utf8' }).trim();
  if (!out) return [];
  const parsed = JSON.parse(out) as { loopdevices: Array<{ name: string; 'back-file'?: string | null }> };
  return parsed.loopdevices
    .filter((d) => (d['back-file'] ?? '').replace(/ \(deleted\)$/, '').startsWith(dir + path.sep))
    .map((d) => d.name);
}

/** Where a link points, or undefined. */
export function linkTarget(p: string): string | undefined {
  try {
    return readlinkSync(p);
  } catch {
    return undefined;
  }
}

/** Detach the loop devices of `dataDir`, remove /dev/berth links to them or named by `volumeIds`. */
export function releaseMachine(dataDir: string, volumeIds: readonly string[] = []): void {
  const devices = loopDevicesUnder(dataDir);
  if (existsSync('/dev/berth')) {
    for (const name of readdirSync('/dev/berth')) {
      const link = path.join('/dev/berth', name);
      const target = linkTarget(link);
      if (volumeIds.includes(name) || (target !== undefined && devices.includes(target))) rmSync(link, { force: true });
    }
  }
  for (const device of devices) {
    try {
      execFileSync('losetup', ['--detach', device]);
    } catch {
      // already gone
    }
  }
  for (const id of volumeIds) {
    const link = `/dev/berth/${id}`;
    try {
      if (lstatSync(link).isSymbolicLink()) rmSync(link, { force: true });
    } catch {
      // no link
    }
  }
}

/** In the `postgres` project (vitest.config.ts), a fresh database of the run's cluster; else SQLite (undefined). */
async function projectDatabase(): Promise<string | undefined> {
  const server = inject('berthTestPostgres') as string | undefined;
  return server === undefined ? undefined : createDatabaseOn(server);
}

/** Start a test API (admin, two members in two projects, an agent) on 127.0.0.1, port 0; its store is SQLite, or PostgreSQL in the `postgres` project. */
export async function createTestApi(options: TestApiOptions = {}): Promise<TestApi> {
  const dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-api-test-')));
  let iscsi: TestIscsi | undefined;
  let service: BerthService;
  let storeUrl: string | undefined;
  try {
    iscsi = options.simulatedIscsi === undefined ? undefined : await prepareSimulatedIscsi(dataDir, options.simulatedIscsi.portalHosts);
    storeUrl = options.storeUrl ?? (await projectDatabase());
    service = await openBerth({
      dataDir,
      env: { ...options.env },
      logger: silentLogger,
      ...(iscsi === undefined ? {} : { simulate: true }),
      ...(storeUrl === undefined ? {} : { storeUrl }),
    });
  } catch (error) {
    if (iscsi !== undefined) await stopSimulatedIscsi(dataDir, iscsi);
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  }
  const app = await createApiApp({
    service,
    tokens: TokenTable.fromConfig(testTokenEntries(), {}),
    defaultProject: 'default',
    logger: options.logStream === undefined ? false : { level: 'info', stream: options.logStream },
    defaultMetrics: false,
    ...(options.maxWaitMs === undefined ? {} : { maxWaitMs: options.maxWaitMs }),
    ...(options.agent === undefined ? {} : { agent: options.agent }),
  });
  const url = await app.listen('127.0.0.1', 0);
  const sqliteFile = path.join(dataDir, 'berth.db');
  return {
    url,
    dataDir,
    service,
    app,
    iscsi,
    storeUrl,
    storeEnv: storeUrl === undefined ? {} : { BERTH_STORE_URL: storeUrl },
    async sql(statement) {
      if (storeUrl === undefined) execFileSync('sqlite3', ['-cmd', '.timeout 5000', sqliteFile, statement]);
      else await queryOn(storeUrl, statement);
    },
    openStore: () => (storeUrl === undefined ? openSqliteStore({ filename: sqliteFile }) : openPostgresStore({ url: storeUrl })),
    async request(method, urlPath, req = {}) {
      const headers: Record<string, string> = { ...req.headers };
      if (req.token !== undefined) headers.authorization = `Bearer ${req.token}`;
      let body: string | undefined;
      if (req.json !== undefined) {
        body = JSON.stringify(req.json);
        headers['content-type'] = req.contentType ?? 'application/json';
      } else if (req.raw !== undefined) {
        body = req.raw;
        headers['content-type'] = req.contentType ?? 'application/json';
      }
      const response = await fetch(`${url}${urlPath}`, { method, headers, ...(body === undefined ? {} : { body }) });
      const text = await response.text();
      let parsed: unknown = text;
      try {
        parsed = text === '' ? undefined : JSON.parse(text);
      } catch {
        // not JSON
      }
      return { status: response.status, headers: response.headers, body: parsed, text };
    },
    async cleanup() {
      const volumeIds: string[] = [];
      for (const projectId of ['default', PROJECT_A, PROJECT_B]) {
        try {
          for (const v of await service.listVolumes({ projectId })) volumeIds.push(v.id);
        } catch {
          // closed already
        }
      }
      await app.close().catch(() => undefined);
      await service.close().catch(() => undefined);
      if (iscsi !== undefined) await stopSimulatedIscsi(dataDir, iscsi);
      releaseMachine(dataDir, volumeIds);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** The body of an answer as a record (for reading fields in tests). */
export function bodyOf(answer: TestAnswer): Record<string, unknown> {
  if (typeof answer.body !== 'object' || answer.body === null) throw new Error(`not a JSON object: ${answer.text.slice(0, 200)}`);
  return answer.body as Record<string, unknown>;
}

/** The built `berth` of apps/cli (suites that run it need it built: see README). */
export const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../cli/bin/run.js');

/** What one `berth ... --json` run gave: its exit code and the JSON it printed. */
export interface CliResult {
  exitCode: number;
  json: unknown;
}

const run = promisify(execFile);

/** Run the built `berth` with `--json`, with no BERTH_* variable but those in `env`. */
export async function runCli(args: string[], env: Record<string, string>): Promise<CliResult> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('BERTH_')));
  try {
    const { stdout } = await run(process.execPath, [CLI, ...args, '--json'], { env: { ...clean, ...env }, timeout: 60_000 });
    return { exitCode: 0, json: JSON.parse(stdout) as unknown };
  } catch (error) {
    const failed = error as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof failed.code !== 'number') throw error;
    let json: unknown;
    try {
      json = JSON.parse(failed.stdout ?? '');
    } catch {
      throw new Error(`berth ${args.join(' ')} exited ${failed.code} without JSON: ${failed.stdout ?? ''} ${failed.stderr ?? ''}`);
    }
    return { exitCode: failed.code, json };
  }
}

const PROBLEM_KEYS = new Set(['type', 'title', 'status', 'code', 'detail', 'requestId', 'hint', 'operationId', 'issues', 'details']);

/** Every problem body: the media type, the fields, the request id, and nothing that must not be there. */
export function expectProblem(answer: TestAnswer, status: number, code: string): Record<string, unknown> {
  expect(answer.status).toBe(status);
  expect(answer.headers.get('content-type')).toBe('application/problem+json; charset=utf-8');
  const body = bodyOf(answer);
  expect(body).toMatchObject({ status, code, type: expect.stringMatching(/^urn:berth:error:/), title: expect.any(String), detail: expect.any(String) });
  expect(body.requestId).toBe(answer.headers.get('x-request-id'));
  for (const key of Object.keys(body)) expect(PROBLEM_KEYS.has(key)).toBe(true);
  expect(answer.text).not.toMatch(/at .*\.(js|ts):\d+/);
  expect(answer.text).not.toContain('stack');
  for (const token of Object.values(TOKENS)) expect(answer.text).not.toContain(token);
  return body;
}

/** A log stream for a test API, and everything written to it so far. */
export function captureLogs(): { stream: Writable; text(): string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString('utf8'));
      callback();
    },
  });
  return { stream, text: () => chunks.join('') };
}
