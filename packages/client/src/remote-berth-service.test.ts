import { describe, expect, it } from 'vitest';
import { BerthError, type Operation, type Volume } from '@berth/core';
import { apiPath, problemToError } from './http-client.js';
import { CLIENT_KEY_PREFIX, RemoteBerthService } from './remote-berth-service.js';
import { codeOf, VOLUME_FIXTURE } from './test-support.js';

const VOLUME: Volume = VOLUME_FIXTURE;

const OPERATION: Operation = {
  id: '2c9d8e7f-1a2b-4c3d-9e8f-7a6b5c4d3e21',
  kind: 'attach',
  state: 'running',
  volumeId: VOLUME.id,
  serverId: null,
  attachmentId: null,
  hostId: null,
  idempotencyKey: null,
  owner: '1@h',
  deadlineAt: new Date(Date.now() + 60_000).toISOString(),
  startedAt: '2026-01-01T00:00:00.000Z',
  endedAt: null,
  error: null,
  result: null,
  steps: [],
};

interface Seen {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: string | undefined;
}

/** A fetch that answers from a script and records what it was asked. */
function scripted(answers: Array<{ status: number; body?: unknown }>, seen: Seen[]): typeof fetch {
  return (async (input: string | URL | Request, init?: RequestInit) => {
    seen.push({
      method: init?.method ?? 'GET',
      url: String(input),
      headers: (init?.headers ?? {}) as Record<string, string>,
      body: typeof init?.body === 'string' ? init.body : undefined,
    });
    const next = answers.shift() ?? { status: 500 };
    return new Response(next.body === undefined ? null : JSON.stringify(next.body), { status: next.status });
  }) as typeof fetch;
}


describe('RemoteBerthService', () => {
  it('sends the token, the project and the body, and reads the answer', async () => {
    const seen: Seen[] = [];
    const remote = new RemoteBerthService({ url: 'http://api.test:8776/base', token: 't0k', fetch: scripted([{ status: 200, body: VOLUME }], seen) });
    expect(await remote.getVolume('data 1/..', { projectId: 'p1' })).toEqual(VOLUME);
    expect(seen[0]?.url).toBe('http://api.test:8776/base/v1/volumes/data%201%2F..?projectId=p1');
    expect(seen[0]?.headers.authorization).toBe('Bearer t0k');
  });

  it('turns a problem answer into the BerthError it names, code, message and hint', async () => {
    const seen: Seen[] = [];
    const problem = { type: 'urn:berth:error:conflict', title: 'x', status: 409, code: 'CONFLICT', detail: 'volume data1 is in-use', hint: 'detach it', requestId: 'r1' };
    const remote = new RemoteBerthService({ url: 'http://api.test', fetch: scripted([{ status: 409, body: problem }], seen) });
    const error = await remote.deleteVolume('data1').catch((e: unknown) => e);
    expect(BerthError.is(error)).toBe(true);
    expect(error).toMatchObject({ code: 'CONFLICT', message: 'volume data1 is in-use', hint: 'detach it' });
    expect(problemToError(502, 'not json').code).toBe('INTERNAL');
    expect(problemToError(404, { code: 'NOT_A_CODE' }).code).toBe('NOT_FOUND');
  });

  it('forgets a host with DELETE /v1/hosts/{host} and checks the report; an empty name is refused before any request', async () => {
    const seen: Seen[] = [];
    const report = {
      host: { id: VOLUME.id, name: 'h-3' },
      alreadyGone: false,
      removed: true,
      attachments: [{ id: OPERATION.id, volumeId: VOLUME.id, volume: 'data1', server: 'web-7', status: 'attached', export: 'terminated', state: 'dropped', volumeStatus: 'available', error: null, errorCode: null }],
      operations: [],
      workItems: [],
      servers: [{ id: OPERATION.id, name: 'web-7', projectId: 'default' }],
      deviceRecords: 1,
      agentTokens: ['agent-h3'],
    };
    const remote = new RemoteBerthService({
      url: 'http://api.test',
      fetch: scripted([{ status: 200, body: report }, { status: 200, body: { host: 'h-3' } }, { status: 200, body: report }], seen),
    });
    expect(await remote.forgetHost(' h-3 ')).toEqual(report);
    expect(seen[0]).toMatchObject({ method: 'DELETE', url: 'http://api.test/v1/hosts/h-3' });
    // An answer that is not a report is the server's fault, not a silent success.
    expect(await codeOf(remote.forgetHost('h-3'))).toBe('INTERNAL');
    expect(await codeOf(remote.forgetHost(''))).toBe('VALIDATION');
    // The caller's assertion that the machine is dead goes as a query; a bad one never leaves.
    expect(await remote.forgetHost('h-5', { assumeDead: true })).toEqual(report);
    expect(seen[2]).toMatchObject({ method: 'DELETE', url: 'http://api.test/v1/hosts/h-5?assumeDead=true' });
    expect(await codeOf(remote.forgetHost('h-5', { assumeDead: 'yes' } as never))).toBe('VALIDATION');
    expect(await codeOf(remote.forgetHost('h-5', { force: true } as never))).toBe('VALIDATION');
    expect(seen).toHaveLength(3);
  });

  it('attaches as start + long-poll of the outcome, and rethrows a failed operation\'s error', async () => {
    const seen: Seen[] = [];
    const finished = { ...OPERATION, state: 'succeeded' as const, endedAt: '2026-01-01T00:00:01.000Z' };
    const remote = new RemoteBerthService({
      url: 'http://api.test',
      pollWaitSeconds: 5,
      fetch: scripted(
        [
          { status: 202, body: OPERATION },
          { status: 202, body: OPERATION },
          { status: 200, body: { operation: finished, volume: VOLUME, attachment: null } },
          { status: 202, body: OPERATION },
          { status: 422, body: { code: 'UNPROCESSABLE', detail: 'not on this host', operationId: OPERATION.id } },
        ],
        seen,
      ),
    });
    const outcome = await remote.attach({ volume: 'data1', idempotencyKey: 'k1' });
    expect(outcome).toEqual({ operation: finished, volume: VOLUME, attachment: undefined });
    expect(seen[0]).toMatchObject({ method: 'POST', url: 'http://api.test/v1/volumes/data1/attach' });
    expect(seen[0]?.headers['idempotency-key']).toBe('k1');
    expect(JSON.parse(seen[0]?.body ?? '')).toEqual({});
    // It asks the server to hold the answer (a server that does not, or an operation still running, answers 202).
    expect(seen[0]?.headers.prefer).toBe('wait=5');
    expect(seen[1]?.url).toBe(`http://api.test/v1/operations/${OPERATION.id}/outcome?wait=5s`);
    const error = await remote.detach({ volume: 'data1' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'UNPROCESSABLE', details: { operationId: OPERATION.id } });
  });

  it('takes an outcome the start answered with (`Prefer: wait` honoured) without a long-poll; startAttach does not wait', async () => {
    const seen: Seen[] = [];
    const finished = { ...OPERATION, state: 'succeeded' as const, endedAt: '2026-01-01T00:00:01.000Z' };
    const remote = new RemoteBerthService({
      url: 'http://api.test',
      fetch: scripted(
        [
          { status: 200, body: { operation: finished, volume: VOLUME, attachment: null } },
          { status: 202, body: OPERATION },
          { status: 200, body: { operation: finished, volume: VOLUME, attachment: null } },
        ],
        seen,
      ),
    });
    expect(await remote.attach({ volume: 'data1' })).toEqual({ operation: finished, volume: VOLUME, attachment: undefined });
    expect(seen).toHaveLength(1);
    expect(seen[0]?.headers.prefer).toBe('wait=30');
    const started = await remote.startAttach({ volume: 'data1' });
    expect(started.operation).toEqual(OPERATION);
    expect(seen[1]?.headers.prefer).toBeUndefined();
    expect((await started.done).operation).toEqual(finished);
    // A start the caller gave no key gets one of the client's own (a new one each time), which the
    // API knows by its prefix: a start a frozen replica took may then go to the next replica.
    const keys = [seen[0]?.headers['idempotency-key'], seen[1]?.headers['idempotency-key']];
    for (const key of keys) expect(key).toMatch(/^berth-client:[0-9a-f-]{36}$/);
    expect(keys[0]).not.toBe(keys[1]);
    expect(CLIENT_KEY_PREFIX).toBe('berth-client:');
  });

  it('reconciles on the server: POST /v1/reconcile with dryRun, the report as sent, FORBIDDEN for a member', async () => {
    const seen: Seen[] = [];
    const report = {
      dryRun: true,
      operationId: null,
      differences: [
        {
          kind: 'volume_status_mismatch',
          resource: 'volume data1',
          volumeId: VOLUME.id,
          attachmentId: null,
          detail: 'volume data1 is in-use, but its attachments make it available',
          fix: 'recompute_status',
          fixDetail: 'set it to available (compare-and-swap from in-use)',
          state: 'planned',
          result: null,
          errorCode: null,
        },
      ],
      unchecked: [{ kind: 'backend', name: 'file', reason: 'it cannot list its exports' }],
      counts: { found: 1, applied: 0, failed: 0, skipped: 0 },
    };
    const forbidden = { code: 'FORBIDDEN', detail: 'a member token cannot do this', status: 403 };
    const remote = new RemoteBerthService({
      url: 'http://api.test',
      token: 'admin',
      fetch: scripted([{ status: 200, body: report }, { status: 200, body: { ...report, dryRun: false, differences: 'no' } }, { status: 403, body: forbidden }], seen),
    });
    expect(await remote.reconcile({ dryRun: true })).toEqual(report);
    expect(seen[0]).toMatchObject({ method: 'POST', url: 'http://api.test/v1/reconcile' });
    expect(JSON.parse(seen[0]?.body ?? '')).toEqual({ dryRun: true });
    // An answer that is not a report is the server's fault, not a report with nothing in it.
    expect(await codeOf(remote.reconcile())).toBe('INTERNAL');
    expect(JSON.parse(seen[1]?.body ?? '')).toEqual({});
    expect(await codeOf(remote.reconcile())).toBe('FORBIDDEN');
    expect(await codeOf(remote.reconcile({ dryRun: 'yes' } as unknown as { dryRun: boolean }))).toBe('VALIDATION');
    expect(seen).toHaveLength(3);
  });

  it('validates requests as the embedded service does, before sending anything', async () => {
    const seen: Seen[] = [];
    const remote = new RemoteBerthService({ url: 'http://api.test', fetch: scripted([], seen) });
    expect(await codeOf(remote.createVolume({ name: '../x', sizeBytes: 1000 }))).toBe('VALIDATION');
    expect(await codeOf(remote.getVolume('..'))).toBe('NOT_FOUND');
    expect(seen).toEqual([]);
  });

  it('reports an unreachable server and a bad URL as CONFIG', async () => {
    const refused = new RemoteBerthService({ url: 'http://127.0.0.1:1' });
    expect(await codeOf(refused.listVolumes())).toBe('CONFIG');
    expect(() => new RemoteBerthService({ url: 'not a url' })).toThrow(BerthError);
    expect(() => new RemoteBerthService({ url: 'file:///etc/passwd' })).toThrow(BerthError);
  });

  it('encodes each path value as one segment', () => {
    expect(apiPath`/v1/volumes/${'a/b?c#d'}/extend`).toBe('/v1/volumes/a%2Fb%3Fc%23d/extend');
    expect(() => apiPath`/v1/volumes/${'.'}`).toThrow(BerthError);
  });
});
