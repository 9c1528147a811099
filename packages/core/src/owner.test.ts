import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { processStartTicksSync } from '@berth/host';
import { killedWithCommand } from '@berth/host/testing';
import { describe, expect, it, vi } from 'vitest';
import { commandsEnded, ownerAlive, ownerState } from './owner.js';

describe('ownerState', () => {
  it('names this process, another host\'s and a dead one', () => {
    const self = `${process.pid}@${hostname()}`;
    expect(ownerState(self, hostname(), self)).toEqual({ state: 'alive' });
    expect(ownerState('1@elsewhere', hostname(), self)).toEqual({ state: 'alive' });
    expect(ownerState(null, hostname(), self)).toEqual({ state: 'dead' });
    expect(ownerState('nobody', hostname(), self)).toEqual({ state: 'dead' });
  });

  it('tells an owner from a process that reuses its pid: the start time it names must match', () => {
    const ticks = processStartTicksSync(process.pid);
    expect(ownerState(`${process.pid}@${hostname()}#${ticks}/token`, hostname(), 'me')).toEqual({ state: 'alive' });
    // This pid, another start time: the owner died and the kernel gave its pid to this process.
    expect(ownerState(`${process.pid}@${hostname()}#1/token`, hostname(), 'me')).toEqual({ state: 'dead' });
    // An owner written by an older berth names no start time: the pid alone decides.
    expect(ownerState(`${process.pid}@${hostname()}`, hostname(), 'me')).toEqual({ state: 'alive' });
    // Another host's, whatever it names.
    expect(ownerState(`1@elsewhere#5`, hostname(), 'me')).toEqual({ state: 'alive' });
  });

  it('calls a zombie owner dead (its parent never reaped it)', async () => {
    // A child that exits at once, of a parent that never waits for it (a shell's `cmd &` before
    // `exec` may be reaped by the shell itself: not a sure zombie).
    const script = 'import os, sys, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint(pid, flush=True)\ntime.sleep(30)\n';
    const parent = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const [chunk] = (await once(parent.stdout!, 'data')) as [Buffer];
      const zombie = Number(chunk.toString().trim());
      await vi.waitFor(async () => expect((await readFile(`/proc/${zombie}/stat`, 'utf8')).split(') ')[1]?.[0]).toBe('Z'), { timeout: 10_000 });
      expect(ownerState(`${zombie}@${hostname()}`, hostname(), 'me')).toEqual({ state: 'dead' });
    } finally {
      parent.kill('SIGKILL');
    }
  }, 20_000);

  it('counts a SIGKILLed owner whose command still runs as acting, until the command ended', async () => {
    const killed = await killedWithCommand({ timeoutMs: 20_000 });
    const owner = `${killed.pid}@${hostname()}/token`;
    try {
      expect(existsSync(`/proc/${killed.pid}`)).toBe(false);
      expect(ownerState(owner, hostname(), 'me')).toEqual({ state: 'commands', pid: killed.pid });
      expect(ownerAlive(owner, hostname(), 'me')).toBe(true);
      expect(await commandsEnded(killed.pid, 200)).toBe(false);
      await killed.finish();
      expect(await commandsEnded(killed.pid, 10_000)).toBe(true);
      expect(ownerState(owner, hostname(), 'me')).toEqual({ state: 'dead' });
    } finally {
      await killed.dispose();
    }
  }, 30_000);
});
