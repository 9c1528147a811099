import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { Logger } from '@berth/core';
import { forgetDetached, forgetLeftLogins, leftEntryOf, saveLeftLogins, type LeftLoginEntry, type LeftLoginStates, type LeftPath } from './left-login.js';
import { toPortal } from './target.js';

// The package's build (turbo's `test` depends on it): a child Node process runs the compiled
// module, as the CLI does.
const LEFT_LOGIN = fileURLToPath(new URL('../dist/left-login.js', import.meta.url));

/**
 * A child process whose only pending work is `finishLeftLogin` waiting for a given-up login that
 * never brings a session up (iscsid's bound 1.5 s ahead); the rest of its timers are unref'd, as
 * in the CLI. It prints `finished <outcome>` once the wait is over.
 */
function script(background: boolean): string {
  return `
    import { finishLeftLogin } from ${JSON.stringify(LEFT_LOGIN)};
    const fs = { readdir: async () => [] };
    const lifecycle = { finishLeftLogin: async () => 'closed' };
    const logger = { info() {}, warn() {}, debug() {}, error() {}, child() { return logger; } };
    const failures = { add() {}, size: 0 };
    const now = Date.now();
    const left = {
      target: { iqn: 'iqn.2026-01.test.berth:left', portal: '192.0.2.1:3260', portalText: '192.0.2.1:3260', lun: 1, kernelLun: 1 },
      startedAt: now,
      until: now + 1500,
    };
    setTimeout(() => {}, 60_000).unref();
    const outcome = await finishLeftLogin({ fs, lifecycle, logger }, left, { signal: undefined, failures, wait: true, background: ${String(background)} });
    process.stdout.write('finished ' + outcome);
  `;
}

async function run(background: boolean): Promise<{ code: number | null; out: string; ms: number }> {
  const started = Date.now();
  const child = spawn(process.execPath, ['--input-type=module', '-e', script(background)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, out, ms: Date.now() - started };
}

describe('finishLeftLogin keeps a process alive while a caller waits on it', { timeout: 20_000 }, () => {
  it('a waiting caller (the rollback\'s disconnect): the process stays until the wait is over and the login finished', async () => {
    const result = await run(false);
    // Before, the wait's timers were unref'd: Node exited at once with 13 (an unsettled top-level await).
    expect(result).toMatchObject({ code: 0, out: 'finished done' });
    expect(result.ms).toBeGreaterThanOrEqual(1_400);
  });

  it('the background watcher: does not keep a process that is done alive', async () => {
    const result = await run(true);
    expect(result.code).toBe(13);
    expect(result.out).toBe('');
  });
});

describe('saveLeftLogins / forgetLeftLogins: the left logins in a transport\'s attach state', () => {
  interface State { volumeId: string; device?: string; other?: number; left_logins?: LeftLoginEntry[] }
  /** A store in memory, as `AttachStateFileStore` is on disk. */
  function memoryStates(): LeftLoginStates<State> & { all: Map<string, State>; save(state: State): void } {
    const all = new Map<string, State>();
    return {
      all,
      save: (s) => void all.set(s.volumeId, structuredClone(s)),
      update: async (id, change) => {
        const next = change(structuredClone(all.get(id)));
        if (next === null) all.delete(id);
        else if (next !== undefined) all.set(id, structuredClone(next));
        return all.get(id);
      },
    };
  }
  const logger = { info() {}, warn() {}, debug() {}, error() {}, child() { return logger; } } as unknown as Logger;
  const at = (portal: string, startedAt: number): LeftPath => ({
    target: { iqn: 'iqn.2026-01.test.berth:left', portal: toPortal(portal), portalText: portal, lun: 1, kernelLun: 1 },
    startedAt,
    until: startedAt + 10_000,
  });

  it('a failed connect with no earlier state: a state with only the logins; forgetting the last one removes it', async () => {
    const states = memoryStates();
    const [a, b] = [at('192.0.2.1:3260', 1_000), at('192.0.2.2:3260', 1_000)];
    await saveLeftLogins(states, 'v', () => ({ volumeId: 'v' }), [a, b], logger);
    expect(states.all.get('v')?.left_logins?.map((e) => e.target_portal)).toEqual(['192.0.2.1:3260', '192.0.2.2:3260']);
    await forgetLeftLogins(states, 'v', [a]);
    expect(states.all.get('v')?.left_logins?.map((e) => e.target_portal)).toEqual(['192.0.2.2:3260']);
    await forgetLeftLogins(states, 'v', [b]);
    expect(states.all.has('v')).toBe(false);
  });

  it('an earlier state keeps its device and the rest; one login per portal (the later wins); forgetting the last keeps the state', async () => {
    const states = memoryStates();
    const earlier = at('192.0.2.1:3260', 1_000);
    const previous: State = { volumeId: 'v', device: '/dev/dm-0', other: 7, left_logins: [leftEntryOf(earlier)] };
    states.save(previous);
    const later = at('192.0.2.1:3260', 2_000);
    await saveLeftLogins(states, 'v', () => ({ volumeId: 'v' }), [later], logger);
    expect(states.all.get('v')).toEqual({ ...previous, left_logins: [leftEntryOf(later)] });
    // An entry no longer in the state (the earlier one) changes nothing.
    await forgetLeftLogins(states, 'v', [earlier]);
    expect(states.all.get('v')?.left_logins).toHaveLength(1);
    await forgetLeftLogins(states, 'v', [later]);
    expect(states.all.get('v')).toEqual({ volumeId: 'v', device: '/dev/dm-0', other: 7 });
  });

  describe('forgetDetached: a disconnect takes out what it dealt with, from the state as it is now', () => {
    const deviceless = (state: State): State => {
      const { device: _device, ...rest } = state;
      return rest;
    };

    it('the device it read and the logins it finished: the file goes', async () => {
      const states = memoryStates();
      const a = at('192.0.2.1:3260', 1_000);
      const seen: State = { volumeId: 'v', device: '/dev/sdb', left_logins: [leftEntryOf(a)] };
      states.save(seen);
      await forgetDetached(states, 'v', seen, [a], deviceless);
      expect(states.all.has('v')).toBe(false);
    });

    it('a login kept since it read the state stays, without the device it removed', async () => {
      const states = memoryStates();
      const seen: State = { volumeId: 'v', device: '/dev/sdb', other: 7 };
      const kept = at('192.0.2.2:3260', 2_000);
      states.save({ ...seen, left_logins: [leftEntryOf(kept)] });
      await forgetDetached(states, 'v', seen, [], deviceless);
      expect(states.all.get('v')).toEqual({ volumeId: 'v', other: 7, left_logins: [leftEntryOf(kept)] });
    });

    it('a device another connect recorded since it read the state stays, with the logins it did not finish', async () => {
      const states = memoryStates();
      const [a, b] = [at('192.0.2.1:3260', 1_000), at('192.0.2.2:3260', 2_000)];
      const seen: State = { volumeId: 'v', left_logins: [leftEntryOf(a)] };
      states.save({ volumeId: 'v', device: '/dev/sdc', left_logins: [leftEntryOf(a), leftEntryOf(b)] });
      await forgetDetached(states, 'v', seen, [a], deviceless);
      expect(states.all.get('v')).toEqual({ volumeId: 'v', device: '/dev/sdc', left_logins: [leftEntryOf(b)] });
      await forgetDetached(states, 'v', seen, [b], deviceless);
      expect(states.all.get('v')).toEqual({ volumeId: 'v', device: '/dev/sdc' });
    });
  });
});
