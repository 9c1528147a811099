import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QmpClient, QmpError } from './qmp-client.js';
import { readQmpFixture, readQmpTranscript, type QmpExchange } from '@berth/testkit/fixtures';
import { startFakeQmpServer, type FakeQmpServer } from './test-qmp-server.js';

const greeting = readQmpFixture('qmp-greeting.txt').reply;

let dir: string;
let server: FakeQmpServer | undefined;
let client: QmpClient | undefined;

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'berth-qmp-test-'));
});

afterEach(async () => {
  client?.close();
  client = undefined;
  await server?.close();
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
});

interface Request {
  execute: string;
  arguments?: Record<string, unknown>;
}

/** Replay `exchanges` (the first must be qmp_capabilities) and check every reply the client returns. */
async function replay(exchanges: QmpExchange[]): Promise<void> {
  const socket = path.join(dir, 'qmp.sock');
  server = await startFakeQmpServer(socket, exchanges, { greeting });
  client = await QmpClient.connect(socket, { timeoutMs: 2000 });
  for (const exchange of exchanges.slice(1)) {
    const request = JSON.parse(exchange.request ?? '{}') as Request;
    const reply = JSON.parse(exchange.reply) as { return?: unknown; error?: { class: string; desc: string } };
    const outcome = client.execute(request.execute, request.arguments);
    if (reply.error) {
      const error = await outcome.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error, exchange.name).toBeInstanceOf(QmpError);
      expect((error as QmpError).errorClass).toBe(reply.error.class);
      expect((error as QmpError).desc).toBe(reply.error.desc);
    } else {
      expect(await outcome, exchange.name).toEqual(reply.return);
    }
  }
  expect(server.mismatches).toEqual([]);
}

describe('QmpClient against recorded qemu-storage-daemon 7.2 exchanges', () => {
  it('reads the greeting, negotiates capabilities and replays the main transcript (errors, events before replies)', async () => {
    const transcript = readQmpTranscript('qmp-transcript-phase-a.txt');
    expect(transcript[0]?.name).toBe('qmp-greeting');
    await replay(transcript.slice(1));
    // Every request carried an id, so replies could be matched.
    expect(server?.requests.every((r) => typeof r.id === 'string')).toBe(true);
  });

  it.each(['qmp-transcript-integrity.txt', 'qmp-transcript-integrity2.txt', 'qmp-transcript-integrity3.txt', 'qmp-transcript-lost-target.txt'])(
    'replays %s',
    async (name) => {
      await replay(readQmpTranscript(name));
    },
  );

  it('sends the requests qemu was sent, byte for byte apart from the id (single-exchange fixtures)', async () => {
    const names = ['qmp-qmp_capabilities.txt', 'qmp-blockdev-add-iscsi.txt', 'qmp-block-export-add-fuse.txt', 'qmp-block-export-del.txt', 'qmp-blockdev-del.txt', 'qmp-object-del-secret.txt'];
    await replay(names.map(readQmpFixture));
  });

  it('returns quit, then sees the server close the socket', async () => {
    const socket = path.join(dir, 'qmp.sock');
    const transcript = readQmpTranscript('qmp-transcript-quit.txt');
    server = await startFakeQmpServer(socket, transcript, { greeting });
    client = await QmpClient.connect(socket);
    expect(await client.execute('query-block-exports')).toEqual([]);
    expect(await client.execute('quit')).toEqual({});
    await expect.poll(() => client?.closed).toBe(true);
    await expect(client.execute('query-version')).rejects.toThrow(/closed/);
  });

  it('matches replies to requests by id when they come back out of order', async () => {
    const socket = path.join(dir, 'qmp.sock');
    const names = ['qmp-qmp_capabilities.txt', 'qmp-query-version.txt', 'qmp-query-block-exports.txt'];
    server = await startFakeQmpServer(socket, names.map(readQmpFixture), { greeting, reverseBatch: 2 });
    client = await QmpClient.connect(socket);
    const [version, exports] = await Promise.all([client.execute('query-version'), client.execute('query-block-exports')]);
    expect(version).toMatchObject({ qemu: { major: 7, minor: 2, micro: 22 } });
    expect(exports).toEqual([{ 'node-name': 'vol1', 'shutting-down': false, type: 'fuse', id: 'exp0' }]);
  });

  it('times out a command that gets no reply, and rejects waiting commands when the server goes away', async () => {
    const socket = path.join(dir, 'qmp.sock');
    server = await startFakeQmpServer(socket, [readQmpFixture('qmp-qmp_capabilities.txt')], { greeting, silentAfter: 1 });
    client = await QmpClient.connect(socket);
    const started = Date.now();
    await expect(client.execute('query-version', undefined, { timeoutMs: 50 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(Date.now() - started).toBeLessThan(1000);
    const waiting = client.execute('query-version', undefined, { timeoutMs: 5000 });
    await server.close();
    server = undefined;
    await expect(waiting).rejects.toThrow(/QMP connection to .* (closed|lost)/);
  });

  it('refuses a server that does not greet like QMP, and fails fast when nothing listens', async () => {
    const socket = path.join(dir, 'qmp.sock');
    server = await startFakeQmpServer(socket, [], { greeting: '{"hello": 1}' });
    await expect(QmpClient.connect(socket, { timeoutMs: 1000 })).rejects.toThrow(/did not greet like a QMP server/);
    await expect(QmpClient.connect(path.join(dir, 'none.sock'), { timeoutMs: 1000 })).rejects.toThrow(/ENOENT/);
  });
});
