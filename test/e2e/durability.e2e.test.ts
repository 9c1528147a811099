import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sqliteCommits, tapSqliteStatements, type TappedCommit } from '@berth/store/testing';
import { createTestBerth, type TestBerth } from '../support/test-berth.js';

// Which commits of a real embedded attach and detach (SQLite, file backend, loop transport, real
// loop devices) wait for the disk, read from the statements better-sqlite3 runs in this process
// and the driver's requests for a sync of the WAL among them (`@berth/store/testing`). The rule
// under test (core README, "Which journal writes wait for the disk"): the row that starts a step
// changing something outside the store is durable; the last step's commit is durable.

const MiB = 1024 * 1024;

/** The steps whose journal row is started in a durable commit, and in a deferred one. */
function stepStarts(all: readonly TappedCommit[]): Record<string, 'durable' | 'deferred'> {
  const starts: Record<string, 'durable' | 'deferred'> = {};
  for (const commit of all) {
    for (const s of commit.statements) {
      if (!s.sql.startsWith('insert into "operation_steps"') || !s.params.includes('do')) continue;
      const name = s.params.find((p) => typeof p === 'string' && /^[a-z_]+$/.test(p) && p !== 'do' && p !== 'running');
      if (typeof name === 'string') starts[name] = commit.durable ? 'durable' : 'deferred';
    }
  }
  return starts;
}

let t: TestBerth;
beforeEach(async () => {
  t = await createTestBerth();
});
afterEach(async () => {
  await t.cleanup();
});

describe('durability of the embedded pipelines\' commits (SQLite, loop transport)', () => {
  it('attach and detach: the rows before outside changes and the last step are durable, the rest deferred', async () => {
    const berth = await t.open();
    await berth.createVolume({ name: 'durable', sizeBytes: 16 * MiB });
    // The first cycle registers this host and its server: count the second.
    await berth.attach({ volume: 'durable' });
    await berth.detach({ volume: 'durable' });
    const attach = sqliteCommits(await tapSqliteStatements(async () => void (await berth.attach({ volume: 'durable' }))));
    const detach = sqliteCommits(await tapSqliteStatements(async () => void (await berth.detach({ volume: 'durable' }))));

    expect(stepStarts(attach)).toEqual({
      reserve: 'deferred',
      dispatch: 'deferred',
      connector: 'deferred',
      initialize: 'durable',
      connect: 'durable',
      publish: 'durable',
      complete: 'deferred',
    });
    // complete's commit (the attachment becomes `attached`, the step ends) is durable: the caller
    // is told the attach succeeded once it is in.
    const attached = attach.filter((c) => c.statements.some((s) => s.sql.startsWith('update "attachments"') && s.params.includes('attached')));
    expect(attached.map((c) => c.durable)).toEqual([true]);

    expect(stepStarts(detach)).toEqual({
      begin_detaching: 'deferred',
      dispatch: 'deferred',
      unpublish: 'durable',
      disconnect: 'durable',
      terminate: 'durable',
      delete_attachment: 'deferred',
    });
    const deleted = detach.filter((c) => c.statements.some((s) => s.sql.startsWith('delete from "attachments"')));
    expect(deleted.map((c) => c.durable)).toEqual([true]);

    // What the store-statements bench reports: 4 durable commits per operation.
    expect(attach.filter((c) => c.durable)).toHaveLength(4);
    expect(detach.filter((c) => c.durable)).toHaveLength(4);
  });
});
