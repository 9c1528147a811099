// Issue 10's fleet on one machine: PostgreSQL on 127.0.0.1, two `berth serve` replicas on the
// bridge address, and a `berth agent` in each of two network namespaces (hosts h1, h2) on the loop
// transport. Attaches to a server on each host are connected by that host's agent (its work items,
// its worker), whichever replica took the request; `berth host list` shows both agents; an agent
// that is offline makes an attach fail at its deadline naming the host, with nothing run there;
// an agent token cannot act on another host's work nor call anything but the agent protocol; a
// detach whose disconnect the agent found blocked (untouched) ends attached; an agent SIGKILLed
// mid-`connect` comes back either at once (the step re-runs) or only after the deadline (the step
// is cancelled and undone on its return); `berth reconcile --host h1` finds, through h1's agent, a
// device h1 lost and reconnects it there. Every process, loop device, link, namespace and the
// cluster are removed in afterAll, even when a test fails.
import { readlink, rm } from 'node:fs/promises';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { EXIT_CODES } from '@berth/core';
import type { Attachment, Host, OperationOutcome, ReconcileReport, Server, Volume } from '@berth/core';
import { errorBody } from '../support/berth-cli.js';
import { berthLinkExists, holdOpen, loopDevicesBacking, stopChild } from '../support/loop-devices.js';
import { startManyHosts, type ManyHosts } from '../support/many-hosts.js';

const isRoot = process.getuid?.() === 0;
const HOOK_TIMEOUT_MS = 240_000;
// Short enough that the offline case ends soon, long enough for a loaded 2-core machine.
const OPERATION_TIMEOUT_MS = 20_000;
// Room for an agent restart (node + the CLI's imports, on a loaded machine) inside an undo.
const UNDO_TIMEOUT_MS = 30_000;

interface WorkRow extends Record<string, unknown> {
  step: string;
  state: string;
  attempts: number;
  lease_owner: string | null;
  host: string;
  operation_id: string;
}

describe.skipIf(!isRoot)('many hosts: agents in network namespaces, replicas on PostgreSQL', { timeout: 300_000 }, () => {
  let fleet: ManyHosts | undefined;
  const hostIds = new Map<string, string>();

  beforeAll(async () => {
    fleet = await startManyHosts({
      hosts: 2,
      replicas: 2,
      config: { operationTimeoutMs: OPERATION_TIMEOUT_MS, undoTimeoutMs: UNDO_TIMEOUT_MS, agent: { leaseMs: 6_000, pollWaitMs: 20_000, offlineAfterMs: 45_000 } },
    });
  }, HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await fleet?.cleanup();
  }, HOOK_TIMEOUT_MS);

  function world(): ManyHosts {
    if (fleet === undefined) throw new Error('the fleet did not start');
    return fleet;
  }

  async function workItems(operationId: string): Promise<WorkRow[]> {
    const f = world();
    return f.cluster.query<WorkRow>(
      'select w.step, w.state, w.attempts, w.lease_owner, h.name as host, w.operation_id from work_items w join hosts h on h.id = w.host_id where w.operation_id = $1 order by w.created_at',
      [operationId],
      f.database,
    );
  }

  it('berth host list shows each host with its agent online, its version and worker', async () => {
    const f = world();
    const hosts = await f.json<Host[]>(['host', 'list']);
    for (const name of ['h1', 'h2']) {
      const host = hosts.find((h) => h.name === name);
      expect(host?.agent).toMatchObject({ version: expect.any(String), transports: expect.arrayContaining(['loop']) });
      hostIds.set(name, host?.id ?? '');
    }
    const table = await f.berth(['host', 'list']);
    expect(table.exitCode).toBe(0);
    expect(table.stdout).toMatch(/^h1\s+online\s/m);
    expect(table.stdout).toMatch(/^h2\s+online\s/m);
  });

  it('attaches and detaches a volume to a server on each host: that host\'s agent connects it, through either replica', async () => {
    const f = world();
    const volumes: Volume[] = [];
    for (const [i, name] of ['h1', 'h2'].entries()) {
      await f.json<Server>(['server', 'create', `web-${name}`, '--host', name]);
      volumes.push(await f.json<Volume>(['volume', 'create', '--size', '32MiB', '--name', `data-${name}`], i));
    }
    const attached = await Promise.all(
      ['h1', 'h2'].map((name, i) => f.json<OperationOutcome>(['attach', `data-${name}`, '--server', `web-${name}`], i)),
    );
    for (const [i, name] of ['h1', 'h2'].entries()) {
      const outcome = attached[i]!;
      expect(outcome.operation.state).toBe('succeeded');
      const attachment = outcome.attachment as Attachment;
      expect(attachment.hostId).toBe(hostIds.get(name));
      const device = attachment.device?.path ?? '';
      expect(device).toMatch(/^\/dev\/loop\d+$/);
      expect(loopDevicesBacking(volumes[i]!.providerLocation as string)).toEqual([device]);
      // The host steps ran on that host's agent, as work items its worker claimed once each.
      const items = await workItems(outcome.operation.id);
      expect(items.map((w) => [w.step, w.state, w.host, w.attempts])).toEqual(
        expect.arrayContaining([
          ['connect', 'done', name, 1],
          ['publish', 'done', name, 1],
        ]),
      );
      expect(items.every((w) => w.host === name)).toBe(true);
      expect(f.agents.get(name)?.stderr()).not.toContain(f.agentTokens.get(name) ?? 'no token');
    }

    const detached = await Promise.all(['h1', 'h2'].map((name, i) => f.json<OperationOutcome>(['detach', `data-${name}`], 1 - i)));
    for (const [i, name] of ['h1', 'h2'].entries()) {
      expect(detached[i]!.operation.state).toBe('succeeded');
      expect(detached[i]!.volume.status).toBe('available');
      expect(loopDevicesBacking(volumes[i]!.providerLocation as string)).toEqual([]);
      const items = await workItems(detached[i]!.operation.id);
      expect(items.map((w) => [w.step, w.state, w.host])).toEqual(expect.arrayContaining([['disconnect', 'done', name]]));
    }
  });

  it('an agent token acts on its own host only (another host\'s item is not found to it) and on nothing else; an admin token cannot claim work', async () => {
    const f = world();
    const [foreign] = await f.cluster.query<{ id: string }>(
      "select w.id from work_items w join hosts h on h.id = w.host_id where h.name = 'h2' limit 1",
      [],
      f.database,
    );
    const [own] = await f.cluster.query<{ agent_instance: string }>("select agent_instance from hosts where name = 'h1'", [], f.database);
    expect(foreign?.id).toBeTruthy();
    const answer = await fetch(`${f.replicas[0]!.url}/v1/agent/work/${foreign!.id}/result`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${f.agentTokens.get('h1')}`,
        'berth-agent-worker': own?.agent_instance ?? '',
        'content-type': 'application/json',
      },
      body: JSON.stringify({ state: 'failed', error: { code: 'INTERNAL', message: 'not mine' } }),
    });
    expect(answer.status).toBe(404);
    // And the agent routes are for agent tokens only: an admin cannot claim a host's work.
    const claim = await fetch(`${f.replicas[0]!.url}/v1/agent/work?wait=0s`, {
      headers: { authorization: `Bearer ${f.adminToken}`, 'berth-agent-worker': own?.agent_instance ?? '' },
    });
    expect(claim.status).toBe(403);
    // And an agent token may call nothing but the agent protocol (and its volumes' credentials).
    for (const path of ['/v1/volumes', '/v1/hosts', '/v1/operations']) {
      const read = await fetch(`${f.replicas[0]!.url}${path}`, { headers: { authorization: `Bearer ${f.agentTokens.get('h1')}` } });
      expect(read.status, path).toBe(403);
      expect(((await read.json()) as { hint?: string }).hint).toMatch(/admin or member token/);
    }
  });

  it("a detach whose disconnect on the agent touched nothing (the device held open on h1) rolls back to attached, as a local one does", async () => {
    const f = world();
    await f.json<Server>(['server', 'create', 'web-busy', '--host', 'h1']);
    const volume = await f.json<Volume>(['volume', 'create', '--size', '32MiB', '--name', 'busy-h1']);
    const attached = await f.json<OperationOutcome>(['attach', 'busy-h1', '--server', 'web-busy']);
    const device = attached.attachment?.device?.path ?? '';
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    const holder = holdOpen(device);
    try {
      const run = await f.berth(['detach', 'busy-h1', '--json'], 1);
      expect(run.exitCode).toBe(EXIT_CODES.CONFLICT);
      const error = errorBody(run);
      expect(error.message).toMatch(new RegExp(`on host h1: .*${device} is busy`));
      expect(error.hint).toMatch(/fuser -v/);
      const [attachment] = await f.json<Attachment[]>(['attachment', 'list', '--volume', 'busy-h1']);
      expect(attachment?.status).toBe('attached');
      expect((await f.json<Volume>(['volume', 'show', 'busy-h1'])).status).toBe('in-use');
      expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([device]);
    } finally {
      await stopChild(holder);
    }
    // Nothing was lost: once the holder is gone the detach goes through.
    expect((await f.json<OperationOutcome>(['detach', 'busy-h1'])).operation.state).toBe('succeeded');
    expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([]);
  });

  it('an offline agent: the attach fails at its deadline naming the host, nothing ran there, the volume stays available', async () => {
    const f = world();
    expect(await f.stopAgent('h2')).toBe(0);
    const volume = await f.json<Volume>(['volume', 'create', '--size', '32MiB', '--name', 'late-h2']);
    const run = await f.berth(['attach', 'late-h2', '--server', 'web-h2', '--json']);
    expect(run.exitCode).toBe(EXIT_CODES.TIMEOUT);
    const error = errorBody(run);
    expect(error.code).toBe('TIMEOUT');
    expect(error.message).toContain('h2');
    expect((await f.json<Volume>(['volume', 'show', 'late-h2'])).status).toBe('available');
    expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([]);
    const [operation] = await f.cluster.query<{ id: string; state: string }>(
      "select id, state from operations where kind = 'attach' and volume_id = $1",
      [volume.id],
      f.database,
    );
    expect(operation?.state).toBe('rolled_back');
    const items = await workItems(operation!.id);
    expect(items.map((w) => [w.step, w.state, w.attempts])).toEqual([['connect', 'failed', 0]]);

    // Back online, h2 takes work again (and the cancelled item is never run).
    await f.startAgent('h2');
    const attached = await f.json<OperationOutcome>(['attach', 'late-h2', '--server', 'web-h2']);
    expect(attached.operation.state).toBe('succeeded');
    expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([attached.attachment?.device?.path]);
    expect((await workItems(operation!.id)).map((w) => [w.step, w.state, w.attempts])).toEqual([['connect', 'failed', 0]]);
    expect((await f.json<OperationOutcome>(['detach', 'late-h2'])).operation.state).toBe('succeeded');
  });

  it('an agent SIGKILLed mid-connect (after losetup): its restart re-runs the claimed item, the attach succeeds with one device', async () => {
    const f = world();
    await f.stopAgent('h1');
    const crashing = await f.startAgent('h1', { BERTH_FAULTS: 'loop.connect.after-losetup=crash' });
    const volume = await f.json<Volume>(['volume', 'create', '--size', '32MiB', '--name', 'crash-h1']);
    const attaching = f.json<OperationOutcome>(['attach', 'crash-h1', '--server', 'web-h1']);
    const died = await crashing.child;
    expect(died.signal).toBe('SIGKILL');
    // The new instance registers, the dead one's item goes back to pending, and runs again.
    await f.startAgent('h1');
    const attached = await attaching;
    expect(attached.operation.state).toBe('succeeded');
    const device = attached.attachment?.device?.path;
    expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([device]);
    const connects = (await workItems(attached.operation.id)).filter((w) => w.step === 'connect');
    expect(connects.map((w) => [w.state, w.attempts])).toEqual([['done', 2]]);
    expect((await f.json<OperationOutcome>(['detach', 'crash-h1'])).operation.state).toBe('succeeded');
    expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([]);
  });

  it('an agent SIGKILLed mid-connect and back only after the deadline: the connect is cancelled, its release runs on the return, nothing is left', async () => {
    const f = world();
    await f.stopAgent('h1');
    const crashing = await f.startAgent('h1', { BERTH_FAULTS: 'loop.connect.after-losetup=crash' });
    const volume = await f.json<Volume>(['volume', 'create', '--size', '32MiB', '--name', 'gone-h1']);
    const file = volume.providerLocation as string;
    const attaching = f.berth(['attach', 'gone-h1', '--server', 'web-h1', '--json']);
    expect((await crashing.child).signal).toBe('SIGKILL');
    // The dead agent made the loop device and never reported it.
    expect(loopDevicesBacking(file)).toHaveLength(1);

    // The operation's deadline passes with h1 down: the item it had claimed is cancelled (it ran
    // there: attempts 1) and the undo's `release` waits for the host.
    let operationId = '';
    await vi.waitFor(
      async () => {
        const [operation] = await f.cluster.query<{ id: string }>("select id from operations where kind = 'attach' and volume_id = $1", [volume.id], f.database);
        operationId = operation?.id ?? '';
        expect((await workItems(operationId)).map((w) => [w.step, w.state, w.attempts])).toEqual([
          ['connect', 'failed', 1],
          ['release', 'pending', 0],
        ]);
      },
      { timeout: OPERATION_TIMEOUT_MS + 30_000, interval: 200 },
    );
    expect(loopDevicesBacking(file)).toHaveLength(1);

    // Back within undoTimeoutMs: the new instance runs the release, the attach ends rolled back.
    await f.startAgent('h1');
    const run = await attaching;
    expect(run.exitCode).toBe(EXIT_CODES.TIMEOUT);
    const error = errorBody(run);
    expect(error.code).toBe('TIMEOUT');
    expect(error.message).toContain('h1');
    const [operation] = await f.cluster.query<{ state: string }>('select state from operations where id = $1', [operationId], f.database);
    expect(operation?.state).toBe('rolled_back');
    expect((await workItems(operationId)).map((w) => [w.step, w.state, w.attempts])).toEqual([
      ['connect', 'failed', 1],
      ['release', 'done', 1],
    ]);
    expect(loopDevicesBacking(file)).toEqual([]);
    expect(berthLinkExists(volume.id)).toBe(false);
    expect((await f.json<Volume>(['volume', 'show', 'gone-h1'])).status).toBe('available');

    // Nothing stuck: the next attach and detach of the volume work.
    const attached = await f.json<OperationOutcome>(['attach', 'gone-h1', '--server', 'web-h1']);
    expect(attached.operation.state).toBe('succeeded');
    expect(loopDevicesBacking(file)).toEqual([attached.attachment?.device?.path]);
    expect((await f.json<OperationOutcome>(['detach', 'gone-h1'])).operation.state).toBe('succeeded');
    expect(loopDevicesBacking(file)).toEqual([]);
  });

  it('berth reconcile --host h1: h1\'s agent lists its devices, the device h1 lost is found and reconnected there through the agent', async () => {
    const f = world();
    await f.json<Server>(['server', 'create', 'db-h1', '--host', 'h1']);
    const volume = await f.json<Volume>(['volume', 'create', '--size', '32MiB', '--name', 'lost-h1']);
    const file = volume.providerLocation as string;
    const attached = await f.json<OperationOutcome>(['attach', 'lost-h1', '--server', 'db-h1']);
    const attachmentId = attached.attachment?.id;
    const lost = attached.attachment?.device?.path ?? '';
    expect(loopDevicesBacking(file)).toEqual([lost]);
    // h1 loses the device behind berth's back (what a reboot does): the loop device is gone.
    await execa('losetup', ['--detach', lost]);
    expect(loopDevicesBacking(file)).toEqual([]);

    const plan = await f.json<ReconcileReport>(['reconcile', '--host', 'h1', '--dry-run']);
    expect(plan.differences).toContainEqual(expect.objectContaining({ kind: 'attachment_device_gone', attachmentId, state: 'planned', fix: 'reconnect' }));
    // A dry run changes nothing on the host; its listing was h1's agent's work item.
    expect(loopDevicesBacking(file)).toEqual([]);
    expect((await workItems(plan.operationId ?? '')).map((w) => [w.step, w.state, w.host])).toEqual([
      ['host_facts', 'done', 'h1'],
      ['check_publications', 'done', 'h1'],
      ['host_facts', 'done', 'h1'],
    ]);

    const report = await f.json<ReconcileReport>(['reconcile', '--host', 'h1', '--yes'], 1);
    const fix = report.differences.find((d) => d.kind === 'attachment_device_gone' && d.attachmentId === attachmentId);
    expect(fix?.state).toBe('applied');
    expect(report.counts.failed).toBe(0);
    const now = loopDevicesBacking(file);
    expect(now).toHaveLength(1);
    // Listed, connected and published by h1's agent: work items of the reconcile operation, all on h1.
    const items = await workItems(report.operationId ?? '');
    expect(items.every((w) => w.host === 'h1' && w.state === 'done')).toBe(true);
    expect(items.map((w) => w.step)).toEqual(expect.arrayContaining(['host_facts', 'connect', 'publish']));
    const attachment = (await f.json<Attachment[]>(['attachment', 'list'])).find((a) => a.id === attachmentId);
    expect(attachment).toMatchObject({ status: 'attached', device: { path: now[0] } });

    // Nothing left to fix, and the volume detaches as usual through h1's agent.
    const again = await f.json<ReconcileReport>(['reconcile', '--host', 'h1', '--dry-run']);
    expect(again.differences.filter((d) => d.volumeId === volume.id)).toEqual([]);

    // Its attachment link removed on h1 behind berth's back: h1's agent finds it and makes it again.
    await rm(`/dev/berth/${attachmentId}`);
    const unpublished = await f.json<ReconcileReport>(['reconcile', '--host', 'h1', '--yes'], 1);
    expect(unpublished.differences.filter((d) => d.volumeId === volume.id)).toEqual([
      expect.objectContaining({ kind: 'attachment_not_published', attachmentId, fix: 'republish', state: 'applied' }),
    ]);
    expect((await workItems(unpublished.operationId ?? '')).map((w) => w.step)).toEqual(expect.arrayContaining(['check_publications', 'publish']));
    expect(await readlink(`/dev/berth/${attachmentId}`)).toBe(now[0]);
    expect((await f.json<OperationOutcome>(['detach', 'lost-h1'])).operation.state).toBe('succeeded');
    expect(loopDevicesBacking(file)).toEqual([]);
  });
});
