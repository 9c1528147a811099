import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { managedTgtdPaths } from '@berth/backend-tgt';
import type { AgentSession, Attachment, ClaimedWork, ConnectionInfo, Operation, Volume } from '@berth/core';
import { bodyOf, createTestApi, linkTarget, PROJECT_A, TOKENS, type TestAnswer, type TestApi, type TestRequest } from './test-support.js';

// Issue 5's end to end for iSCSI on the simulated host: the API serves with `simulate: true`, a tgt
// volume on its private tgtd is attached over HTTP, the simulated host's login reaches that tgtd for
// real and its disk is a real loop device over the LUN, so bytes written through /dev/berth/<id>
// land in the LUN file. CHAP is on for tgt volumes: a member token must never see a password.

const MiB = 1024 * 1024;
const ATTACH_STEPS = ['reserve', 'dispatch', 'connector', 'initialize', 'connect', 'publish', 'complete'];
/** An orchestrator's host that is not the API's (the three-phase API exports to it). */
const OUTSIDE_CONNECTOR = { host: 'outside-1', initiator: 'iqn.1994-05.com.example:outside-1', ip: '192.0.2.10', platform: 'x86_64', os_type: 'linux', multipath: false };

let t: TestApi;
/** Every answer a member token got in this file: none may hold a connection secret. */
const memberAnswers: Array<{ what: string; text: string }> = [];
/** CHAP passwords of the volumes made here (read with an admin token). */
const passwords: string[] = [];

beforeAll(async () => {
  // Two portals on one tgtd: single path logs in to the first, multipath to both.
  t = await createTestApi({ simulatedIscsi: { portalHosts: ['127.0.0.1', '127.0.0.2'] } });
  expect((await asMember('POST', '/v1/servers', { json: { name: 'web1' } })).status).toBe(201);
}, 120_000);

/** The pid a pid file records: a plain number, or @berth/host's `{"pid": ...}` record. */
function pidIn(file: string): number | undefined {
  try {
    const text = readFileSync(file, 'utf8').trim();
    const pid = text.startsWith('{') ? (JSON.parse(text) as { pid?: unknown }).pid : Number(text);
    return typeof pid === 'number' && Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

afterAll(async () => {
  if (t === undefined) return;
  const iscsi = t.iscsi!;
  // The daemons this suite started: the simulated host's kernel and the private tgtd.
  const pids = [pidIn(path.join(iscsi.root, 'run/simhost/kernel.pid')), pidIn(managedTgtdPaths(t.dataDir).pidFile)];
  await t.cleanup();
  // Nothing left behind: no daemon, no simulated disk, FUSE mount or qemu-storage-daemon, no
  // tgtd on the control port, no data dir.
  for (const pid of pids) if (pid !== undefined) expect(existsSync(`/proc/${pid}`), `process ${pid} still runs`).toBe(false);
  expect(pids.filter((p) => p !== undefined)).toHaveLength(2);
  expect(iscsi.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
  expect(spawnSync('tgtadm', ['-C', String(iscsi.controlPort), '--op', 'show', '--mode', 'sys']).status).toBe(107);
  expect(existsSync(t.dataDir)).toBe(false);
}, 120_000);

async function asMember(method: string, urlPath: string, options: TestRequest = {}): Promise<TestAnswer> {
  const answer = await t.request(method, urlPath, { ...options, token: TOKENS.memberA });
  memberAnswers.push({ what: `${method} ${urlPath}`, text: answer.text });
  return answer;
}

/** Poll an operation until it ends, as the member that started it. */
async function waitDone(location: string): Promise<Operation> {
  for (let i = 0; i < 20; i++) {
    const answer = await asMember('GET', `${location}?wait=30s`);
    expect(answer.status).toBe(200);
    const operation = answer.body as Operation;
    if (operation.state !== 'running') return operation;
  }
  throw new Error('operation never ended');
}

function pattern(size: number, seed: number): Buffer {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 7 + seed) & 0xff;
  return bytes;
}

function writeThrough(device: string, bytes: Buffer, offsets: readonly number[]): void {
  const fd = openSync(device, 'r+');
  try {
    for (const offset of offsets) writeSync(fd, bytes, 0, bytes.length, offset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function expectInFile(file: string, bytes: Buffer, offsets: readonly number[]): void {
  const fd = openSync(file, 'r');
  try {
    for (const offset of offsets) {
      const back = Buffer.alloc(bytes.length);
      readSync(fd, back, 0, back.length, offset);
      expect(back.equals(bytes), `bytes at ${offset} of ${file}`).toBe(true);
    }
  } finally {
    closeSync(fd);
  }
}

/** The LUN file the tgt backend keeps for a volume. */
function lunFile(volumeId: string): string {
  return path.join(t.dataDir, 'backend-tgt', 'luns', `${volumeId}.img`);
}

/** The volume's CHAP password, read from its backend in process (no token may ask for it unattached). */
async function chapPassword(volumeId: string): Promise<string> {
  // An admin token no longer sees secrets: only the agent of a host the volume is attached to.
  expect((await t.request('GET', `/v1/volumes/${volumeId}/credentials?projectId=${PROJECT_A}`, { token: TOKENS.admin })).status).toBe(403);
  const credentials = await t.service.volumeCredentials(volumeId, { projectId: PROJECT_A });
  expect(credentials.auth_method).toBe('CHAP');
  const password = credentials.auth_password ?? '';
  expect(password.length).toBeGreaterThanOrEqual(12);
  passwords.push(password);
  return password;
}

/** Create a tgt volume as the member, attach it over HTTP and return what the API says about it. */
async function createAndAttach(name: string, body: Record<string, unknown>): Promise<{ volume: Volume; attachment: Attachment; operation: Operation }> {
  const created = await asMember('POST', '/v1/volumes', { json: { name, sizeBytes: 64 * MiB, backend: 'tgt' } });
  expect(created.status).toBe(201);
  const volume = created.body as Volume;
  expect(volume).toMatchObject({ name, backend: 'tgt', status: 'available', projectId: PROJECT_A });
  await chapPassword(volume.id);

  const attach = await asMember('POST', '/v1/servers/web1/volume-attachments', { json: { volumeId: volume.id, ...body } });
  expect(attach.status).toBe(202);
  const started = attach.body as Operation;
  expect(attach.headers.get('location')).toBe(`/v1/operations/${started.id}`);
  const operation = await waitDone(`/v1/operations/${started.id}`);
  expect(operation.error).toBeNull();
  expect(operation.state).toBe('succeeded');
  expect(operation.steps.map((s) => `${s.name}:${s.state}`)).toEqual(ATTACH_STEPS.map((s) => `${s}:done`));

  const outcome = await asMember('GET', `/v1/operations/${started.id}/outcome`);
  expect(outcome.status).toBe(200);
  const attachment = bodyOf(outcome).attachment as Attachment;
  expect(attachment.status).toBe('attached');
  return { volume, attachment, operation };
}

async function detachAndDelete(volume: Volume): Promise<void> {
  const detach = await asMember('DELETE', `/v1/servers/web1/volume-attachments/${volume.name}`);
  expect(detach.status).toBe(202);
  const detached = await waitDone(String(detach.headers.get('location')));
  expect(detached).toMatchObject({ kind: 'detach', state: 'succeeded' });
  expect((await t.service.getVolume(volume.id, { projectId: PROJECT_A })).status).toBe('available');
  expect(await t.service.listAttachments({ projectId: PROJECT_A, volume: volume.id })).toEqual([]);
  expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();

  expect((await asMember('DELETE', `/v1/volumes/${volume.id}`)).status).toBe(204);
  expect((await asMember('GET', `/v1/volumes/${volume.id}`)).status).toBe(404);
  expect(existsSync(lunFile(volume.id))).toBe(false);
}

describe('the HTTP app end to end for iSCSI on the simulated host (real socket, real tgtd, CHAP)', () => {
  it('creates a tgt volume, attaches it over iSCSI, the bytes reach the LUN file, detaches and deletes it', async () => {
    const { volume, attachment } = await createAndAttach('db1', {});

    // What a user checks: the row says in-use, the device is a SCSI disk of the simulated host,
    // the stable link points at it, the stored attachment holds no secret.
    expect(attachment.transport).toBe('iscsi');
    const device = attachment.device!;
    expect(device.path).toMatch(/^\/dev\/sd[a-z]+$/);
    expect(device.scsi_wwn).toMatch(/^36/);
    expect(attachment.hostRoot).toBe(t.iscsi!.root);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(path.join(t.iscsi!.root, device.path));
    expect((await t.service.getVolume(volume.id, { projectId: PROJECT_A })).status).toBe('in-use');
    const [stored] = await t.service.listAttachments({ projectId: PROJECT_A, volume: volume.id });
    expect(stored).toMatchObject({ id: attachment.id, status: 'attached', transport: 'iscsi' });
    expect(stored?.connectionInfo).toMatchObject({ driver_volume_type: 'iscsi', data: { auth_method: 'CHAP', target_lun: expect.any(Number) } });
    expect(stored?.connectionInfo?.data).not.toHaveProperty('auth_password');

    const shown = await asMember('GET', '/v1/servers/web1/volume-attachments/db1');
    expect(shown.status).toBe(200);
    expect((shown.body as Attachment).device?.path).toBe(device.path);
    expect((bodyOf(await asMember('GET', '/v1/servers/web1/volume-attachments')).volumeAttachments as Attachment[]).map((a) => a.id)).toEqual([attachment.id]);
    await asMember('GET', `/v1/attachments/${attachment.id}`);
    await asMember('GET', '/v1/attachments');
    await asMember('GET', '/v1/operations');
    // A member cannot ask for the secrets outright either.
    expect((await asMember('GET', `/v1/volumes/${volume.id}/credentials`)).status).toBe(403);

    // Bytes written through the stable link land in tgtd's LUN file.
    const bytes = pattern(64 * 1024, 3);
    const offsets = [0, 4096, 1 * MiB + 512, 32 * MiB, 64 * MiB - bytes.length];
    writeThrough(`/dev/berth/${volume.id}`, bytes, offsets);
    expectInFile(lunFile(volume.id), bytes, offsets);

    await detachAndDelete(volume);
    expect(t.iscsi!.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
  });

  it('attaches with multipath: true through the API: one dm device over both portals, bytes in the LUN file', async () => {
    const { volume, attachment } = await createAndAttach('db2', { multipath: true });
    expect(attachment.transport).toBe('iscsi-multipath');
    const device = attachment.device!;
    expect(device.path).toMatch(/^\/dev\/dm-\d+$/);
    expect(device.multipath_id).toBe(device.scsi_wwn);
    const portals = (device.paths ?? []).map((p) => p.portal ?? '');
    expect(portals).toEqual(expect.arrayContaining([expect.stringMatching(/^127\.0\.0\.1:/), expect.stringMatching(/^127\.0\.0\.2:/)]));
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(path.join(t.iscsi!.root, device.path));
    expect((await t.service.getVolume(volume.id, { projectId: PROJECT_A })).status).toBe('in-use');

    const bytes = pattern(64 * 1024, 0x6d);
    writeThrough(`/dev/berth/${volume.id}`, bytes, [8 * MiB]);
    expectInFile(lunFile(volume.id), bytes, [8 * MiB]);

    // `attachment show` lists each path; so does the API.
    const shown = await asMember('GET', `/v1/servers/web1/volume-attachments/${volume.id}`);
    expect((shown.body as Attachment).device?.paths?.length).toBeGreaterThanOrEqual(2);

    await detachAndDelete(volume);
    expect(t.iscsi!.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
  });

  it("three-phase API: connection_info never carries the CHAP password; the agent of the attachment's host gets it from the volume's credentials", async () => {
    const created = await asMember('POST', '/v1/volumes', { json: { name: 'db3', sizeBytes: 16 * MiB, backend: 'tgt' } });
    const volume = created.body as Volume;
    const password = await chapPassword(volume.id);
    // The orchestrator's server lives on its own host, outside-1.
    expect((await asMember('POST', '/v1/servers', { json: { name: 'web3', host: 'outside-1' } })).status).toBe(201);

    // Reserve and initialize at once (a connector given), as a member: no password.
    const reserved = await asMember('POST', '/v1/attachments', { json: { volume: 'db3', server: 'web3', connector: OUTSIDE_CONNECTOR } });
    expect(reserved.status).toBe(201);
    const attachmentId = (bodyOf(reserved).attachment as Attachment).id;
    const memberInfo = bodyOf(reserved).connectionInfo as ConnectionInfo;
    expect(memberInfo).toMatchObject({ driver_volume_type: 'iscsi', data: { auth_method: 'CHAP', target_iqn: expect.any(String) } });
    expect(memberInfo.data).not.toHaveProperty('auth_password');

    // The agent of outside-1, which connects it, gets the password from the volume's credentials, and it is the volume's.
    const secrets = await t.request('GET', `/v1/volumes/${volume.id}/credentials?projectId=${PROJECT_A}`, { token: TOKENS.agentOutside });
    expect(secrets.status).toBe(200);
    expect(secrets.headers.get('cache-control')).toBe('no-store');
    expect(bodyOf(secrets).credentials).toMatchObject({ auth_password: password });
    // An admin gets connection_info without it; agent tokens may not use the attachments API at all.
    const admin = await t.request('PUT', `/v1/attachments/${attachmentId}?projectId=${PROJECT_A}`, { token: TOKENS.admin, json: { connector: OUTSIDE_CONNECTOR } });
    expect(admin.status).toBe(200);
    expect(admin.text).not.toContain(password);
    expect((bodyOf(admin).connectionInfo as ConnectionInfo).data).toMatchObject({ auth_method: 'CHAP', target_iqn: memberInfo.data.target_iqn });
    expect((bodyOf(admin).connectionInfo as ConnectionInfo).data).not.toHaveProperty('auth_password');
    for (const token of [TOKENS.agentOutside, TOKENS.agentH1, TOKENS.agent]) {
      const refused = await t.request('PUT', `/v1/attachments/${attachmentId}?projectId=${PROJECT_A}`, { token, json: { connector: OUTSIDE_CONNECTOR } });
      expect(refused.status).toBe(403);
      expect(refused.text).not.toContain(password);
    }
    const elsewhere = await t.request('GET', `/v1/volumes/${volume.id}/credentials?projectId=${PROJECT_A}`, { token: TOKENS.agentH1 });
    expect(elsewhere.status).toBe(404);
    // A volume that does not exist gets the very same answer: an agent token does not tell which exist.
    const missing = await t.request('GET', `/v1/volumes/nosuch/credentials?projectId=${PROJECT_A}`, { token: TOKENS.agentH1 });
    expect(missing.status).toBe(404);
    expect(bodyOf(missing).detail).toBe(String(bodyOf(elsewhere).detail).replace(volume.id, 'nosuch'));

    // Initialize again as the member: still none. Complete, read, delete: none either.
    const again = await asMember('PUT', `/v1/attachments/${attachmentId}`, { json: { connector: OUTSIDE_CONNECTOR } });
    expect(again.status).toBe(200);
    expect((bodyOf(again).connectionInfo as ConnectionInfo).data).not.toHaveProperty('auth_password');
    expect((await asMember('POST', `/v1/attachments/${attachmentId}/complete`)).status).toBe(200);
    expect((await asMember('GET', `/v1/volumes/${volume.id}`)).body).toMatchObject({ status: 'in-use' });
    await asMember('GET', `/v1/attachments/${attachmentId}`);
    const deleted = await asMember('DELETE', `/v1/attachments/${attachmentId}`);
    expect(deleted.status).toBe(200);
    expect((bodyOf(deleted).volume as Volume).status).toBe('available');

    // The export to the outside initiator is gone from tgtd: reconcile finds nothing to remove.
    const report = await t.request('POST', '/v1/reconcile', { token: TOKENS.admin, json: { dryRun: true } });
    expect(report.status).toBe(200);
    expect(bodyOf(report)).toMatchObject({ dryRun: true, differences: [], counts: { found: 0 } });
    expect(JSON.stringify(bodyOf(report).unchecked)).not.toContain('"tgt"');
    expect((await asMember('DELETE', '/v1/volumes/db3')).status).toBe(204);
    expect((await asMember('DELETE', '/v1/servers/web3')).status).toBe(204);
  });

  it("an agent's connect claim carries the CHAP secrets; the stored item and other hosts' agents never see them", async () => {
    const created = await asMember('POST', '/v1/volumes', { json: { name: 'db4', sizeBytes: 16 * MiB, backend: 'tgt' } });
    const volume = created.body as Volume;
    const password = await chapPassword(volume.id);
    const register = async (token: string, host: string): Promise<AgentSession> => {
      const json = { instance: `boot-${host}`, version: 'test', connector: { host, initiator: `iqn.1994-05.com.example:${host}` }, transports: ['iscsi'], consumers: ['host'] };
      const answer = await t.request('POST', '/v1/agent/register', { token, json });
      expect(answer.status, answer.text).toBe(200);
      return answer.body as AgentSession;
    };
    const outside = await register(TOKENS.agentOutside, 'outside-1');
    const h1 = await register(TOKENS.agentH1, 'h-1');
    // A second store on the API's database plays the replica that enqueues the host step.
    const replica = await t.openStore();
    try {
      const operation = await replica.operations.create({ kind: 'attach', volumeId: volume.id, hostId: outside.hostId, deadlineAt: new Date(Date.now() + 600_000).toISOString() });
      const connection = { driver_volume_type: 'iscsi', data: { target_iqn: `iqn.2010-10.org.example:${volume.id}`, target_lun: 1, auth_method: 'CHAP', auth_username: 'user' } };
      const item = await replica.workItems!.create({
        operationId: operation.id,
        hostId: outside.hostId,
        step: 'connect',
        payload: { transport: 'iscsi', connection, volumeId: volume.id, deadlineAt: new Date(Date.now() + 600_000).toISOString() },
      });
      const other = await t.request('GET', '/v1/agent/work?wait=0s', { token: TOKENS.agentH1, headers: { 'berth-agent-worker': h1.worker } });
      expect(bodyOf(other).items).toEqual([]);
      const claimed = await t.request('GET', '/v1/agent/work?wait=0s', { token: TOKENS.agentOutside, headers: { 'berth-agent-worker': outside.worker } });
      expect(claimed.status, claimed.text).toBe(200);
      const [work] = bodyOf(claimed).items as ClaimedWork[];
      expect(work?.item.id).toBe(item.id);
      expect((work?.payload.connection as ConnectionInfo).data).toMatchObject({ auth_method: 'CHAP', auth_password: password, target_lun: 1 });
      expect(JSON.stringify(work?.item)).not.toContain(password);
      expect(JSON.stringify(await replica.workItems!.require(item.id))).not.toContain(password);
      const failed = await t.request('POST', `/v1/agent/work/${item.id}/result`, {
        token: TOKENS.agentOutside,
        headers: { 'berth-agent-worker': outside.worker },
        json: { state: 'failed', error: { code: 'DRIVER_ERROR', message: 'not connected in this test' } },
      });
      expect(failed.status, failed.text).toBe(200);
    } finally {
      await replica.close();
    }
    expect((await asMember('DELETE', '/v1/volumes/db4')).status).toBe(204);
  });

  it('never showed a member token a connection secret, in any answer', () => {
    for (const { what, text } of memberAnswers) {
      expect(text, what).not.toMatch(/auth_password|discovery_auth_password/);
      for (const password of passwords) expect(text.includes(password), `${what} holds a CHAP password`).toBe(false);
    }
    // ... and the check looked at the whole flow of the three tests above.
    expect(passwords).toHaveLength(4);
    expect(memberAnswers.length).toBeGreaterThan(30);
    expect(memberAnswers.some(({ text }) => text.includes('"auth_username"'))).toBe(true);
  });
});
