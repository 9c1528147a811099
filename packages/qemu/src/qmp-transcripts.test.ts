import { isDeepStrictEqual } from 'node:util';
import { readQmpFixture, readQmpTranscript, type QmpExchange } from '@berth/testkit/fixtures';
import { describe, expect, it } from 'vitest';
import { qmpFailureOf } from './qmp-client.js';
import { useFakeQmp, type Answer } from './test-qmp-fixtures.js';

// Whole sessions with qemu-storage-daemon 7.2 as recorded on the build machine (the shared
// recorded outputs, `@berth/testkit/fixtures`), replayed through the client: every request must be
// the recorded one byte for byte apart from the id, and every reply — errors included, events
// before replies — must come back as the recorded value.

const greeting = readQmpFixture('qmp-greeting.txt').reply;

const fake = useFakeQmp('berth-qmp-transcripts-');

/** Answer the requests in the order `script` recorded them; a request that differs goes to `mismatches`. */
function scripted(script: readonly QmpExchange[], mismatches: string[]): Answer {
  let next = 0;
  return (request) => {
    const exchange = script[next++];
    const { id: _id, ...sent } = request;
    const expected: unknown = exchange?.request === undefined ? undefined : JSON.parse(exchange.request);
    if (!exchange || !isDeepStrictEqual(sent, expected)) {
      mismatches.push(`request ${next}: sent ${JSON.stringify(sent)}, recorded ${exchange?.request ?? '(nothing)'}`);
      return [JSON.stringify({ error: { class: 'GenericError', desc: 'unexpected request' }, id: '{id}' })];
    }
    const reply = JSON.parse(exchange.reply) as Record<string, unknown>;
    return [...exchange.events, JSON.stringify({ ...reply, id: '{id}' })];
  };
}

/** Replay `exchanges` (the first is qmp_capabilities) and check what the client returns for each. */
async function replay(exchanges: QmpExchange[]): Promise<void> {
  const mismatches: string[] = [];
  const client = await fake.connect(greeting, scripted(exchanges, mismatches));
  for (const exchange of exchanges.slice(1)) {
    const request = JSON.parse(exchange.request ?? '{}') as { execute: string; arguments?: Record<string, unknown> };
    const reply = JSON.parse(exchange.reply) as { return?: unknown; error?: { class: string; desc: string } };
    const outcome = await client.execute(request.execute, request.arguments).then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    if (reply.error) {
      expect('error' in outcome ? qmpFailureOf(outcome.error) : outcome, exchange.name).toEqual({ command: request.execute, errorClass: reply.error.class, desc: reply.error.desc });
    } else {
      expect(outcome, exchange.name).toEqual({ value: reply.return });
    }
  }
  expect(mismatches).toEqual([]);
  // Every request carried an id, so replies could be matched.
  expect(fake.server?.requests.every((r) => typeof r.id === 'string')).toBe(true);
}

describe('QmpClient replays recorded qemu-storage-daemon 7.2 sessions', () => {
  it('the main transcript: greeting, capabilities, nodes, exports, errors, events before replies', async () => {
    const transcript = readQmpTranscript('qmp-transcript-phase-a.txt');
    expect(transcript[0]?.name).toBe('qmp-greeting');
    await replay(transcript.slice(1));
  });

  it.each(['qmp-transcript-integrity.txt', 'qmp-transcript-integrity2.txt', 'qmp-transcript-integrity3.txt', 'qmp-transcript-lost-target.txt', 'qmp-transcript-quit.txt'])(
    '%s',
    async (name) => {
      await replay(readQmpTranscript(name));
    },
  );

  it('the single-exchange fixtures, requests byte for byte apart from the id', async () => {
    const names = ['qmp-qmp_capabilities.txt', 'qmp-blockdev-add-iscsi.txt', 'qmp-block-export-add-fuse.txt', 'qmp-block-export-del.txt', 'qmp-blockdev-del.txt', 'qmp-object-del-secret.txt'];
    await replay(names.map(readQmpFixture));
  });
});
