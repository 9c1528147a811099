import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { removeFuseExport } from './fuse-export.js';
import { removeIscsiNode } from './iscsi-node.js';
import { isQmpConnectionLost, QmpClient, qmpFailureOf } from './qmp-client.js';
import { zBlockExportList, zNamedBlockNodeList, zQemuVersion } from './qmp-schemas.js';
import { recordedExchange, replyWithId, useFakeQmp, type Answer } from './test-qmp-fixtures.js';

// The QMP client against a fake server that answers with what qemu-storage-daemon 7.2.22 answered
// (fixtures/qmp-*.txt, recorded on the build machine).

const greeting = recordedExchange('qmp-greeting.txt').reply;
const capabilities = replyWithId(recordedExchange('qmp-qmp_capabilities.txt'));

const fake = useFakeQmp('berth-qmp-');

/** A server answering each command with the recorded exchange named for it. */
function byCommand(answers: Record<string, string[] | (() => string[])>): Answer {
  return (request) => {
    const command = String(request.execute);
    if (command === 'qmp_capabilities') return [capabilities];
    const answer = answers[command];
    if (answer === undefined) return [JSON.stringify({ error: { class: 'CommandNotFound', desc: `The command ${command} has not been found` }, id: '{id}' })];
    return typeof answer === 'function' ? answer() : answer;
  };
}

function recorded(name: string): string[] {
  const exchange = recordedExchange(name);
  return [...exchange.events, replyWithId(exchange)];
}

function connectTo(answer: Answer, greet = greeting): Promise<QmpClient> {
  return fake.connect(greet, answer);
}

async function rejection(promise: Promise<unknown>): Promise<BerthError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!BerthError.is(error)) throw new Error(`expected a BerthError, got ${String(error)}`);
  return error;
}

describe('QmpClient', () => {
  it('reads the greeting, negotiates capabilities and returns typed replies', async () => {
    const qmp = await connectTo(byCommand({ 'query-version': recorded('qmp-query-version.txt') }));
    expect(qmp.greeting?.QMP.version.qemu).toEqual({ major: 7, minor: 2, micro: 22 });
    expect(fake.server?.requests[0]).toMatchObject({ execute: 'qmp_capabilities' });
    const version = await qmp.request('query-version', undefined, zQemuVersion);
    expect(version.package).toContain('Debian');
  });

  it('takes a second greeting for nothing, and each reply for its own command (qemu 7.2 greets twice in its start-up race)', async () => {
    // The second greeting lands where the answer to qmp_capabilities is awaited, then before a reply.
    const qmp = await connectTo((request) => {
      if (request.execute === 'qmp_capabilities') return [greeting, capabilities];
      return [greeting, ...recorded('qmp-query-version.txt')];
    });
    const version = await qmp.request('query-version', undefined, zQemuVersion);
    expect(version.qemu.major).toBe(7);
  });

  it('sends ids unique to its connection: an answer QEMU still owes an earlier client is not taken for one of this client', async () => {
    const first = await connectTo(byCommand({}));
    const ids = new Set<unknown>(fake.server?.requests.map((r) => r.id));
    first.close();
    const second = await QmpClient.connect(first.path, { timeoutMs: 2_000 });
    second.close();
    const all = fake.server?.requests.map((r) => r.id) ?? [];
    expect(all.length).toBeGreaterThan(ids.size);
    expect(all.filter((id) => ids.has(id))).toHaveLength(ids.size);
  });

  it('parses the recorded listings of exports and nodes', async () => {
    const qmp = await connectTo(
      byCommand({
        'query-block-exports': recorded('qmp-query-block-exports.txt'),
        'query-named-block-nodes': recorded('qmp-query-named-block-nodes-flat.txt'),
      }),
    );
    expect(await qmp.request('query-block-exports', undefined, zBlockExportList)).toEqual([
      { 'node-name': 'vol1', 'shutting-down': false, type: 'fuse', id: 'exp0' },
    ]);
    const nodes = await qmp.request('query-named-block-nodes', { flat: true }, zNamedBlockNodeList);
    expect(nodes.map((n) => [n['node-name'], n.drv, n.image?.['virtual-size']])).toEqual([['vol1', 'iscsi', 67108864]]);
  });

  it('turns error replies into DRIVER_ERROR with the QMP class and description', async () => {
    const qmp = await connectTo(
      byCommand({
        'blockdev-add': recorded('qmp-blockdev-add-iscsi-wrong-chap-password.txt'),
        'block-export-add': recorded('qmp-block-export-add-duplicate-id.txt'),
      }),
    );
    const login = await rejection(qmp.execute('blockdev-add', { driver: 'iscsi' }));
    expect(login.code).toBe('DRIVER_ERROR');
    expect(qmpFailureOf(login)).toEqual({
      command: 'blockdev-add',
      errorClass: 'GenericError',
      desc: 'iSCSI: Failed to connect to LUN : Failed to log in to target. Status: Authentication failure(513)',
    });
    expect(login.message).toContain('Authentication failure(513)');
    expect(qmpFailureOf(await rejection(qmp.execute('block-export-add', {}))))?.toMatchObject({ desc: "Block export id 'exp0' is already in use" });
  });

  it('checks reply shapes against the schema', async () => {
    const qmp = await connectTo(byCommand({ 'query-block-exports': recorded('qmp-query-version.txt') }));
    const error = await rejection(qmp.request('query-block-exports', undefined, zBlockExportList));
    expect(error.message).toMatch(/unexpected shape/);
  });

  it('delivers an event sent before the reply to a waiter registered before the command', async () => {
    const qmp = await connectTo(byCommand({ 'block-export-del': recorded('qmp-block-export-del.txt') }));
    await removeFuseExport(qmp, 'exp0', { timeoutMs: 1_000 });
    expect(fake.server?.requests.at(-1)).toMatchObject({ execute: 'block-export-del', arguments: { id: 'exp0' } });
  });

  it('treats deleting a missing export or node as done', async () => {
    const qmp = await connectTo(
      byCommand({
        'block-export-del': recorded('qmp-block-export-del-missing.txt'),
        'blockdev-del': recorded('qmp-blockdev-del-missing.txt'),
        'object-del': [JSON.stringify({ error: { class: 'GenericError', desc: "object 'sec' not found" }, id: '{id}' })],
      }),
    );
    await removeFuseExport(qmp, 'no-such-export', { timeoutMs: 1_000 });
    await removeIscsiNode(qmp, 'vol1', 'sec', { timeoutMs: 1_000 });
  });

  it('asks blockdev-del again while the node is still in use, until it is released', async () => {
    let calls = 0;
    const qmp = await connectTo(
      byCommand({
        'blockdev-del': () => (++calls < 3 ? recorded('qmp-blockdev-del-in-use.txt') : [JSON.stringify({ return: {}, id: '{id}' })]),
      }),
    );
    await removeIscsiNode(qmp, 'vol1', undefined, { timeoutMs: 2_000 });
    expect(calls).toBe(3);
  });

  it('matches replies to commands by id when they come back out of order', async () => {
    const held: string[] = [];
    const qmp = await connectTo((request) => {
      if (request.execute === 'qmp_capabilities') return [capabilities];
      held.push(JSON.stringify({ return: { echo: request.arguments }, id: request.id }));
      return held.length === 3 ? held.reverse() : [];
    });
    const replies = await Promise.all([1, 2, 3].map((n) => qmp.execute('echo', { n })));
    expect(replies).toEqual([1, 2, 3].map((n) => ({ echo: { n } })));
  });

  it('times out a command the server never answers, and cancels one on abort', async () => {
    const qmp = await connectTo(byCommand({ slow: [] }));
    const timeout = await rejection(qmp.execute('slow', undefined, { timeoutMs: 50 }));
    expect(timeout.code).toBe('TIMEOUT');
    const controller = new AbortController();
    const waiting = rejection(qmp.execute('slow', undefined, { timeoutMs: 5_000, signal: controller.signal }));
    controller.abort();
    expect((await waiting).code).toBe('CANCELLED');
    const already = await rejection(qmp.execute('slow', undefined, { signal: AbortSignal.abort() }));
    expect(already.code).toBe('CANCELLED');
  });

  it('streams events to listeners and iterators, and waits for a matching one', async () => {
    const event = (id: string): string => JSON.stringify({ event: 'DEVICE_DELETED', data: { device: id }, timestamp: { seconds: 1, microseconds: 2 } });
    const qmp = await connectTo(byCommand({ unplug: [event('a'), event('b'), JSON.stringify({ return: {}, id: '{id}' })] }));
    const seen: string[] = [];
    const stop = qmp.onEvent((e) => seen.push(String(e.data?.device)));
    const iterator = qmp.events();
    const first = iterator.next();
    const b = qmp.waitForEvent('DEVICE_DELETED', (e) => e.data?.device === 'b', { timeoutMs: 1_000 });
    await qmp.execute('unplug');
    expect((await b).data).toEqual({ device: 'b' });
    expect((await first).value).toMatchObject({ event: 'DEVICE_DELETED', data: { device: 'a' } });
    expect(seen).toEqual(['a', 'b']);
    stop();
    const none = await rejection(qmp.waitForEvent('SHUTDOWN', undefined, { timeoutMs: 30 }));
    expect(none.code).toBe('TIMEOUT');
    qmp.close();
    expect((await iterator.next()).value).toMatchObject({ event: 'DEVICE_DELETED', data: { device: 'b' } });
    expect((await iterator.next()).done).toBe(true);
  });

  it('rejects what is waiting when the server closes the connection (as after quit)', async () => {
    const qmp = await connectTo(byCommand({ hang: [] }));
    const pending = rejection(qmp.execute('hang', undefined, { timeoutMs: 5_000 }));
    const event = rejection(qmp.waitForEvent('SHUTDOWN', undefined, { timeoutMs: 5_000 }));
    for (const socket of fake.server?.sockets ?? []) socket.end();
    const lost = await pending;
    expect(lost.details.qmpClosed).toBe(true);
    expect(isQmpConnectionLost(lost)).toBe(true);
    expect(isQmpConnectionLost(new BerthError('DRIVER_ERROR', 'QMP blockdev-del failure'))).toBe(false);
    expect((await event).details.qmpClosed).toBe(true);
    expect((await qmp.closed).details.qmpClosed).toBe(true);
    expect(qmp.isClosed).toBe(true);
    expect((await rejection(qmp.execute('query-version'))).details.qmpClosed).toBe(true);
  });

  it('refuses a server that does not greet like QMP', async () => {
    const error = await rejection(fake.connect(JSON.stringify({ hello: 'world' }), () => []));
    expect(error.message).toMatch(/did not greet like a QMP server/);
  });

  it('never puts arguments in errors (they may name secret objects)', async () => {
    const qmp = await connectTo(byCommand({}));
    const error = await rejection(qmp.execute('object-add', { 'qom-type': 'secret', id: 's', data: 'hunter2' }));
    expect(JSON.stringify(error.toJSON())).not.toContain('hunter2');
    expect(error.message).not.toContain('hunter2');
  });
});
