import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BerthError, type BerthService, type Logger } from '@berth/core';
import { REDACT_PATHS } from '@berth/runtime';
import { BERTH_BIN } from '../support/berth-cli.js';
import { sqlite } from '../support/host-state.js';
import { createSimIscsiBerth, type SimIscsiBerth } from '../support/sim-iscsi-berth.js';

// Secrets never leak: a CHAP volume on tgt is attached and detached over iSCSI
// on the simulated host, an attach fails at injected faults, reconcile reconnects a lost session
// (which needs the secrets again) and cleans up an orphan, and the CLI prints what users see.
// Every log line (berth's logger as configured in production, at trace level), every error, every
// journal row, every CLI output and the SQLite files' bytes are searched for the passwords.

const MiB = 1024 * 1024;
const CLI = BERTH_BIN;
const CLI_BUILT = existsSync(path.resolve(path.dirname(CLI), '../dist/commands/reconcile.js'));

let env: SimIscsiBerth;
const lines: string[] = [];
const captured: Array<{ what: string; text: string }> = [];

/** berth's production logger (pino with its redaction paths) writing into `lines`, at trace. */
function collectingLogger(): Logger {
  const stream = { write: (line: string): void => void lines.push(line) };
  return pino({ level: 'trace', base: { app: 'berth' }, redact: { paths: REDACT_PATHS, censor: '***' } }, stream) as unknown as Logger;
}

/** Everything an error shows: message, hint, details, stack, and the same for each cause. */
function errorText(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current !== undefined && depth < 10; depth += 1) {
    if (current instanceof Error) {
      parts.push(current.message, current.stack ?? '');
      if (BerthError.is(current)) parts.push(JSON.stringify(current.toJSON()), current.hint ?? '', JSON.stringify(current.details));
      current = (current as Error & { cause?: unknown }).cause;
    } else {
      parts.push(String(current));
      current = undefined;
    }
  }
  return parts.join('\n');
}

async function expectFailure(what: string, promise: Promise<unknown>): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `${what} should fail`).toBeDefined();
  captured.push({ what: `error of ${what}`, text: errorText(error) });
}

function cli(args: string[]): void {
  const result = spawnSync(process.execPath, [CLI, ...args], {
    env: { ...process.env, ...env.childEnv, BERTH_DATA_DIR: env.dataDir, BERTH_LOG_LEVEL: 'trace' },
    encoding: 'utf8',
    timeout: 60_000,
  });
  captured.push({ what: `berth ${args.join(' ')}`, text: `${result.stdout}\n${result.stderr}` });
  expect(result.status, `berth ${args.join(' ')}: ${result.stderr}`).toBe(0);
}

beforeAll(async () => {
  // One-way CHAP: with mutualChap the real-backed simulated host's disk never appears (reported).
  env = await createSimIscsiBerth({ backendOptions: { chap: true } });
}, 60_000);

afterAll(async () => {
  await env?.cleanup();
}, 60_000);

describe('secrets', () => {
  it('no CHAP password appears in any log line, error, journal row, CLI output or the database file', async () => {
    const logger = collectingLogger();
    const berth = await env.open({ logger });
    await berth.createVolume({ name: 'secret', sizeBytes: 32 * MiB });
    const credentials = await berth.volumeCredentials('secret');
    const secrets = [credentials.auth_password, credentials.auth_password_in].filter((s): s is string => typeof s === 'string');
    expect(secrets).toHaveLength(1);
    // The username is not a secret, but it must reach the target: it is what the logs may show.
    expect(credentials.auth_username).toMatch(/^berth-/);
    for (const secret of secrets) expect(secret.length).toBeGreaterThanOrEqual(12);

    // A whole attach and detach.
    const attached = await berth.attach({ volume: 'secret' });
    captured.push({ what: 'attach outcome', text: JSON.stringify(attached) });
    captured.push({ what: 'detach outcome', text: JSON.stringify(await berth.detach({ volume: 'secret' })) });

    // Attaches that fail where the secrets are in use: after the ACL, after the login.
    for (const point of ['tgt.initialize.after-acl', 'iscsi.connect.after-node-record', 'iscsi.connect.after-login']) {
      const faulty: BerthService = await env.open({ logger, env: { BERTH_FAULTS: `${point}=throw` } });
      await expectFailure(`attach failing at ${point}`, faulty.attach({ volume: 'secret' }));
      await faulty.close();
    }

    // Reconcile: a lost session is reconnected (the secrets are fetched again), an orphan cleaned up.
    const { attachment } = await berth.attach({ volume: 'secret' });
    expect(env.iscsiadm(['-m', 'node', '-T', attachment!.connectionInfo!.data.target_iqn!, '-p', env.portal, '--logout']).exitCode).toBe(0);
    const reconnected = await berth.reconcile!();
    expect(reconnected.counts).toMatchObject({ applied: 1, failed: 0 });
    captured.push({ what: 'reconcile (reconnect) report', text: JSON.stringify(reconnected) });
    sqlite(env.dataDir, `DELETE FROM attachments WHERE id = '${attachment!.id}'`);
    const cleaned = await berth.reconcile!();
    expect(cleaned.counts).toMatchObject({ applied: 3, failed: 0 });
    captured.push({ what: 'reconcile (orphan) report', text: JSON.stringify(cleaned) });

    // A failed detach of a volume that is not attached, a bad extend.
    await expectFailure('detach of a detached volume', berth.detach({ volume: 'secret' }));
    await expectFailure('extend to a smaller size', berth.extendVolume('secret', MiB));
    await berth.attach({ volume: 'secret' });

    // What users list, and the journal of every operation.
    for (const operation of await berth.listOperations()) {
      captured.push({ what: `operation ${operation.kind} ${operation.id}`, text: JSON.stringify(await berth.getOperation(operation.id)) });
    }
    captured.push({ what: 'attachments', text: JSON.stringify(await berth.listAttachments()) });
    captured.push({ what: 'volumes', text: JSON.stringify(await berth.listVolumes()) });
    captured.push({ what: 'hosts', text: JSON.stringify(await berth.listHosts()) });
    captured.push({ what: 'doctor', text: JSON.stringify(await berth.doctor()) });

    if (CLI_BUILT) {
      for (const args of [
        ['volume', 'show', 'secret'],
        ['volume', 'show', 'secret', '--json'],
        ['attachment', 'list', '--json'],
        ['operation', 'list', '--json'],
        ['reconcile', '--dry-run'],
        ['reconcile', '--yes', '--json'],
        ['detach', 'secret', '--json'],
        ['attach', 'secret'],
        ['detach', 'secret'],
      ]) {
        cli(args);
      }
    } else {
      console.log(`the CLI is not built (${CLI}): its output was not checked`);
      await berth.detach({ volume: 'secret' });
    }
    for (const operation of await berth.listOperations()) {
      const full = await berth.getOperation(operation.id);
      for (const step of full.steps) captured.push({ what: `journal row ${operation.kind}/${step.name}`, text: JSON.stringify(step) });
    }
    await berth.deleteVolume('secret');
    await berth.close();

    expect(lines.length).toBeGreaterThan(50);
    const leaks: string[] = [];
    for (const secret of secrets) {
      lines.forEach((line, i) => {
        if (line.includes(secret)) leaks.push(`log line ${i}: ${line.slice(0, 200)}`);
      });
      for (const item of captured) if (item.text.includes(secret)) leaks.push(`${item.what}`);
      for (const suffix of ['', '-wal', '-shm']) {
        const file = path.join(env.dataDir, `berth.db${suffix}`);
        if (existsSync(file) && readFileSync(file).includes(Buffer.from(secret))) leaks.push(`berth.db${suffix}`);
      }
    }
    console.log(`secrets: searched ${lines.length} log lines, ${captured.length} errors/outputs/journal rows and the database for ${secrets.length} passwords`);
    expect(leaks).toEqual([]);
    // Five attaches on the simulated iSCSI host and nine CLI processes: ~35 s on a quiet machine,
    // over 2 minutes on a loaded one (and spawnSync holds the timer until each CLI exits).
  }, 300_000);
});
