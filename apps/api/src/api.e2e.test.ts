import { closeSync, existsSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import type { Attachment, Operation, Volume } from '@berth/core';
import { bodyOf, createTestApi, linkTarget, loopDevicesUnder, PROJECT_A, TOKENS, type TestApi } from './test-support.js';

const MiB = 1024 * 1024;
const ATTACH_STEPS = ['reserve', 'dispatch', 'connector', 'initialize', 'connect', 'publish', 'complete'];

let api: TestApi | undefined;

afterEach(async () => {
  await api?.cleanup();
  api = undefined;
});

async function start(env?: Record<string, string>, maxWaitMs?: number): Promise<TestApi> {
  api = await createTestApi({ ...(env ? { env } : {}), ...(maxWaitMs === undefined ? {} : { maxWaitMs }) });
  return api;
}

/** Poll an operation's Location until it ends (long-polls, so a handful of requests at most). */
async function waitDone(t: TestApi, location: string, token: string): Promise<Operation> {
  for (let i = 0; i < 20; i++) {
    const answer = await t.request('GET', `${location}?wait=30s`, { token });
    expect(answer.status).toBe(200);
    const operation = answer.body as Operation;
    if (operation.state !== 'running') return operation;
  }
  throw new Error('operation never ended');
}

describe('the HTTP app end to end (real socket, file backend, loop transport)', () => {
  it('creates, attaches, polls, detaches and deletes, as the store and the machine show', async () => {
    const t = await start();
    const token = TOKENS.memberA;

    const server = await t.request('POST', '/v1/servers', { token, json: { name: 'web1' } });
    expect(server.status).toBe(201);
    expect(server.headers.get('location')).toBe(`/v1/servers/${String(bodyOf(server).id)}`);

    const created = await t.request('POST', '/v1/volumes', { token, json: { name: 'data1', sizeBytes: 64 * MiB } });
    expect(created.status).toBe(201);
    const volume = created.body as Volume;
    expect(volume).toMatchObject({ name: 'data1', status: 'available', projectId: PROJECT_A, backend: 'file' });

    const attach = await t.request('POST', '/v1/servers/web1/volume-attachments', { token, json: { volumeId: volume.id } });
    expect(attach.status).toBe(202);
    const started = attach.body as Operation;
    expect(started.kind).toBe('attach');
    expect(attach.headers.get('location')).toBe(`/v1/operations/${started.id}`);

    const finished = await waitDone(t, `/v1/operations/${started.id}`, token);
    expect(finished.state).toBe('succeeded');
    expect(finished.steps.map((s) => `${s.name}:${s.state}`)).toEqual(ATTACH_STEPS.map((s) => `${s}:done`));

    // What a user checks: the row says in-use, the device is a loop device over the volume file,
    // the stable link points at it.
    expect((await t.service.getVolume(volume.id, { projectId: PROJECT_A })).status).toBe('in-use');
    const [attachment] = await t.service.listAttachments({ projectId: PROJECT_A, volume: volume.id });
    expect(attachment?.status).toBe('attached');
    const device = attachment?.device?.path ?? '';
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    expect(loopDevicesUnder(t.dataDir)).toEqual([device]);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(device);

    const listed = await t.request('GET', '/v1/servers/web1/volume-attachments', { token });
    expect((bodyOf(listed).volumeAttachments as Attachment[]).map((a) => a.id)).toEqual([attachment?.id]);
    const shown = await t.request('GET', '/v1/servers/web1/volume-attachments/data1', { token });
    expect(shown.status).toBe(200);
    expect((shown.body as Attachment).device?.path).toBe(device);

    // Bytes written through the device land in the volume's file.
    const pattern = Buffer.alloc(4096, 0x5a);
    const fd = openSync(device, 'r+');
    try {
      writeSync(fd, pattern, 0, pattern.length, 8 * MiB);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }

    const detach = await t.request('DELETE', `/v1/servers/web1/volume-attachments/${volume.id}`, { token });
    expect(detach.status).toBe(202);
    const detached = await waitDone(t, String(detach.headers.get('location')), token);
    expect(detached.kind).toBe('detach');
    expect(detached.state).toBe('succeeded');
    expect((await t.service.getVolume(volume.id, { projectId: PROJECT_A })).status).toBe('available');
    expect(await t.service.listAttachments({ projectId: PROJECT_A, volume: volume.id })).toEqual([]);
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();

    const file = openSync(volume.providerLocation ?? '', 'r');
    const back = Buffer.alloc(4096);
    try {
      readSync(file, back, 0, back.length, 8 * MiB);
    } finally {
      closeSync(file);
    }
    expect(back.equals(pattern)).toBe(true);

    expect((await t.request('DELETE', `/v1/volumes/${volume.id}`, { token })).status).toBe(204);
    expect((await t.request('GET', `/v1/volumes/${volume.id}`, { token })).status).toBe(404);
    expect(existsSync(volume.providerLocation ?? '')).toBe(false);
    expect((await t.request('DELETE', '/v1/servers/web1', { token })).status).toBe(204);
    expect(await t.service.listServers({ projectId: PROJECT_A })).toEqual([]);

    // Metrics, from each finished operation's journal.
    const metrics = await t.request('GET', '/metrics', { token: TOKENS.admin });
    expect(metrics.status).toBe(200);
    expect(metrics.text).toContain('berth_operation_duration_seconds_count{kind="attach",transport="loop",result="succeeded"} 1');
    expect(metrics.text).toContain('berth_operation_duration_seconds_count{kind="detach",transport="loop",result="succeeded"} 1');
    expect(metrics.text).toContain('berth_operation_step_duration_seconds_count{kind="attach",step="connect",phase="do",transport="loop"} 1');
    expect(metrics.text).toContain('berth_operation_step_duration_seconds_count{kind="detach",step="disconnect",phase="do",transport="loop"} 1');
    expect(metrics.text).toContain('berth_operations_total{kind="attach",result="succeeded",code="none"} 1');
    expect(metrics.text).toContain('berth_operations_in_flight{kind="attach"} 0');
    expect(metrics.text).toMatch(/berth_http_request_duration_seconds_count\{method="POST",route="\/v1\/servers\/:server\/volume-attachments",status="202"\} 1/);
  });

  it('attaches by volume to the API host\'s own server, replays an Idempotency-Key, and returns outcomes', async () => {
    const t = await start();
    const token = TOKENS.admin;
    await t.request('POST', '/v1/volumes', { token, json: { name: 'data2', sizeBytes: 8 * MiB } });

    const first = await t.request('POST', '/v1/volumes/data2/attach', { token, json: {}, headers: { 'idempotency-key': 'attach-data2-1' } });
    expect(first.status).toBe(202);
    const retry = await t.request('POST', '/v1/volumes/data2/attach', { token, json: {}, headers: { 'idempotency-key': 'attach-data2-1' } });
    expect(retry.status).toBe(202);
    expect(bodyOf(retry).id).toBe(bodyOf(first).id);

    const outcome = await t.request('GET', `/v1/operations/${String(bodyOf(first).id)}/outcome?wait=30s`, { token });
    expect(outcome.status).toBe(200);
    const attached = bodyOf(outcome) as { operation: Operation; volume: Volume; attachment: Attachment };
    expect(attached.operation.state).toBe('succeeded');
    expect(attached.volume.status).toBe('in-use');
    expect(attached.attachment.status).toBe('attached');
    expect(await t.service.listOperations()).toHaveLength(1);

    // The same key for another request is refused, not replayed.
    const misuse = await t.request('POST', '/v1/volumes/data2/detach', { token, json: {}, headers: { 'idempotency-key': 'attach-data2-1' } });
    expect(misuse.status).toBe(422);
    expect(bodyOf(misuse).code).toBe('UNPROCESSABLE');

    const detach = await t.request('POST', '/v1/volumes/data2/detach', { token, json: {} });
    const detached = await t.request('GET', `/v1/operations/${String(bodyOf(detach).id)}/outcome?wait=30s`, { token });
    const after = bodyOf(detached) as { operation: Operation; volume: Volume; attachment: Attachment };
    expect(after.volume.status).toBe('available');
    expect(after.attachment.id).toBe(attached.attachment.id);
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);

    // POSTs that start no operation replay from memory: one volume, the same answer twice.
    const a = await t.request('POST', '/v1/volumes', { token, json: { name: 'once', sizeBytes: 1 * MiB }, headers: { 'idempotency-key': 'create-once' } });
    const b = await t.request('POST', '/v1/volumes', { token, json: { name: 'once', sizeBytes: 1 * MiB }, headers: { 'idempotency-key': 'create-once' } });
    expect(a.status).toBe(201);
    expect(b.status).toBe(201);
    expect(b.headers.get('idempotent-replayed')).toBe('true');
    expect(bodyOf(b).id).toBe(bodyOf(a).id);
    expect((await t.service.listVolumes()).filter((v) => v.name === 'once')).toHaveLength(1);
    const other = await t.request('POST', '/v1/volumes', { token, json: { name: 'twice', sizeBytes: 1 * MiB }, headers: { 'idempotency-key': 'create-once' } });
    expect(other.status).toBe(422);
  });

  it('answers an attach and a detach asked with `Prefer: wait` in one round trip, with their outcomes', async () => {
    const t = await start();
    const token = TOKENS.admin;
    await t.request('POST', '/v1/volumes', { token, json: { name: 'prefer1', sizeBytes: 8 * MiB } });
    const attach = await t.request('POST', '/v1/volumes/prefer1/attach', { token, json: {}, headers: { prefer: 'respond-async, wait=30' } });
    expect(attach.status).toBe(200);
    expect(attach.headers.get('preference-applied')).toBe('wait=30');
    const attached = bodyOf(attach) as { operation: Operation; volume: Volume; attachment: Attachment };
    expect(attached.operation.state).toBe('succeeded');
    expect(attach.headers.get('location')).toBe(`/v1/operations/${attached.operation.id}`);
    expect(attached.volume.status).toBe('in-use');
    expect(attached.attachment.status).toBe('attached');
    // Its outcome is still there to ask for, from memory.
    const outcome = await t.request('GET', `/v1/operations/${attached.operation.id}/outcome`, { token });
    expect(outcome.status).toBe(200);
    expect((bodyOf(outcome) as { attachment: Attachment }).attachment.id).toBe(attached.attachment.id);
    const detach = await t.request('POST', '/v1/volumes/prefer1/detach', { token, headers: { prefer: 'wait=30' } });
    expect(detach.status).toBe(200);
    const detached = bodyOf(detach) as { operation: Operation; volume: Volume; attachment: Attachment };
    expect(detached.volume.status).toBe('available');
    expect(detached.attachment.id).toBe(attached.attachment.id);
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
    // Without the preference (or with one it does not know) the answer is the usual 202.
    const plain = await t.request('POST', '/v1/volumes/prefer1/attach', { token, json: {}, headers: { prefer: 'handling=lenient' } });
    expect(plain.status).toBe(202);
    expect(plain.headers.get('preference-applied')).toBeNull();
    expect((await t.request('GET', `/v1/operations/${String(bodyOf(plain).id)}/outcome?wait=30s`, { token })).status).toBe(200);
    expect((await t.request('POST', '/v1/volumes/prefer1/detach', { token, headers: { prefer: 'wait=30' } })).status).toBe(200);
  });

  it('runs the three-phase attachments API: reserve, initialize with a connector, complete, delete', async () => {
    const t = await start();
    const token = TOKENS.admin;
    await t.request('POST', '/v1/volumes', { token: TOKENS.admin, json: { name: 'ext1', sizeBytes: 4 * MiB } });
    await t.request('POST', '/v1/servers', { token: TOKENS.admin, json: { name: 'vm1' } });

    const reserved = await t.request('POST', '/v1/attachments', { token, json: { volume: 'ext1', server: 'vm1' } });
    expect(reserved.status).toBe(201);
    const { attachment } = bodyOf(reserved) as { attachment: Attachment; connectionInfo: unknown };
    expect(bodyOf(reserved).connectionInfo).toBeNull();
    expect(attachment.status).toBe('reserved');
    expect((await t.service.getVolume('ext1')).status).toBe('reserved');

    // The file backend exports only to its own host: the orchestrator sends this host's connector.
    const connector = bodyOf(await t.request('GET', '/v1/connector', { token }));
    expect(connector.host).toEqual(expect.any(String));
    const initialized = await t.request('PUT', `/v1/attachments/${attachment.id}`, { token, json: { connector } });
    expect(initialized.status).toBe(200);
    expect(bodyOf(initialized).connectionInfo).toMatchObject({ driver_volume_type: expect.any(String) });
    expect((await t.service.getAttachment(attachment.id)).status).toBe('attaching');

    const completed = await t.request('POST', `/v1/attachments/${attachment.id}/complete`, { token });
    expect(completed.status).toBe(200);
    expect((completed.body as Attachment).status).toBe('attached');
    expect((await t.service.getVolume('ext1')).status).toBe('in-use');
    const again = await t.request('POST', `/v1/attachments/${attachment.id}/complete`, { token });
    expect(again.status).toBe(409);

    const deleted = await t.request('DELETE', `/v1/attachments/${attachment.id}`, { token });
    expect(deleted.status).toBe(200);
    expect((bodyOf(deleted).volume as Volume).status).toBe('available');
    expect(await t.service.listAttachments()).toEqual([]);
    // Nothing was connected on this machine: the three-phase API leaves that to the orchestrator.
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('creates servers with a hypervisor (defaults filled in), shows them, and refuses invalid ones with 400', async () => {
    const t = await start();
    const token = TOKENS.admin;
    const qemu = await t.request('POST', '/v1/servers', { token, json: { name: 'vm-q', hypervisor: { type: 'qemu', qmp: '/run/vm-q/qmp.sock' } } });
    expect(qemu.status).toBe(201);
    expect(bodyOf(qemu).hypervisor).toEqual({ type: 'qemu', qmp: '/run/vm-q/qmp.sock', bus: 'pci.0' });
    const libvirt = await t.request('POST', '/v1/servers', { token, json: { name: 'vm-l', hypervisor: { type: 'libvirt', domain: 'web-1' } } });
    expect(bodyOf(libvirt).hypervisor).toEqual({ type: 'libvirt', domain: 'web-1', uri: 'qemu:///system' });
    const plain = await t.request('POST', '/v1/servers', { token, json: { name: 'vm-h' } });
    expect(bodyOf(plain).hypervisor).toEqual({ type: 'host' });
    // A member cannot name a guest (its monitor is the host's: any VM on it); a host server, yes.
    // An admin creates one in the member's project, and the member attaches to it.
    for (const hypervisor of [{ type: 'qemu', qmp: '/run/vm-m/qmp.sock' }, { type: 'libvirt', domain: 'web-m' }]) {
      const refused = await t.request('POST', '/v1/servers', { token: TOKENS.memberA, json: { name: 'vm-m', hypervisor } });
      expect(refused.status, hypervisor.type).toBe(403);
      expect(bodyOf(refused).detail).toContain(`cannot create a ${hypervisor.type} server`);
    }
    expect((await t.request('POST', '/v1/servers', { token: TOKENS.memberA, json: { name: 'vm-m-host', hypervisor: { type: 'host' } } })).status).toBe(201);
    const forMember = await t.request('POST', `/v1/servers?projectId=${PROJECT_A}`, { token, json: { name: 'vm-m', hypervisor: { type: 'qemu', qmp: '/run/vm-m/qmp.sock' } } });
    expect(forMember.status).toBe(201);
    expect((await t.request('GET', '/v1/servers/vm-m', { token: TOKENS.memberA })).status).toBe(200);
    expect(bodyOf(await t.request('GET', '/v1/servers/vm-q', { token })).hypervisor).toEqual({ type: 'qemu', qmp: '/run/vm-q/qmp.sock', bus: 'pci.0' });
    const listed = bodyOf(await t.request('GET', '/v1/servers', { token })).servers as Array<{ name: string; hypervisor: { type: string } }>;
    expect(listed.map((s) => `${s.name}:${s.hypervisor.type}`).sort()).toEqual(['vm-h:host', 'vm-l:libvirt', 'vm-q:qemu']);
    for (const hypervisor of [{ type: 'qemu' }, { type: 'qemu', qmp: 'relative.sock' }, { type: 'libvirt', domain: 'a/b' }, { type: 'xen' }, { type: 'qemu', qmp: '/q', domain: 'd' }]) {
      const refused = await t.request('POST', '/v1/servers', { token, json: { name: 'bad', hypervisor } });
      expect(refused.status, JSON.stringify(hypervisor)).toBe(400);
    }
    expect((await t.service.listServers()).map((s) => s.name)).not.toContain('bad');
  });

  it('bounds a long-poll by the server\'s maximum, then reports the end', async () => {
    const t = await start({ BERTH_FAULTS: 'attach.connect.before=delay:1500' }, 200);
    const token = TOKENS.admin;
    await t.request('POST', '/v1/volumes', { token, json: { name: 'slow', sizeBytes: 1 * MiB } });
    const attach = await t.request('POST', '/v1/volumes/slow/attach', { token, json: {} });
    const id = String(bodyOf(attach).id);
    const t0 = performance.now();
    const early = await t.request('GET', `/v1/operations/${id}?wait=30s`, { token });
    expect(performance.now() - t0).toBeLessThan(1400);
    expect(bodyOf(early).state).toBe('running');
    const running = await t.request('GET', `/v1/operations/${id}/outcome?wait=1s`, { token });
    expect(running.status).toBe(202);
    const inflight = await t.request('GET', '/metrics', { token });
    expect(inflight.text).toContain('berth_operations_in_flight{kind="attach"} 1');
    const listed = await t.request('GET', '/v1/operations?state=running', { token });
    expect((bodyOf(listed).operations as Operation[]).map((o) => o.id)).toEqual([id]);
    let state = 'running';
    for (let i = 0; i < 40 && state === 'running'; i++) {
      state = String(bodyOf(await t.request('GET', `/v1/operations/${id}?wait=30s`, { token })).state);
    }
    expect(state).toBe('succeeded');

    // An operation started elsewhere (not through this app): the wait follows its row in the store.
    await t.request('POST', '/v1/volumes', { token, json: { name: 'other', sizeBytes: 1 * MiB } });
    const outside = await t.service.startAttach({ volume: 'other' });
    outside.done.catch(() => undefined);
    const waited = await t.request('GET', `/v1/operations/${outside.operation.id}?wait=1s`, { token });
    expect(bodyOf(waited).state).toBe('running');
    let outsideState = 'running';
    for (let i = 0; i < 20 && outsideState === 'running'; i++) {
      const answer = await t.request('GET', `/v1/operations/${outside.operation.id}/outcome?wait=30s`, { token });
      outsideState = answer.status === 200 ? String((bodyOf(answer).operation as Operation).state) : 'running';
    }
    expect(outsideState).toBe('succeeded');
    await outside.done;

    // A listing is the newest `limit` (default 100), and says whether older ones were left out.
    const one = bodyOf(await t.request('GET', '/v1/operations?limit=1', { token }));
    expect((one.operations as Operation[]).map((o) => o.id)).toEqual([outside.operation.id]);
    expect(one.more).toBe(true);
    const both = bodyOf(await t.request('GET', '/v1/operations?kind=attach', { token }));
    expect((both.operations as Operation[]).map((o) => o.id)).toEqual([outside.operation.id, id]);
    expect(both.more).toBe(false);
    expect((await t.request('GET', '/v1/operations?kind=detach', { token })).body).toMatchObject({ operations: [], more: false });
    expect((await t.request('GET', '/v1/operations?limit=0', { token })).status).toBe(400);
    // Decimal digits only, and once: `1e3`, `0x10` and a blank were taken before, a repeat read as NaN.
    for (const query of ['limit=1e3', 'limit=0x10', 'limit=%20']) expect((await t.request('GET', `/v1/operations?${query}`, { token })).status, query).toBe(400);
    const twice = await t.request('GET', '/v1/operations?limit=5&limit=6', { token });
    expect(twice.status).toBe(400);
    expect(twice.text).toContain('given more than once');
    // One volume's operations: `attachment show` reads its attachment's that way.
    const slow = bodyOf(await t.request('GET', '/v1/volumes/slow', { token }));
    const ofSlow = bodyOf(await t.request('GET', `/v1/operations?volumeId=${String(slow.id)}`, { token }));
    expect((ofSlow.operations as Operation[]).map((o) => o.id)).toEqual([id]);
    expect((await t.request('GET', '/v1/operations?volumeId=slow', { token })).status).toBe(400);
    // A member asking for a volume outside its project: 404, not an empty page saying `more`.
    expect((await t.request('GET', `/v1/operations?volumeId=${String(slow.id)}`, { token: TOKENS.memberA })).status).toBe(404);

    // Pruning the journal: admin only, at least an hour, a dry run counts; nothing this young goes.
    const pruned = await t.request('POST', '/v1/operations/prune', { token, json: { olderThan: '1h' } });
    expect(pruned.status).toBe(200);
    expect(pruned.body).toMatchObject({ pruned: 0, dryRun: false });
    expect(bodyOf(await t.request('POST', '/v1/operations/prune', { token, json: { olderThan: '30d', dryRun: true } }))).toMatchObject({ pruned: 0, dryRun: true });
    for (const json of [{ olderThan: '30m' }, { olderThan: 'yesterday' }, {}, { olderThan: '1h', extra: 1 }]) {
      expect((await t.request('POST', '/v1/operations/prune', { token, json })).status).toBe(400);
    }
    expect((await t.request('POST', '/v1/operations/prune', { token: TOKENS.memberA, json: { olderThan: '1h' } })).status).toBe(403);
    expect(bodyOf(await t.request('GET', '/v1/operations?kind=attach', { token })).operations).toHaveLength(2);
  });

  it('reports a failed operation\'s error through its outcome and its metrics', async () => {
    const t = await start({ BERTH_FAULTS: 'attach.connect.before=throw' });
    const token = TOKENS.admin;
    await t.request('POST', '/v1/volumes', { token, json: { name: 'bad', sizeBytes: 1 * MiB } });
    // Asked to wait, a failed operation is still a 202: its error is `/outcome`'s to tell.
    const attach = await t.request('POST', '/v1/volumes/bad/attach', { token, json: {}, headers: { prefer: 'wait=30' } });
    expect(attach.status).toBe(202);
    expect(attach.headers.get('preference-applied')).toBeNull();
    const id = String(bodyOf(attach).id);
    const outcome = await t.request('GET', `/v1/operations/${id}/outcome?wait=30s`, { token });
    expect(outcome.status).toBe(500);
    expect(outcome.headers.get('content-type')).toContain('application/problem+json');
    expect(bodyOf(outcome)).toMatchObject({ code: 'INTERNAL', operationId: id });
    expect(outcome.text).not.toContain('fault injected');
    const operation = bodyOf(await t.request('GET', `/v1/operations/${id}`, { token })) as Operation;
    expect(operation.state).toBe('rolled_back');
    expect((await t.service.getVolume('bad')).status).toBe('available');
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
    const metrics = await t.request('GET', '/metrics', { token });
    expect(metrics.text).toContain('berth_operations_total{kind="attach",result="rolled_back",code="INTERNAL"} 1');
  });

  it('shuts down gracefully: refuses new requests, lets the running attach finish, then stops', async () => {
    const t = await start({ BERTH_FAULTS: 'attach.connect.before=delay:700' });
    const token = TOKENS.admin;
    await t.request('POST', '/v1/volumes', { token, json: { name: 'late', sizeBytes: 1 * MiB } });
    const attach = await t.request('POST', '/v1/volumes/late/attach', { token, json: {} });
    const id = String(bodyOf(attach).id);
    const closing = t.app.close();
    const refused = await t.request('GET', '/v1/volumes', { token }).catch(() => undefined);
    if (refused !== undefined) expect(refused.status).toBe(503);
    await closing;
    expect(t.app.tracker.inFlight()).toBe(0);
    expect((await t.service.getOperation(id)).state).toBe('succeeded');
    expect((await t.service.getVolume('late')).status).toBe('in-use');
  });

  it('answers every request that reaches it while it shuts down with 503, resetting none (a client in another process, as curl is)', async () => {
    const t = await start();
    const count = 20;
    // The client fires its requests as fast as it can, each on its own connection; shutdown begins
    // when the first connection arrives, so the others arrive while it closes. Before the fix the
    // listener closed at once: connections the kernel had queued were reset (a POST the client
    // cannot tell was done or not) and later ones refused.
    const client = `
      const http = require('node:http');
      const [url, token, count] = process.argv.slice(1);
      const { hostname, port } = new URL(url);
      const one = () => new Promise((resolve) => {
        const request = http.request({ host: hostname, port: Number(port), path: '/v1/volumes', agent: false, headers: { authorization: 'Bearer ' + token } }, (response) => { response.resume(); resolve(response.statusCode); });
        request.on('error', (error) => resolve(error.code || error.message));
        request.end();
      });
      Promise.all(Array.from({ length: Number(count) }, one)).then((statuses) => process.stdout.write(JSON.stringify(statuses)));
    `;
    let closing: Promise<void> | undefined;
    t.app.fastify.server.once('connection', () => {
      closing = t.app.close();
    });
    const output = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['-e', client, t.url, TOKENS.admin, String(count)], { timeout: 30_000 }, (error, stdout) => (error ? reject(error) : resolve(stdout)));
    });
    await closing;
    const statuses = JSON.parse(output) as Array<number | string>;
    expect(statuses).toHaveLength(count);
    expect(statuses.filter((s) => s !== 200 && s !== 503)).toEqual([]);
    expect(statuses).toContain(503);
  });
});
