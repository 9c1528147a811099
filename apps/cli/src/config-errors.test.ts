// The built `berth` (bin/run.js, as a user runs it) on a bad config file: exit 18 (CONFIG), the
// file and each bad key named, a hint, and `--json` in the usual `{"error": {code, message, hint}}`.
// Needs the build (`npx turbo run build`): the bin runs dist/.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EXIT_CODES } from '@berth/core/errors';

const BERTH_BIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'run.js');
// The machine may be busy (CI beside it): a start takes a second or two there.
const TIMEOUT_MS = 60_000;

interface Run {
  exitCode: number;
  stdout: string;
  stderr: string;
}

describe('berth with a bad config file', { timeout: TIMEOUT_MS }, () => {
  let root: string;
  let dataDir: string;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'berth-cli-config-'));
    dataDir = join(root, 'data');
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  function berth(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
    const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('BERTH_') && name !== 'DEBUG'));
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [BERTH_BIN, ...args],
        { env: { ...inherited, HOME: join(root, 'home'), XDG_DATA_HOME: join(root, 'home', 'share'), NO_COLOR: '1', BERTH_DATA_DIR: dataDir, ...env }, timeout: TIMEOUT_MS },
        (error, stdout, stderr) => {
          const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
          resolve({ exitCode: code, stdout, stderr });
        },
      );
    });
  }

  it('given with --config: exits 18 naming the file and each bad key, with a hint; --json keeps the error shape', async () => {
    const file = join(root, 'c.json');
    await writeFile(file, JSON.stringify({ bogusKey: 1, operationTimeoutMs: -5 }));

    const human = await berth(['volume', 'list', '--config', file]);
    expect(human.exitCode).toBe(EXIT_CODES.CONFIG);
    expect(human.stderr).toContain(`Error: invalid config file ${file}: `);
    expect(human.stderr).toContain('bogusKey: unknown key');
    expect(human.stderr).toContain('operationTimeoutMs: must be greater than 0');
    expect(human.stderr).toMatch(new RegExp(`Hint: fix or remove .* in ${file.replaceAll('/', '\\/')}`));
    expect(human.stderr).not.toMatch(/\n\s+at /);

    const json = await berth(['volume', 'list', '--config', file, '--json']);
    expect(json.exitCode).toBe(EXIT_CODES.CONFIG);
    const body = JSON.parse(json.stdout) as { error: { code: string; message: string; hint: string } };
    expect(Object.keys(body)).toEqual(['error']);
    expect(body.error).toEqual({ code: 'CONFIG', message: expect.stringContaining(file), hint: expect.stringContaining(file) });
    expect(body.error.message).toContain('bogusKey: unknown key');
  });

  it('read by default from <data dir>/config.json: the same, naming that file', async () => {
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dataDir, { recursive: true });
    const file = join(dataDir, 'config.json');
    await writeFile(file, JSON.stringify({ logLevel: 'loud' }));
    const run = await berth(['volume', 'list', '--json']);
    expect(run.exitCode).toBe(EXIT_CODES.CONFIG);
    const body = JSON.parse(run.stdout) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('CONFIG');
    expect(body.error.message).toContain(`invalid config file ${file}: logLevel: must be one of trace, debug`);
  });

  it('a config file that is not JSON: exits 18 naming it, with a hint, and never echoes its text (a store URL\'s password)', async () => {
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dataDir, { recursive: true });
    const file = join(dataDir, 'config.json');
    await writeFile(file, '{"store": {"kind": "postgres", "url": "postgres://u:hunter2@db/berth"},, }');
    const run = await berth(['volume', 'list']);
    expect(run.exitCode).toBe(EXIT_CODES.CONFIG);
    expect(run.stderr).toContain(`Error: config file ${file} is not valid JSON`);
    expect(run.stderr).toContain('Hint: fix it');
    expect(run.stdout + run.stderr).not.toContain('hunter2');
  });

  it('a bad BERTH_STORE_URL: exits 18 saying it came from there, without its password', async () => {
    const run = await berth(['volume', 'list'], { BERTH_STORE_URL: 'mysql://root:hunter2@db/berth' });
    expect(run.exitCode).toBe(EXIT_CODES.CONFIG);
    expect(run.stderr).toContain('Error: invalid BERTH_STORE_URL: store.url: must be a postgres://');
    expect(run.stderr).toContain('Hint: fix or unset BERTH_STORE_URL');
    expect(run.stdout + run.stderr).not.toContain('hunter2');
  });

  it('an API URL ending in /v1 is CONFIG saying so (berth adds /v1 itself), not "no route GET /v1/v1/…"', async () => {
    const run = await berth(['volume', 'list'], { BERTH_API_URL: 'http://127.0.0.1:1/v1' });
    expect(run.exitCode).toBe(EXIT_CODES.CONFIG);
    expect(run.stderr).toContain('ends in /v1');
    expect(run.stderr).toContain('http://127.0.0.1:1 (berth adds /v1');
  });

  it('BERTH_API_URL with several replicas, comma-separated: one that refuses the connection is passed over for the next', async () => {
    const seen: string[] = [];
    const live = http.createServer((request, response) => {
      seen.push(`${request.method} ${request.url}`);
      response.writeHead(401, { 'content-type': 'application/problem+json' }).end(JSON.stringify({ code: 'UNAUTHENTICATED', detail: 'no token from the stub', status: 401 }));
    });
    const listen = (server: http.Server): Promise<number> =>
      new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
    const livePort = await listen(live);
    const probe = http.createServer();
    const deadPort = await listen(probe);
    await new Promise((resolve) => probe.close(resolve));
    try {
      const run = await berth(['volume', 'list'], { BERTH_API_URL: `http://127.0.0.1:${deadPort},http://127.0.0.1:${livePort}` });
      // The stub's answer, not "is not a URL" (CONFIG): the CLI reached the second replica.
      expect(run.stderr).not.toContain('is not a URL');
      expect(run.stderr).toContain('no token from the stub');
      expect(run.exitCode).toBe(EXIT_CODES.UNAUTHENTICATED);
      expect(seen.length).toBeGreaterThan(0);
      const empty = await berth(['volume', 'list'], { BERTH_API_URL: `http://127.0.0.1:${livePort},` });
      expect(empty.exitCode).toBe(EXIT_CODES.CONFIG);
      expect(empty.stderr).toContain('has an empty URL');
    } finally {
      live.closeAllConnections();
      await new Promise((resolve) => live.close(resolve));
    }
  });
});
