import { existsSync } from 'node:fs';
import type { Attachment, ForgetHostReport, HostView, Volume } from '@berth/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bodyOf, CLI, createTestApi, expectProblem, loopDevicesUnder, runCli, TOKENS, type TestApi } from './test-support.js';

// `DELETE /v1/hosts/{host}` and `berth host forget` over a real HTTP app and its store (SQLite,
// and PostgreSQL in the `postgres` project): a host whose agent registered and then went silent
// for good — its agent_seen_at set back behind berth's back, as an hour without a word would
// leave it — gives its volumes back, and one of them is then attached on the API's own host
// through a real loop device.

const MiB = 2 ** 20;
const REGISTRATION = { version: '0.1.0-test', transports: ['loop'], consumers: ['host'] };

let t: TestApi;

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`build the CLI first (npx turbo run build --filter=@berth/cli): ${CLI} is missing`);
  t = await createTestApi();
});

afterAll(async () => {
  await t?.cleanup();
});

/** Register `host`'s agent with its token (the host record is made then). */
async function register(token: string, host: string): Promise<void> {
  const answer = await t.request('POST', '/v1/agent/register', {
    token,
    json: { ...REGISTRATION, instance: 'boot-1', connector: { host, initiator: `iqn.2004-10.com.example:${host}` } },
  });
  expect(answer.status, answer.text).toBe(200);
}

/** `host`'s agent was last heard from in 2020: it is gone. */
async function silence(host: string): Promise<void> {
  await t.sql(`UPDATE hosts SET agent_seen_at = '2020-01-01T00:00:00.000000Z' WHERE name = '${host}'`);
}

/** Volume `volume` attached to a new server `server` on `host` through the three-phase API (an orchestrator's attach). */
async function attachedOn(host: string, server: string, volume: string): Promise<Attachment> {
  const token = TOKENS.admin;
  expect((await t.request('POST', '/v1/volumes', { token, json: { name: volume, sizeBytes: 8 * MiB } })).status).toBe(201);
  expect((await t.request('POST', '/v1/servers', { token, json: { name: server, host } })).status).toBe(201);
  // The file backend exports to its own machine only: the connector names it, as the orchestrator's would.
  const connector = bodyOf(await t.request('GET', '/v1/connector', { token }));
  const reserved = await t.request('POST', '/v1/attachments', { token, json: { volume, server, connector } });
  expect(reserved.status, reserved.text).toBe(201);
  const { attachment } = bodyOf(reserved) as { attachment: Attachment };
  expect((await t.request('POST', `/v1/attachments/${attachment.id}/complete`, { token })).status).toBe(200);
  return attachment;
}

describe('DELETE /v1/hosts/{host}', () => {
  it('is for admins only: an agent token (its own host too) and a member get 403, and nothing changes', async () => {
    await register(TOKENS.agentH1, 'h-1');
    await attachedOn('h-1', 'web-1', 'db1');
    await silence('h-1');
    for (const token of [TOKENS.agentH1, TOKENS.agent]) {
      const problem = expectProblem(await t.request('DELETE', '/v1/hosts/h-1', { token }), 403, 'FORBIDDEN');
      expect(problem.detail).toMatch(/agent token may only call the agent protocol/);
    }
    expectProblem(await t.request('DELETE', '/v1/hosts/h-1', { token: TOKENS.memberA }), 403, 'FORBIDDEN');
    expect((await t.service.getVolume('db1')).status).toBe('in-use');
    expect((await t.service.listHosts()).map((h) => h.name)).toContain('h-1');
  });

  it('refuses while the agent is online (409), then forgets the silent host; the volume attaches on another host', async () => {
    const token = TOKENS.admin;
    // The agent comes back: it is online again, and the host is not gone.
    await register(TOKENS.agentH1, 'h-1');
    const online = expectProblem(await t.request('DELETE', '/v1/hosts/h-1', { token }), 409, 'CONFLICT');
    expect(online.details).toMatchObject({ reason: 'agent-online' });
    expect((await t.service.getVolume('db1')).status).toBe('in-use');

    await silence('h-1');
    const answer = await t.request('DELETE', '/v1/hosts/h-1', { token });
    expect(answer.status, answer.text).toBe(200);
    const report = answer.body as ForgetHostReport;
    expect(report).toMatchObject({ host: { name: 'h-1' }, alreadyGone: false, removed: true, agentTokens: ['agent-h1'], servers: [{ name: 'web-1' }] });
    expect(report.attachments).toEqual([expect.objectContaining({ volume: 'db1', server: 'web-1', status: 'attached', export: 'terminated', state: 'dropped', volumeStatus: 'available' })]);
    // Names and ids only: no token, no connector.
    for (const secret of Object.values(TOKENS)) expect(answer.text).not.toContain(secret);
    expect(answer.text).not.toContain('iqn.');

    const hosts = bodyOf(await t.request('GET', '/v1/hosts', { token })).hosts as HostView[];
    expect(hosts.map((h) => h.name)).not.toContain('h-1');
    expect((await t.request('GET', '/v1/servers/web-1', { token })).status).toBe(404);

    // db1 is free: attached on the API's own host now, through a real loop device, and detached.
    const attach = await t.request('POST', '/v1/volumes/db1/attach', { token, json: {}, headers: { prefer: 'wait=30' } });
    expect(attach.status, attach.text).toBe(200);
    const attached = bodyOf(attach) as { volume: Volume; attachment: Attachment };
    expect(attached.volume.status).toBe('in-use');
    expect(attached.attachment.device?.path).toMatch(/^\/dev\/loop\d+$/);
    expect(loopDevicesUnder(t.dataDir)).toHaveLength(1);
    expect((await t.request('POST', '/v1/volumes/db1/detach', { token, headers: { prefer: 'wait=30' } })).status).toBe(200);
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);

    // Again: the host is not known any more, which is nothing to do.
    const again = await t.request('DELETE', '/v1/hosts/h-1', { token });
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ host: { id: null, name: 'h-1' }, alreadyGone: true, removed: false, attachments: [] });
  });

  it('refuses a host with no agent and an attachment (409 liveness-unknown) until the caller asserts it is dead (assumeDead=true)', async () => {
    const token = TOKENS.admin;
    // h-7 never registered an agent: an orchestrator attached there through the three-phase API.
    await attachedOn('h-7', 'web-7', 'db7');
    const unknown = expectProblem(await t.request('DELETE', '/v1/hosts/h-7', { token }), 409, 'CONFLICT');
    expect(unknown.details).toMatchObject({ reason: 'liveness-unknown' });
    expect(unknown.hint).toContain('--assume-dead');
    expect((await t.service.getVolume('db7')).status).toBe('in-use');
    expectProblem(await t.request('DELETE', '/v1/hosts/h-7?assumeDead=yes', { token }), 400, 'VALIDATION');
    expectProblem(await t.request('DELETE', '/v1/hosts/h-7?force=true', { token }), 400, 'VALIDATION');
    expect((await t.service.getVolume('db7')).status).toBe('in-use');

    const answer = await t.request('DELETE', '/v1/hosts/h-7?assumeDead=true', { token });
    expect(answer.status, answer.text).toBe(200);
    expect(answer.body).toMatchObject({ removed: true, attachments: [{ volume: 'db7', export: 'terminated', state: 'dropped', volumeStatus: 'available' }] });
    expect((await t.service.getVolume('db7')).status).toBe('available');
  });

  it('refuses the API\'s own host', async () => {
    const token = TOKENS.admin;
    expect((await t.request('POST', '/v1/servers', { token, json: { name: 'local-1' } })).status).toBe(201);
    const own = (await t.service.listHosts()).find((h) => h.agent === null);
    const problem = expectProblem(await t.request('DELETE', `/v1/hosts/${own?.id ?? 'missing'}`, { token }), 409, 'CONFLICT');
    expect(problem.details).toMatchObject({ reason: 'this-host' });
    expect((await t.request('DELETE', '/v1/servers/local-1', { token })).status).toBe(204);
  });
});

describe('berth host forget', () => {
  it('through the API: asks for --yes without a terminal, then prints the report; a member is refused', async () => {
    const remote = { BERTH_API_URL: t.url, BERTH_TOKEN: TOKENS.admin };
    await register(TOKENS.agentH2, 'h-2');
    await attachedOn('h-2', 'web-2', 'db2');
    await silence('h-2');

    const unconfirmed = await runCli(['host', 'forget', 'h-2'], remote);
    expect(unconfirmed.exitCode).toBe(2);
    expect(unconfirmed.json).toMatchObject({ error: { code: 'VALIDATION', hint: expect.stringContaining('berth host forget h-2 --yes') } });
    expect((await t.service.getVolume('db2')).status).toBe('in-use');

    const forgot = await runCli(['host', 'forget', 'h-2', '--yes'], remote);
    expect(forgot.exitCode).toBe(0);
    expect(forgot.json).toMatchObject({
      host: { name: 'h-2' },
      removed: true,
      attachments: [{ volume: 'db2', server: 'web-2', export: 'terminated', state: 'dropped', volumeStatus: 'available' }],
      servers: [{ name: 'web-2' }],
      agentTokens: ['agent-h2'],
    });
    expect((await t.service.getVolume('db2')).status).toBe('available');

    // Twice is fine; a member may not.
    expect(await runCli(['host', 'forget', 'h-2', '--yes'], remote)).toMatchObject({ exitCode: 0, json: { alreadyGone: true } });
    const member = await runCli(['host', 'forget', 'h-2', '--yes'], { ...remote, BERTH_TOKEN: TOKENS.memberA });
    expect(member).toMatchObject({ exitCode: 8, json: { error: { code: 'FORBIDDEN' } } });
  }, 120_000);

  it('embedded, on the same data: a host that never ran an agent goes with its server', async () => {
    const local = { BERTH_DATA_DIR: t.dataDir, ...t.storeEnv };
    expect((await runCli(['server', 'create', 'vm-9', '--host', 'outside-9'], local)).exitCode).toBe(0);
    const forgot = await runCli(['host', 'forget', 'outside-9', '--yes'], local);
    expect(forgot).toMatchObject({ exitCode: 0, json: { host: { name: 'outside-9' }, removed: true, attachments: [], servers: [{ name: 'vm-9' }], agentTokens: [] } });
    expect((await t.service.listHosts()).map((h) => h.name)).not.toContain('outside-9');

    // One with an attachment is berth's to judge no more: refused until --assume-dead.
    await attachedOn('outside-8', 'vm-8', 'db8');
    const refused = await runCli(['host', 'forget', 'outside-8', '--yes'], local);
    expect(refused.exitCode).not.toBe(0);
    expect(refused.json).toMatchObject({ error: { code: 'CONFLICT', message: expect.stringContaining('no berth agent'), hint: expect.stringContaining('--assume-dead') } });
    expect((await t.service.getVolume('db8')).status).toBe('in-use');
    const assumed = await runCli(['host', 'forget', 'outside-8', '--assume-dead', '--yes'], local);
    expect(assumed).toMatchObject({ exitCode: 0, json: { removed: true, attachments: [{ volume: 'db8', state: 'dropped', volumeStatus: 'available' }] } });
  }, 120_000);
});
