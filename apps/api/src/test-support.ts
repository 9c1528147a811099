import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { silentLogger, type BerthService } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { createApiApp, type ApiApp } from './app.js';
import { hashToken, TokenTable, type TokenEntry } from './auth.js';

/** The tokens every test API accepts. */
export const TOKENS = {
  admin: 'admin-token-0123456789abcdef',
  memberA: 'member-a-token-0123456789abcdef',
  memberB: 'member-b-token-0123456789abcdef',
  agent: 'agent-token-0123456789abcdef',
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

/** A private API on a temp data dir and a real socket. */
export interface TestApi {
  url: string;
  dataDir: string;
  service: BerthService;
  app: ApiApp;
  request(method: string, urlPath: string, options?: TestRequest): Promise<TestAnswer>;
  /** Close the app and service, detach this data dir's loop devices, remove their links and the dir. */
  cleanup(): Promise<void>;
}

/** Options of `createTestApi`. */
export interface TestApiOptions {
  logStream?: Writable;
  maxWaitMs?: number;
  env?: Record<string, string>;
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

/** Start a test API (admin, two members in two projects, an agent) on 127.0.0.1, port 0. */
export async function createTestApi(options: TestApiOptions = {}): Promise<TestApi> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-api-test-'));
  const service = await openBerth({ dataDir, env: { ...options.env }, logger: silentLogger });
  const app = await createApiApp({
    service,
    tokens: TokenTable.fromConfig(testTokenEntries(), {}),
    defaultProject: 'default',
    logger: options.logStream === undefined ? false : { level: 'info', stream: options.logStream },
    defaultMetrics: false,
    ...(options.maxWaitMs === undefined ? {} : { maxWaitMs: options.maxWaitMs }),
  });
  const url = await app.listen('127.0.0.1', 0);
  return {
    url,
    dataDir,
    service,
    app,
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
