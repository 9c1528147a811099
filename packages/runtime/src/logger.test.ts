import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from './logger.js';

describe('createLogger', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  async function logFile(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'berth-logger-'));
    dirs.push(dir);
    return join(dir, 'logs', 'berth.log');
  }

  it('makes no log file while nothing reaches the level, then writes the first line that does', async () => {
    const file = await logFile();
    const logger = createLogger('warn', file);
    const child = logger.child({ component: 'host' });
    logger.info({ step: 'quiet' }, 'below warn');
    child.debug({ step: 'quiet' });
    expect(existsSync(file)).toBe(false);
    child.warn({ step: 'initialize', auth_password: 'hunter2' }, 'the file is gone');
    const lines = (await readFile(file, 'utf8')).trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines).toEqual([expect.objectContaining({ level: 40, component: 'host', step: 'initialize', auth_password: '***', msg: 'the file is gone' })]);
  });

  it('writes nothing at silent', async () => {
    const file = await logFile();
    createLogger('silent', file).error({ step: 'x' });
    expect(existsSync(file)).toBe(false);
  });
});
