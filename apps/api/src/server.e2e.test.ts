import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { hashToken } from './auth.js';
import { releaseMachine } from './test-support.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const API_DIR = path.resolve(HERE, '..');
const CLI = path.resolve(HERE, '../../cli/bin/run.js');
const TOKEN = 'process-test-token-0123456789';

interface Started {
  child: ChildProcess;
  url: string;
  stderr: () => string;
}

let dataDir: string | undefined;
const children: ChildProcess[] = [];

afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  }
  if (dataDir !== undefined) {
    releaseMachine(dataDir);
    await rm(dataDir, { recursive: true, force: true });
    dataDir = undefined;
  }
});

function cleanEnv(extra: Record<string, string>): Record<string, string> {
  const env = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => !e[0].startsWith('BERTH_') && e[1] !== undefined));
  return { ...env, ...extra };
}

/** Start a server process and wait (with a deadline) for the line that names its URL. */
async function startProcess(args: string[], env: Record<string, string>): Promise<Started> {
  const child = spawn(process.execPath, args, { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let err = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    err += chunk.toString('utf8');
  });
  child.stdout?.resume();
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no URL within 20 s: ${err}`)), 20_000);
    const check = (): void => {
      const match = /listening on (http:\/\/\S+)/.exec(err);
      if (match?.[1]) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.stderr?.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited ${String(code)}: ${err}`));
    });
  });
  return { child, url, stderr: () => err };
}

async function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  const [code] = (await once(child, 'exit')) as [number | null];
  return code;
}

async function newDataDir(): Promise<string> {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-api-proc-'));
  return dataDir;
}

describe('node apps/api and berth serve', () => {
  it('refuse to start with no tokens configured', async () => {
    const dir = await newDataDir();
    for (const args of [[API_DIR], [CLI, 'serve', '--listen', '127.0.0.1:0']]) {
      const child = spawn(process.execPath, args, { env: cleanEnv({ BERTH_DATA_DIR: dir }), stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      let text = '';
      child.stderr.on('data', (c: Buffer) => (text += c.toString('utf8')));
      child.stdout.on('data', (c: Buffer) => (text += c.toString('utf8')));
      expect(await exitOf(child)).toBe(18);
      expect(text).toContain('no tokens configured');
      expect(text).toContain('BERTH_API_TOKEN');
    }
  });

  it('node apps/api serves with BERTH_API_TOKEN and stops on SIGTERM', async () => {
    const dir = await newDataDir();
    const server = await startProcess([API_DIR], { BERTH_DATA_DIR: dir, BERTH_API_TOKEN: TOKEN, BERTH_API_LISTEN: '127.0.0.1:0' });
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${server.url}/v1/volumes`)).status).toBe(401);
    const listed = await fetch(`${server.url}/v1/volumes`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(await listed.json()).toEqual({ volumes: [] });
    server.child.kill('SIGTERM');
    expect(await exitOf(server.child)).toBe(0);
    expect(server.stderr()).toContain('SIGTERM');
    expect(server.stderr()).not.toContain(TOKEN);
  });

  it('berth serve uses the config\'s hashed tokens and lets an attach in flight finish on SIGTERM', async () => {
    const dir = await newDataDir();
    const member = 'member-token-from-config-0123';
    await writeFile(
      path.join(dir, 'config.json'),
      JSON.stringify({ api: { listen: '127.0.0.1:0', tokens: [{ name: 'ci', sha256: hashToken(member), role: 'member', projectId: 'p1' }] } }),
    );
    const server = await startProcess([CLI, 'serve'], { BERTH_DATA_DIR: dir, BERTH_FAULTS: 'attach.connect.before=delay:800', BERTH_LOG_LEVEL: 'info' });
    const headers = { authorization: `Bearer ${member}`, 'content-type': 'application/json' };
    const created = await fetch(`${server.url}/v1/volumes`, { method: 'POST', headers, body: JSON.stringify({ name: 'v1', sizeBytes: 1048576 }) });
    expect(created.status).toBe(201);
    const attach = await fetch(`${server.url}/v1/volumes/v1/attach`, { method: 'POST', headers, body: '{}' });
    expect(attach.status).toBe(202);
    const operation = (await attach.json()) as { id: string };
    server.child.kill('SIGTERM');
    expect(await exitOf(server.child)).toBe(0);
    expect(server.stderr()).not.toContain(member);

    // After the process is gone, its state says the attach finished, not that it was cut off.
    const service = await openBerth({ dataDir: dir, env: {}, logger: silentLogger });
    try {
      expect((await service.getOperation(operation.id)).state).toBe('succeeded');
      expect((await service.getVolume('v1', { projectId: 'p1' })).status).toBe('in-use');
    } finally {
      await service.close();
    }
  });
});
