import { once } from 'node:events';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Operation, OperationOutcome, Volume } from '@berth/core';
import { createApiApp, type ApiApp } from './app.js';
import { TokenTable } from './auth.js';
import { stubService } from './test-stub-service.js';
import { testTokenEntries, TOKENS } from './test-support.js';

const VOLUME: Volume = {
  id: '0b9f7c1e-4f7e-4d43-9a55-3f1c2d7a8e10',
  name: 'slow',
  projectId: 'default',
  sizeBytes: 1048576,
  status: 'attaching',
  backend: 'file',
  multiattach: false,
  providerLocation: null,
  createdAt: '2026-01-01T00:00:00.000Z',
  updatedAt: '2026-01-01T00:00:00.000Z',
};

function running(id: string): Operation {
  return {
    id,
    kind: 'attach',
    state: 'running',
    volumeId: VOLUME.id,
    serverId: null,
    attachmentId: null,
    hostId: null,
    idempotencyKey: null,
    owner: '1@h',
    deadlineAt: new Date(Date.now() + 600_000).toISOString(),
    startedAt: new Date().toISOString(),
    endedAt: null,
    error: null,
    result: null,
    steps: [],
  };
}

// One this app starts (its end wakes the waiters), and one "another process" runs (read from the store).
const LOCAL = running('2c9d8e7f-1a2b-4c3d-9e8f-7a6b5c4d3e21');
const FOREIGN = running('3d0e9f80-2b3c-4d4e-8f90-8b7c6d5e4f32');

let app: ApiApp;
let port: number;
let finish: (outcome: OperationOutcome) => void = () => undefined;

beforeAll(async () => {
  const done = new Promise<OperationOutcome>((resolve) => {
    finish = resolve;
  });
  app = await createApiApp({
    service: stubService({
      getVolume: async () => VOLUME,
      startAttach: async () => ({ operation: LOCAL, done }),
      getOperation: async (id) => (id === LOCAL.id ? LOCAL : FOREIGN),
    }),
    tokens: TokenTable.fromConfig(testTokenEntries(), {}),
    defaultProject: 'default',
    defaultMetrics: false,
  });
  port = Number(new URL(await app.listen('127.0.0.1', 0)).port);
  const started = await fetch(`http://127.0.0.1:${port}/v1/volumes/slow/attach`, { method: 'POST', headers: { authorization: `Bearer ${TOKENS.admin}` } });
  expect(started.status).toBe(202);
});

afterAll(async () => {
  finish({ operation: { ...LOCAL, state: 'succeeded', endedAt: new Date().toISOString() }, volume: VOLUME, attachment: undefined });
  await app?.close();
});

/** Reject when `promise` has not settled within `ms`. */
async function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

describe('a long-poll whose client goes away', () => {
  for (const [which, operation] of [
    ['run by this app', LOCAL],
    ['run elsewhere (read from the store)', FOREIGN],
  ] as const) {
    it(`stops waiting at once for an operation ${which}`, async () => {
      const socket = net.connect(port, '127.0.0.1');
      await once(socket, 'connect');
      const waiting = once(app.tracker.waits, 'start');
      socket.write(`GET /v1/operations/${operation.id}?wait=60s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKENS.admin}\r\n\r\n`);
      expect(await within(10_000, waiting, 'the long-poll')).toEqual([operation.id]);
      expect(app.tracker.waitingCount).toBe(1);
      const ended = once(app.tracker.waits, 'end');
      socket.destroy();
      // Without the fix the wait lasts its full 60 s.
      expect(await within(10_000, ended, 'the end of the wait after the client left')).toEqual([operation.id]);
      expect(app.tracker.waitingCount).toBe(0);
      const metrics = await app.metrics.render();
      expect(metrics.body).toContain('berth_http_long_polls_waiting 0');
    });
  }
});
