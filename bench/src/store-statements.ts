import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { sqliteCommits, tapSqliteStatements, WAL_SYNC_MARK, type TappedStatement } from '@berth/store/testing';
import { printTable } from './stats.js';

/** `SELECT volumes`, `UPDATE attachments`, `BEGIN`…: a statement's verb and table. */
function kindOf(sql: string): string {
  const text = sql.trim().toLowerCase();
  const verb = /^(begin|commit|rollback|select|insert|update|delete|with)/.exec(text)?.[1] ?? text.slice(0, 12);
  const table = /(?:from|into|update)\s+"(\w+)"/.exec(text)?.[1] ?? '';
  return `${verb.toUpperCase()} ${table}`.trim();
}

/**
 * Statements, transactions and commits (a transaction, or a write outside one) of one operation,
 * and how many of the commits wait for the disk (`sqliteCommits`: those the driver syncs the WAL
 * for, marked in the stream by `WAL_SYNC_MARK`, which is not counted as a statement).
 */
function tally(seen: readonly TappedStatement[]): { statements: number; transactions: number; commits: number; durable: number; kinds: string } {
  const kinds = new Map<string, number>();
  let transactions = 0;
  for (const { sql } of seen) {
    if (sql === WAL_SYNC_MARK) continue;
    const kind = kindOf(sql);
    if (kind === 'BEGIN') transactions += 1;
    if (kind === 'BEGIN' || kind === 'COMMIT' || kind === 'ROLLBACK') continue;
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  const commits = sqliteCommits(seen);
  const counted = [...kinds.values()].reduce((a, b) => a + b, 0);
  const listed = [...kinds].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([k, n]) => `${k} ×${n}`);
  return { statements: counted, transactions, commits: commits.length, durable: commits.filter((c) => c.durable).length, kinds: listed.join(', ') };
}

/**
 * SQLite statements per embedded attach and detach (file backend, loop transport, real loop
 * devices): how many, how many commits, and which, counted on the last of `rounds` cycles (the
 * first creates the host and server records). Not a timing: the count is the same under any load.
 */
export async function benchStoreStatements(rounds = 2): Promise<void> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-statements-'));
  const berth = await openBerth({ dataDir, env: {}, logger: silentLogger });
  try {
    await berth.createVolume({ name: 'statements', sizeBytes: 16 * 1024 * 1024 });
    let attach: TappedStatement[] = [];
    let detach: TappedStatement[] = [];
    for (let i = 0; i < rounds; i++) {
      attach = await tapSqliteStatements(async () => void (await berth.attach({ volume: 'statements' })));
      detach = await tapSqliteStatements(async () => void (await berth.detach({ volume: 'statements' })));
    }
    const rows = [
      ['attach', tally(attach)],
      ['detach', tally(detach)],
    ] as const;
    printTable(
      'SQLite statements per operation (loop transport, embedded)',
      ['operation', 'statements', 'transactions', 'commits', 'durable commits'],
      rows.map(([name, t]) => [name, String(t.statements), String(t.transactions), String(t.commits), String(t.durable)]),
    );
    for (const [name, t] of rows) console.log(`${name}: ${t.kinds}`);
  } finally {
    await berth.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}
