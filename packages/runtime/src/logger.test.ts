import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fillFileSystem } from '@berth/host/testing';
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

  describe('a log file that cannot be written', () => {
    const mounts: string[] = [];
    afterAll(() => {
      // Lazily: the loggers of these tests keep their log files open.
      for (const mount of mounts.splice(0).reverse()) execFileSync('umount', ['--lazy', mount]);
    });

    /** A real small tmpfs, unmounted after these tests. */
    async function tmpfs(name: string): Promise<string> {
      const dir = await mkdtemp(join(tmpdir(), `berth-logger-${name}-`));
      dirs.push(dir);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', `berth-logger-${name}`, dir]);
      mounts.push(dir);
      return dir;
    }


    it('on a full disk drops the line with one notice, never throws, and writes again once there is room', async () => {
      const dir = await tmpfs('full');
      const file = join(dir, 'logs', 'berth.log');
      // The file exists already (an earlier command made it), as on a data dir that filled up.
      createLogger('warn', file).warn({ step: 'before' }, 'room');
      const filler = fillFileSystem(dir);
      const notices: string[] = [];
      const logger = createLogger('warn', file, (text) => notices.push(text));
      expect(() => logger.warn({ step: 'open' }, 'the berth database is open read-only')).not.toThrow();
      expect(() => logger.child({ component: 'host' }).error({ step: 'again' }, 'x'.repeat(8192))).not.toThrow();
      expect(notices).toEqual([`berth: cannot write the log file ${file} (ENOSPC); its log lines are dropped`]);
      rmSync(filler);
      logger.warn({ step: 'after' }, 'room again');
      const lines = (await readFile(file, 'utf8')).split('\n').filter((line) => line.length > 0);
      // Whatever part of a refused line reached the file stays on its own line: the others parse.
      expect(lines[0]).toContain('"msg":"room"');
      expect(JSON.parse(lines.at(-1)!)).toEqual(expect.objectContaining({ step: 'after', msg: 'room again' }));
      expect(notices).toHaveLength(1);
    });

    it('on a data dir remounted read-only drops the line with one notice', async () => {
      const dir = await mkdtemp(join(tmpdir(), 'berth-logger-ro-'));
      dirs.push(dir);
      const file = join(dir, 'logs', 'berth.log');
      createLogger('warn', file).warn({ step: 'before' }, 'writable');
      execFileSync('mount', ['--bind', dir, dir]);
      mounts.push(dir);
      execFileSync('mount', ['-o', 'remount,ro,bind', dir]);
      const notices: string[] = [];
      const logger = createLogger('warn', file, (text) => notices.push(text));
      expect(() => logger.warn({ step: 'open' }, 'read-only')).not.toThrow();
      expect(() => logger.warn({ step: 'open' }, 'read-only again')).not.toThrow();
      expect(notices).toEqual([`berth: cannot write the log file ${file} (EROFS); its log lines are dropped`]);
      expect((await readFile(file, 'utf8')).trim().split('\n')).toHaveLength(1);
    });
  });
});
