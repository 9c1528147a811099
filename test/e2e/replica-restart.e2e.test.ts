// The single-replica fleet's restart: PostgreSQL, one `berth serve` and one agent in a network
// namespace. An attach is parked right after its `connect` ran on the agent's host; the replica is
// SIGKILLed and started again on the same address. Its recovery rolls the attach back, and the
// undos (`unpublish`, `release`) are host steps only the agent can run — the agent reaches berth
// only through this replica. So the replica must listen before it recovers: it used to recover
// first, waiting for the agent until each undo timed out, then listened with the volume in
// `error` and the loop device left on the host. Now the attach rolls back, nothing is left on h1,
// and the next attach and detach work.
//
// And an agent given every replica's URL (`--api URL1,URL2`, no load balancer in front): when the
// replica it talks to is SIGKILLed, it goes on with the other, and attaches to its host still work.
import { describe, expect, it, vi } from 'vitest';
import type { OperationOutcome, Server, Volume } from '@berth/core';
import { berthLinkExists, loopDevicesBacking } from '../support/loop-devices.js';
import { useManyHosts } from '../support/many-hosts.js';

const isRoot = process.getuid?.() === 0;
const HOOK_TIMEOUT_MS = 240_000;
// Long enough that the parked attach is still running when the replica is killed, on any load.
const PARK_MS = 120_000;

interface ItemRow extends Record<string, unknown> {
  step: string;
  state: string;
}

describe.skipIf(!isRoot)('replica restart: the only replica SIGKILLed with an attach in flight on an agent', { timeout: 360_000 }, () => {
  const volumeIds: string[] = [];
  const world = useManyHosts(
    {
      hosts: 1,
      replicas: 1,
      config: { operationTimeoutMs: 200_000, undoTimeoutMs: 30_000, agent: { leaseMs: 6_000, pollWaitMs: 20_000, offlineAfterMs: 45_000 } },
      replicaEnvs: [{ BERTH_FAULTS: `attach.connect.after=delay:${PARK_MS}` }],
    },
    () => volumeIds,
    HOOK_TIMEOUT_MS,
  );

  async function api<T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const f = world();
    const answer = await fetch(`${f.replicas[0]!.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${f.adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: answer.status, body: (await answer.json()) as T };
  }

  it('the restarted replica listens, then rolls the attach back through the agent: nothing is left on the host', async () => {
    const f = world();
    await f.json<Server>(['server', 'create', 'web-1', '--host', 'h1']);
    const created = await api<Volume>('POST', '/v1/volumes', { name: 'restart-1', sizeBytes: 32 * 1024 * 1024 });
    expect(created.status).toBe(201);
    const volume = created.body;
    volumeIds.push(volume.id);
    const file = volume.providerLocation as string;

    const started = await api<{ id: string }>('POST', `/v1/volumes/${volume.id}/attach`, { server: 'web-1' });
    expect(started.status).toBe(202);
    const id = started.body.id;
    // Parked after `connect`: the agent made the loop device on h1 and the device is recorded.
    await vi.waitFor(
      async () => {
        const connected = await f.cluster.query<{ id: string }>(
          'select o.id from operations o join attachments a on a.id = o.attachment_id where o.id = $1 and a.device is not null',
          [id],
          f.database,
        );
        expect(connected).toHaveLength(1);
      },
      { timeout: 120_000, interval: 200 },
    );
    expect(loopDevicesBacking(file)).toHaveLength(1);

    // Killed and started again on the same address, without the fault: the agent's URL still works.
    await f.restartReplica(0);
    const outcome = await api<{ state: string }>('GET', `/v1/operations/${id}?wait=120s`);
    expect(outcome.body.state).toBe('rolled_back');
    const items = await f.cluster.query<ItemRow>('select step, state from work_items where operation_id = $1 order by created_at', [id], f.database);
    expect(items.map((w) => [w.step, w.state])).toEqual([
      ['connect', 'done'],
      ['release', 'done'],
    ]);
    expect(loopDevicesBacking(file)).toEqual([]);
    expect(berthLinkExists(volume.id)).toBe(false);
    expect((await f.json<Volume>(['volume', 'show', volume.id])).status).toBe('available');

    // And the fleet works on: an attach and a detach through the restarted replica.
    const again = await f.json<OperationOutcome>(['attach', volume.id, '--server', 'web-1']);
    expect(again.operation.state).toBe('succeeded');
    expect(loopDevicesBacking(file)).toEqual([again.attachment?.device?.path]);
    expect((await f.json<OperationOutcome>(['detach', volume.id])).operation.state).toBe('succeeded');
    expect(loopDevicesBacking(file)).toEqual([]);
  });
});

describe.skipIf(!isRoot)('an agent given both replicas goes on with the other when its replica dies', { timeout: 360_000 }, () => {
  const volumeIds: string[] = [];
  const world = useManyHosts(
    {
      hosts: 1,
      replicas: 2,
      agentApi: 'all',
      config: { operationTimeoutMs: 60_000, undoTimeoutMs: 30_000, agent: { leaseMs: 6_000, pollWaitMs: 20_000, offlineAfterMs: 45_000 } },
    },
    () => volumeIds,
    HOOK_TIMEOUT_MS,
  );

  it('replica 0 SIGKILLed: the agent reaches replica 1, and an attach and a detach through it work on the host', async () => {
    const f = world();
    await f.json<Server>(['server', 'create', 'web-1', '--host', 'h1'], 1);
    const volume = await f.json<Volume>(['volume', 'create', 'failover-1', '--size', '32MiB'], 1);
    volumeIds.push(volume.id);
    const file = volume.providerLocation as string;
    const first = f.replicas[0]!;
    first.child.kill('SIGKILL');
    expect((await first.child).signal).toBe('SIGKILL');

    const attached = await f.json<OperationOutcome>(['attach', volume.id, '--server', 'web-1'], 1);
    expect(attached.operation.state).toBe('succeeded');
    expect(loopDevicesBacking(file)).toEqual([attached.attachment?.device?.path]);
    expect((await f.json<OperationOutcome>(['detach', volume.id], 1)).operation.state).toBe('succeeded');
    expect(loopDevicesBacking(file)).toEqual([]);
    // It said where it went (the agent's state lines, on its stderr).
    expect(f.agents.get('h1')?.stderr()).toContain(`reached the API at ${f.replicas[1]!.url}/ again`);
  });
});
