import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiApp, type ApiApp } from './app.js';
import { TokenTable } from './auth.js';
import { stubService } from './test-stub-service.js';
import { testTokenEntries } from './test-support.js';

// `redocly lint` (its built-in recommended rules) on the document the app serves.

const run = promisify(execFile);
const REDOCLY = path.join(path.dirname(createRequire(import.meta.url).resolve('@redocly/cli/package.json')), 'bin', 'cli.js');

let app: ApiApp;
let dir: string;

beforeAll(async () => {
  app = await createApiApp({ service: stubService({}), tokens: TokenTable.fromConfig(testTokenEntries(), {}), defaultProject: 'default', defaultMetrics: false });
  dir = await mkdtemp(path.join(os.tmpdir(), 'berth-openapi-lint-'));
});

afterAll(async () => {
  await app.close();
  await rm(dir, { recursive: true, force: true });
});

interface LintReport {
  totals: { errors: number; warnings: number };
  problems: Array<{ ruleId: string; severity: string; message: string; location?: Array<{ pointer?: string }> }>;
}

describe('redocly lint', () => {
  it('finds neither an error nor a warning in /openapi.json', async () => {
    const file = path.join(dir, 'openapi.json');
    await writeFile(file, (await app.fastify.inject({ method: 'GET', url: '/openapi.json' })).body);
    // No telemetry and no update check: the machine may have no network, and needs none.
    const env = { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_COLOR: '1' };
    const outcome = await run(process.execPath, [REDOCLY, 'lint', file, '--format=json'], { env, cwd: dir, timeout: 120_000 }).catch(
      (error: { stdout?: string; code?: unknown }) => ({ stdout: error.stdout ?? '', code: error.code }),
    );
    const report = JSON.parse(outcome.stdout) as LintReport;
    const problems = report.problems.map((p) => `${p.severity} ${p.ruleId}: ${p.message} at ${p.location?.[0]?.pointer ?? '?'}`);
    expect(problems).toEqual([]);
    expect(report.totals).toMatchObject({ errors: 0, warnings: 0 });
  });
});
