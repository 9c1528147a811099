import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

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
