import { createRequire } from 'node:module';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createTestBerth, type TestBerth } from '../support/test-berth.js';

// Which commits of a real embedded attach and detach (SQLite, file backend, loop transport, real
// loop devices) wait for the disk. Every statement better-sqlite3 runs in this process is seen
// (its Statement methods wrapped, as the store-statements bench does); the store switches
// `PRAGMA synchronous` (2: FULL, synced at commit; 1: NORMAL, deferred-durable) before a
// transaction or a lone write, so each commit's level is the one set before it began. The rule
// under test (core README, "Which journal writes wait for the disk"): the row that starts a step
// changing something outside the store is durable; the last step's commit is durable.

const MiB = 1024 * 1024;

interface Seen {
  sql: string;
  params: unknown[];
}

/** Wrap the store's own better-sqlite3 Statement methods while `fn` runs. */
async function statementsOf(fn: () => Promise<void>): Promise<Seen[]> {
  const require = createRequire(import.meta.resolve('@berth/store'));
  const Database = require('better-sqlite3') as new (file: string) => { prepare(sql: string): object; close(): void };
  const probe = new Database(':memory:');
  type Run = (...args: unknown[]) => unknown;
  const proto = Object.getPrototypeOf(probe.prepare('select 1')) as Record<'run' | 'get' | 'all' | 'iterate', Run>;
  probe.close();
  const seen: Seen[] = [];
  const originals = (['run', 'get', 'all', 'iterate'] as const).map((name) => [name, proto[name]] as const);
  for (const [name, original] of originals) {
    proto[name] = function (this: { source: string }, ...args: unknown[]): unknown {
      seen.push({ sql: this.source.replace(/\s+/g, ' ').trim().toLowerCase(), params: args.flat(2) });
      return original.apply(this, args);
    };
  }
  try {
    await fn();
  } finally {
    for (const [name, original] of originals) proto[name] = original;
  }
  return seen;
}

/** Each commit's statements and whether it was durable (FULL). */
function commits(seen: readonly Seen[]): Array<{ durable: boolean; statements: Seen[] }> {
  const out: Array<{ durable: boolean; statements: Seen[] }> = [];
  let level = 2;
  let open: { durable: boolean; statements: Seen[] } | undefined;
  for (const s of seen) {
    const pragma = /^pragma synchronous ?= ?(\d)/.exec(s.sql);
    if (pragma) {
      level = Number(pragma[1]);
      continue;
    }
    if (s.sql.startsWith('begin')) {
      open = { durable: level === 2, statements: [] };
      continue;
    }
    if (s.sql === 'commit') {
      if (open) out.push(open);
      open = undefined;
      continue;
    }
    if (s.sql === 'rollback') {
      open = undefined;
      continue;
    }
    if (open) open.statements.push(s);
    else if (!s.sql.startsWith('select')) out.push({ durable: level === 2, statements: [s] });
  }
  return out;
}

/** The steps whose journal row is started in a durable commit, and in a deferred one. */
function stepStarts(all: ReturnType<typeof commits>): Record<string, 'durable' | 'deferred'> {
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
    const attach = commits(await statementsOf(async () => void (await berth.attach({ volume: 'durable' }))));
    const detach = commits(await statementsOf(async () => void (await berth.detach({ volume: 'durable' }))));

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
