import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { loadConfigs } from './open-berth.js';

async function refusal(run: Promise<unknown>): Promise<BerthError> {
  const error = await run.then(
    () => new Error('accepted'),
    (e: unknown) => e,
  );
  if (!BerthError.is(error)) throw error;
  return error;
}

describe('loadConfigs with a bad config', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'berth-loadcfg-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses <data dir>/config.json (read by default) with CONFIG, naming that file and each bad key', async () => {
    const file = path.join(dir, 'config.json');
    await writeFile(file, JSON.stringify({ bogusKey: 1, operationTimeoutMs: -5 }));
    const error = await refusal(loadConfigs({ dataDir: dir, env: {} }));
    expect(error.code).toBe('CONFIG');
    expect(error.message).toContain(`invalid config file ${file}: `);
    expect(error.message).toContain('bogusKey: unknown key');
    expect(error.message).toContain('operationTimeoutMs: must be greater than 0');
    expect(error.hint).toContain(`in ${file}`);
  });

  it('names the file given with configFile, and the simulate section by its path', async () => {
    const file = path.join(dir, 'other.json');
    await writeFile(file, JSON.stringify({ simulate: { enabled: 'yes', nope: 1 } }));
    const error = await refusal(loadConfigs({ dataDir: dir, configFile: file, env: {} }));
    expect(error.code).toBe('CONFIG');
    expect(error.message).toContain(`invalid config file ${file}: `);
    expect(error.message).toContain('simulate.enabled: must be a boolean, not a string');
    expect(error.message).toContain('simulate.nope: unknown key');
  });

  it('says a bad BERTH_STORE_URL or --store came from there, with no password in the message', async () => {
    const fromEnv = await refusal(loadConfigs({ dataDir: dir, env: { BERTH_STORE_URL: 'mysql://root:hunter2@db/berth' } }));
    expect(fromEnv.code).toBe('CONFIG');
    expect(fromEnv.message).toMatch(/^invalid BERTH_STORE_URL: store\.url: /);
    expect(fromEnv.hint).toBe('fix or unset BERTH_STORE_URL');
    const fromFlag = await refusal(loadConfigs({ dataDir: dir, storeUrl: 'mysql://root:hunter2@db/berth', env: {} }));
    expect(fromFlag.message).toMatch(/^invalid --store: store\.url: /);
    for (const error of [fromEnv, fromFlag]) expect(JSON.stringify(error.toJSON())).not.toContain('hunter2');
  });
});
