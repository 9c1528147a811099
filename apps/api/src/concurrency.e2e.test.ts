import { afterEach, describe, expect, it } from 'vitest';
import type { Operation } from '@berth/core';
import { bodyOf, createTestApi, linkTarget, loopDevicesUnder, TOKENS, type TestApi } from './test-support.js';

const MiB = 1024 * 1024;
const N = 50;
let t: TestApi | undefined;

afterEach(async () => {
  await t?.cleanup();
  t = undefined;
});

async function finalState(api: TestApi, id: string): Promise<Operation> {
  for (let i = 0; i < 40; i++) {
    const operation = (await api.request('GET', `/v1/operations/${id}?wait=30s`, { token: TOKENS.admin })).body as Operation;
    if (operation.state !== 'running') return operation;
  }
  throw new Error(`operation ${id} never ended`);
}

describe('concurrent attach requests', () => {
  it(`attaches ${N} volumes requested at once, each on its own loop device, and detaches them at once`, async () => {
    t = await createTestApi();
    const api = t;
    const token = TOKENS.admin;
    await api.request('POST', '/v1/servers', { token, json: { name: 'busy' } });
    const names = Array.from({ length: N }, (_, i) => `vol-${i}`);
    for (const name of names) expect((await api.request('POST', '/v1/volumes', { token, json: { name, sizeBytes: MiB } })).status).toBe(201);

    const answers = await Promise.all(names.map((name) => api.request('POST', '/v1/servers/busy/volume-attachments', { token, json: { volumeId: name } })));
    expect(answers.map((a) => a.status)).toEqual(names.map(() => 202));
    const finished = await Promise.all(answers.map((a) => finalState(api, String(bodyOf(a).id))));
    expect(finished.map((o) => o.state)).toEqual(names.map(() => 'succeeded'));

    const volumes = await api.service.listVolumes();
    expect(volumes.filter((v) => v.status === 'in-use')).toHaveLength(N);
    const attachments = await api.service.listAttachments();
    const devices = attachments.map((a) => a.device?.path ?? '');
    expect(new Set(devices).size).toBe(N);
    expect(loopDevicesUnder(api.dataDir).sort()).toEqual([...devices].sort());
    for (const a of attachments) expect(linkTarget(`/dev/berth/${a.volumeId}`)).toBe(a.device?.path);

    const detaches = await Promise.all(names.map((name) => api.request('DELETE', `/v1/servers/busy/volume-attachments/${name}`, { token })));
    expect(detaches.map((a) => a.status)).toEqual(names.map(() => 202));
    const detached = await Promise.all(detaches.map((a) => finalState(api, String(bodyOf(a).id))));
    expect(detached.map((o) => o.state)).toEqual(names.map(() => 'succeeded'));
    expect(loopDevicesUnder(api.dataDir)).toEqual([]);
    expect(await api.service.listAttachments()).toEqual([]);
    expect(await api.service.listOperations({ state: 'running' })).toEqual([]);
  });

  it(`lets exactly one of ${N} attach requests for one volume win`, async () => {
    t = await createTestApi();
    const api = t;
    const token = TOKENS.admin;
    await api.request('POST', '/v1/volumes', { token, json: { name: 'contended', sizeBytes: MiB } });
    await Promise.all(Array.from({ length: 5 }, (_, i) => api.request('POST', '/v1/servers', { token, json: { name: `srv-${i}` } })));

    // Callers for five servers: several for the same server, and different servers.
    const answers = await Promise.all(
      Array.from({ length: N }, (_, i) => api.request('POST', `/v1/servers/srv-${i % 5}/volume-attachments`, { token, json: { volumeId: 'contended' } })),
    );
    const accepted = answers.filter((a) => a.status === 202);
    const refused = answers.filter((a) => a.status !== 202);
    for (const r of refused) {
      expect(r.status).toBe(409);
      expect(bodyOf(r).code).toBe('CONFLICT');
    }
    const outcomes = await Promise.all(accepted.map((a) => finalState(api, String(bodyOf(a).id))));
    const won = outcomes.filter((o) => o.state === 'succeeded');
    expect(won).toHaveLength(1);
    for (const lost of outcomes.filter((o) => o.state !== 'succeeded')) {
      expect(lost.state).toBe('rolled_back');
      expect(lost.error?.code).toBe('CONFLICT');
    }
    expect(await api.service.listOperations({ state: 'running' })).toEqual([]);
    const attachments = await api.service.listAttachments();
    expect(attachments).toHaveLength(1);
    expect(attachments[0]?.serverId).toBe(won[0]?.serverId);
    expect((await api.service.getVolume('contended')).status).toBe('in-use');
    expect(loopDevicesUnder(api.dataDir)).toHaveLength(1);
    expect(api.app.tracker.inFlight()).toBe(0);
  });
});
