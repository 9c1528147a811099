import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Operation, ReconcileReport, Volume } from '@berth/core';
import { bodyOf, CLI, createTestApi, loopDevicesUnder, PROJECT_A, runCli, TOKENS, type TestApi } from './test-support.js';

// `POST /v1/reconcile` and `berth reconcile --api URL`: differences made on purpose behind berth's
// back (a status written into the database by hand, a volume file attached with losetup by hand)
// are found by a dry run, which changes nothing, and fixed by a real run. Admin only.

const MiB = 1024 * 1024;
let t: TestApi;
let attached: Volume;
let spare: Volume;
const handMade: Array<{ device: string; file: string }> = [];

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`build the CLI first (cd apps/cli && npx tsc -p tsconfig.build.json): ${CLI} is missing`);
  t = await createTestApi();
  const token = TOKENS.memberA;
  await t.request('POST', '/v1/servers', { token, json: { name: 'web1' } });
  attached = (await t.request('POST', '/v1/volumes', { token, json: { name: 'r1', sizeBytes: 16 * MiB } })).body as Volume;
  spare = (await t.request('POST', '/v1/volumes', { token, json: { name: 'r2', sizeBytes: 16 * MiB } })).body as Volume;
  const attach = await t.request('POST', '/v1/servers/web1/volume-attachments', { token, json: { volumeId: 'r1' } });
  const done = await t.request('GET', `/v1/operations/${String(bodyOf(attach).id)}?wait=30s`, { token });
  expect(bodyOf(done).state).toBe('succeeded');
});

afterAll(async () => {
  for (const { device, file } of handMade) {
    try {
      // Reconcile detached it, and the number may be another test's loop device by now: only ours goes.
      const backing = execFileSync('losetup', ['--noheadings', '--output', 'BACK-FILE', device], { encoding: 'utf8' }).trim();
      if (backing === file) execFileSync('losetup', ['--detach', device], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  }
  await t?.cleanup();
});

/** Write a volume's status into the database by hand, as nothing in berth would. */
async function setStatusBehindBerthsBack(volumeId: string, status: string): Promise<void> {
  await t.sql(`UPDATE volumes SET status = '${status}' WHERE id = '${volumeId}'`);
}

/** Attach a volume file to a loop device by hand, as an operator might. */
function losetupByHand(file: string): string {
  const device = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  handMade.push({ device, file });
  return device;
}

async function reconcile(json: unknown, token: string = TOKENS.admin): Promise<{ status: number; report: ReconcileReport }> {
  const answer = await t.request('POST', '/v1/reconcile', { token, json });
  return { status: answer.status, report: answer.body as ReconcileReport };
}

const kinds = (report: ReconcileReport): string[] => report.differences.map((d) => `${d.kind}:${d.fix}:${d.state}`);

async function statusOf(volume: Volume): Promise<string> {
  return (await t.service.getVolume(volume.id, { projectId: PROJECT_A })).status;
}

describe('POST /v1/reconcile', () => {
  it('finds differences made behind berth\'s back with a dry run, changing nothing, and fixes them with a real run', async () => {
    expect(await statusOf(attached)).toBe('in-use');
    await setStatusBehindBerthsBack(attached.id, 'available');
    const byHand = losetupByHand(spare.providerLocation!);
    const operationsBefore = await t.service.listOperations();

    const dry = await reconcile({ dryRun: true });
    expect(dry.status).toBe(200);
    expect(kinds(dry.report)).toEqual(['device_without_attachment:disconnect:planned', 'volume_status_mismatch:recompute_status:planned']);
    expect(dry.report).toMatchObject({ dryRun: true, operationId: null, counts: { found: 2, applied: 0, failed: 0, skipped: 0 } });
    expect(dry.report.differences[0]).toMatchObject({ volumeId: spare.id, resource: `${byHand} (backing ${spare.providerLocation})` });
    expect(dry.report.differences[1]).toMatchObject({ volumeId: attached.id, detail: 'volume r1 is available, but its attachments make it in-use' });
    // A dry run changed nothing: the wrong status, the device made by hand, no new operation.
    expect(await statusOf(attached)).toBe('available');
    expect(loopDevicesUnder(t.dataDir)).toContain(byHand);
    expect(await t.service.listOperations()).toEqual(operationsBefore);

    const real = await reconcile({});
    expect(real.status).toBe(200);
    expect(kinds(real.report)).toEqual(['device_without_attachment:disconnect:applied', 'volume_status_mismatch:recompute_status:applied']);
    expect(real.report).toMatchObject({ dryRun: false, counts: { found: 2, applied: 2, failed: 0, skipped: 0 } });
    expect(await statusOf(attached)).toBe('in-use');
    expect(await statusOf(spare)).toBe('available');
    expect(loopDevicesUnder(t.dataDir)).not.toContain(byHand);
    // The attached volume's own device was left alone.
    const [attachment] = await t.service.listAttachments({ projectId: PROJECT_A, volume: attached.id });
    expect(loopDevicesUnder(t.dataDir)).toEqual([attachment?.device?.path]);

    // The fixes are journalled as one `reconcile` operation: an admin sees it.
    const operationId = real.report.operationId!;
    const journal = await t.request('GET', `/v1/operations/${operationId}`, { token: TOKENS.admin });
    expect(journal.status).toBe(200);
    const operation = journal.body as Operation;
    expect(operation).toMatchObject({ kind: 'reconcile', state: 'succeeded', volumeId: null });
    expect(operation.steps.map((s) => `${s.name}:${s.state}`)).toEqual(['disconnect:done', 'recompute_status:done']);
    // It carries no project, so a member sees it neither by id nor in the list.
    expect((await t.request('GET', `/v1/operations/${operationId}`, { token: TOKENS.memberA })).status).toBe(404);
    const listed = bodyOf(await t.request('GET', '/v1/operations', { token: TOKENS.memberA })).operations as Operation[];
    expect(listed.map((o) => o.kind)).not.toContain('reconcile');
    expect(listed.length).toBeGreaterThan(0);

    expect((await reconcile({ dryRun: true })).report.differences).toEqual([]);
  });

  it('is for admin tokens only, and takes only {dryRun}', async () => {
    await setStatusBehindBerthsBack(attached.id, 'available');
    try {
      for (const token of [TOKENS.memberA, TOKENS.agent]) {
        const refused = await t.request('POST', '/v1/reconcile', { token, json: {} });
        expect(refused.status).toBe(403);
        expect(bodyOf(refused)).toMatchObject({ code: 'FORBIDDEN', status: 403 });
      }
      expect((await t.request('POST', '/v1/reconcile', { json: { dryRun: true } })).status).toBe(401);
      for (const body of [{ dryRun: 'yes' }, { dryRun: true, force: true }, [true]]) {
        const bad = await t.request('POST', '/v1/reconcile', { token: TOKENS.admin, json: body });
        expect(bad.status).toBe(400);
        expect(bodyOf(bad).code).toBe('VALIDATION');
      }
      expect((await t.request('POST', '/v1/reconcile?dryRun=true', { token: TOKENS.admin, json: {} })).status).toBe(400);
      // None of them changed anything.
      expect(await statusOf(attached)).toBe('available');
    } finally {
      await setStatusBehindBerthsBack(attached.id, 'in-use');
    }
  });
});

describe('berth reconcile --api URL', () => {
  it('lists with --dry-run what embedded mode lists on the same data dir, then fixes it; a member token exits FORBIDDEN', async () => {
    await setStatusBehindBerthsBack(attached.id, 'available');
    const remote = { BERTH_TOKEN: TOKENS.admin };

    const dry = await runCli(['reconcile', '--dry-run', '--api', t.url], remote);
    expect(dry.exitCode).toBe(0);
    const report = dry.json as ReconcileReport;
    expect(kinds(report)).toEqual(['volume_status_mismatch:recompute_status:planned']);
    expect(await statusOf(attached)).toBe('available');
    // The embedded CLI, a second berth on the same data dir (and store), sees exactly the same.
    const embedded = await runCli(['reconcile', '--dry-run'], { BERTH_DATA_DIR: t.dataDir, ...t.storeEnv });
    expect(embedded).toEqual(dry);

    const forbidden = await runCli(['reconcile', '--yes', '--api', t.url], { BERTH_TOKEN: TOKENS.memberA });
    expect(forbidden.exitCode).toBe(8);
    expect(forbidden.json).toMatchObject({ error: { code: 'FORBIDDEN' } });
    expect(await statusOf(attached)).toBe('available');

    const real = await runCli(['reconcile', '--yes', '--api', t.url], remote);
    expect(real.exitCode).toBe(0);
    expect(kinds(real.json as ReconcileReport)).toEqual(['volume_status_mismatch:recompute_status:applied']);
    expect(await statusOf(attached)).toBe('in-use');
    expect(((await runCli(['reconcile', '--dry-run', '--api', t.url], remote)).json as ReconcileReport).differences).toEqual([]);
  });
});
