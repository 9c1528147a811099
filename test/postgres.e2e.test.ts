// The built `berth` CLI on a PostgreSQL store (a throwaway cluster for this file) with the loop
// transport on real loop devices: `berth --store postgres://… attach` as a user runs it, and two
// berth processes attaching different volumes at the same time on one database.
import { existsSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { EXIT_CODES } from '@berth/core';
import type { Attachment, OperationOutcome, Volume } from '@berth/core';
import { startPostgresCluster, type PostgresCluster } from '@berth/store/testing';
import { errorBody, makeSandbox, type BerthRun, type BerthSandbox } from './support/berth-cli.js';
import { loopDevicesBacking, removeBerthLinks } from './support/loop-devices.js';
import { sweepOrphanedSandboxes } from './support/orphans.js';

const isRoot = process.getuid?.() === 0;
const TEST_TIMEOUT_MS = 300_000;
const HOOK_TIMEOUT_MS = 120_000;
// Trust authentication ignores it, but it is in the URL a user typed: it must never be printed.
const PASSWORD = 'pg-secret-do-not-print';

describe.skipIf(!isRoot)('berth on a PostgreSQL store (real loop devices)', { timeout: TEST_TIMEOUT_MS }, () => {
  let cluster: PostgresCluster | undefined;
  let sandbox: BerthSandbox;
  let storeUrl: string;
  const volumeIds = new Set<string>();
  const runs: BerthRun[] = [];

  beforeAll(async () => {
    await sweepOrphanedSandboxes();
    cluster = await startPostgresCluster();
  }, HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await cluster?.stop();
  }, HOOK_TIMEOUT_MS);

  beforeEach(async () => {
    if (cluster === undefined) throw new Error('the PostgreSQL cluster did not start');
    const url = new URL(await cluster.createDatabase());
    url.password = PASSWORD;
    storeUrl = url.toString();
    sandbox = await makeSandbox();
  }, HOOK_TIMEOUT_MS);

  afterEach(async () => {
    await sandbox.remove();
    await removeBerthLinks(volumeIds);
    volumeIds.clear();
    for (const run of runs.splice(0)) {
      expect(run.stdout).not.toContain(PASSWORD);
      expect(run.stderr).not.toContain(PASSWORD);
    }
  }, HOOK_TIMEOUT_MS);

  /** `berth --store URL ARGS --json`: exit 0 expected, parsed output returned. */
  async function berth<T>(args: readonly string[]): Promise<T> {
    const run = await sandbox.run(['--store', storeUrl, ...args, '--json']);
    runs.push(run);
    if (run.exitCode !== 0) throw new Error(`berth ${args.join(' ')} exited ${run.exitCode}\n${run.stdout}\n${run.stderr}`);
    return JSON.parse(run.stdout) as T;
  }

  async function createVolume(name: string): Promise<Volume> {
    const volume = await berth<Volume>(['volume', 'create', '--size', '32MiB', '--name', name]);
    volumeIds.add(volume.id);
    return volume;
  }

  it('attaches and detaches a volume with the state in PostgreSQL, and nothing in SQLite', async () => {
    const volume = await createVolume('data1');
    const attached = await berth<OperationOutcome>(['attach', 'data1']);
    expect(attached.operation.state).toBe('succeeded');
    const attachment = attached.attachment as Attachment;
    const device = attachment.device?.path ?? '';
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([device]);

    // Another process reads the same state back from the database.
    const listed = await berth<Attachment[]>(['attachment', 'list']);
    expect(listed.map((a) => [a.id, a.status])).toEqual([[attachment.id, 'attached']]);
    // The rows really are in PostgreSQL, and berth made no SQLite database.
    const database = new URL(storeUrl).pathname.slice(1);
    const rows = await cluster!.query<{ status: string }>('select status from attachments', [], database);
    expect(rows).toEqual([{ status: 'attached' }]);
    expect(existsSync(`${sandbox.dataDir}/berth.db`)).toBe(false);

    const detached = await berth<OperationOutcome>(['detach', 'data1']);
    expect(detached.operation.state).toBe('succeeded');
    expect(detached.volume.status).toBe('available');
    expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([]);
    await berth(['volume', 'delete', 'data1', '--yes']);
  });

  it('two berth processes attach different volumes at the same time on one database', async () => {
    const volumes = [await createVolume('left'), await createVolume('right')];
    const outcomes = await Promise.all(volumes.map((v) => berth<OperationOutcome>(['attach', v.name])));
    for (const outcome of outcomes) expect(outcome.operation.state).toBe('succeeded');
    const devices = outcomes.map((o) => o.attachment?.device?.path);
    expect(new Set(devices).size).toBe(2);
    for (const [index, volume] of volumes.entries()) {
      expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([devices[index]]);
    }
    const listed = await berth<Volume[]>(['volume', 'list']);
    expect(listed.map((v) => [v.name, v.status]).sort()).toEqual([
      ['left', 'in-use'],
      ['right', 'in-use'],
    ]);
    const operations = await berth<Array<{ kind: string; state: string }>>(['operation', 'list']);
    expect(operations.filter((o) => o.kind === 'attach').map((o) => o.state)).toEqual(['succeeded', 'succeeded']);

    const detached = await Promise.all(volumes.map((v) => berth<OperationOutcome>(['detach', v.name])));
    for (const outcome of detached) expect(outcome.operation.state).toBe('succeeded');
    for (const volume of volumes) expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([]);
  });

  it('a store that cannot be reached is UNAVAILABLE (exit 19) with a hint, and the password is not printed', async () => {
    const run = await sandbox.run(['--store', `postgres://berth:${PASSWORD}@127.0.0.1:1/berth`, 'volume', 'list', '--json']);
    runs.push(run);
    expect(run.exitCode).toBe(EXIT_CODES.UNAVAILABLE);
    const error = errorBody(run);
    expect(error.code).toBe('UNAVAILABLE');
    expect(error.message).toContain('postgres://berth:***@127.0.0.1:1/berth');
    expect(error.hint).toBeTruthy();
  });
});
