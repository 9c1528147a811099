import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Attachment, AttachmentConnection, ConnectionInfo, Host } from '@berth/core';
import { createApiApp, type ApiApp } from './app.js';
import { TokenTable } from './auth.js';
import { stubService } from './test-stub-service.js';
import { testTokenEntries, TOKENS } from './test-support.js';

const ATTACHMENT: Attachment = {
  id: '5b0e6a8e-8f0c-4a8e-9a77-1c1a2b3c4d5e',
  volumeId: '6c1f7b9f-9a1d-4b9f-8b88-2d2b3c4d5e6f',
  serverId: '7d2a8c0a-ab2e-4cab-9c99-3e3c4d5e6f70',
  hostId: '8e3b9d1b-bc3f-4dbc-8daa-4f4d5e6f7081',
  status: 'attaching',
  mode: 'rw',
  transport: null,
  connector: { host: 'compute-1' },
  connectionInfo: null,
  device: null,
  publishedPath: null,
  timings: {},
  error: null,
  createdAt: '2026-01-01T00:00:00.000Z',
  updatedAt: '2026-01-01T00:00:00.000Z',
};

/** The host of the attachment (its agent's token is `agentH1`). */
const HOST: Host = { id: ATTACHMENT.hostId, name: 'h-1', connector: null, agent: null, createdAt: ATTACHMENT.createdAt, updatedAt: ATTACHMENT.updatedAt };
const OTHER_HOST: Host = { ...HOST, id: '9f4cae2c-cd40-4edd-9ebb-506e7f809192', name: 'h-2' };

const CHAP = 'chap-secret-do-not-show';
const DISCOVERY = 'discovery-secret-do-not-show';
const INFO: ConnectionInfo = {
  driver_volume_type: 'iscsi',
  data: {
    target_portal: '192.0.2.10:3260',
    target_iqn: 'iqn.2010-10.org.openstack:volume-1',
    target_lun: 1,
    auth_method: 'CHAP',
    auth_username: 'user1',
    auth_password: CHAP,
    discovery_auth_method: 'CHAP',
    discovery_auth_username: 'disc1',
    discovery_auth_password: DISCOVERY,
  },
};

let app: ApiApp;

beforeAll(async () => {
  const connection = async (): Promise<AttachmentConnection> => ({ attachment: ATTACHMENT, connectionInfo: INFO });
  app = await createApiApp({
    service: stubService({ reserveAttachment: connection, initializeAttachment: connection, listHosts: async () => [OTHER_HOST, HOST] }),
    tokens: TokenTable.fromConfig(testTokenEntries(), {}),
    defaultProject: 'default',
    defaultMetrics: false,
  });
});

afterAll(async () => {
  await app.close();
});

async function initialize(token: string): Promise<{ status: number; body: string; cacheControl: string | undefined }> {
  const answer = await app.fastify.inject({
    method: 'PUT',
    url: `/v1/attachments/${ATTACHMENT.id}`,
    headers: { authorization: `Bearer ${token}` },
    payload: { connector: { host: 'compute-1', initiator: 'iqn.1994-05.com.redhat:c1' } },
  });
  const cacheControl = answer.headers['cache-control'];
  return { status: answer.statusCode, body: answer.body, cacheControl: typeof cacheControl === 'string' ? cacheControl : undefined };
}

describe('connection secrets by role', () => {
  it('strips auth_password and discovery_auth_password for a member', async () => {
    const answer = await initialize(TOKENS.memberA);
    expect(answer.status).toBe(200);
    expect(answer.body).not.toContain(CHAP);
    expect(answer.body).not.toContain(DISCOVERY);
    const data = (JSON.parse(answer.body) as { connectionInfo: ConnectionInfo }).connectionInfo.data;
    expect(data).toMatchObject({ target_iqn: INFO.data.target_iqn, auth_username: 'user1', discovery_auth_username: 'disc1' });
    expect(answer.cacheControl).toBe('no-store');
  });

  it("refuses every agent token, the attachment's host's included: it gets them from the volume's credentials alone", async () => {
    for (const token of [TOKENS.agentH1, TOKENS.agentH2, TOKENS.agent]) {
      const answer = await initialize(token);
      expect(answer.status).toBe(403);
      expect(answer.body).not.toContain(CHAP);
      expect(answer.body).not.toContain(DISCOVERY);
    }
  });

  it('strips them for an admin', async () => {
    for (const token of [TOKENS.admin]) {
      const answer = await initialize(token);
      expect(answer.status).toBe(200);
      expect(answer.body).not.toContain(CHAP);
      expect(answer.body).not.toContain(DISCOVERY);
      const data = (JSON.parse(answer.body) as { connectionInfo: ConnectionInfo }).connectionInfo.data;
      expect(data).toMatchObject({ auth_username: 'user1', target_iqn: INFO.data.target_iqn });
    }
  });

  it('strips them from a reserve with a connector too', async () => {
    const answer = await app.fastify.inject({
      method: 'POST',
      url: '/v1/attachments',
      headers: { authorization: `Bearer ${TOKENS.memberB}` },
      payload: { volume: 'v1', server: 's1', connector: { host: 'compute-1' } },
    });
    expect(answer.statusCode).toBe(201);
    expect(answer.body).not.toContain(CHAP);
    expect(answer.body).not.toContain(DISCOVERY);
  });

  it('answers an unexpected failure with a generic problem, not its message', async () => {
    const answer = await app.fastify.inject({ method: 'GET', url: '/v1/volumes', headers: { authorization: `Bearer ${TOKENS.admin}` } });
    expect(answer.statusCode).toBe(500);
    expect(answer.body).not.toContain('stub service');
    expect(JSON.parse(answer.body)).toMatchObject({ code: 'INTERNAL', status: 500 });
  });
});
