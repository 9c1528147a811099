import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { printTable } from './stats.js';

/** The slice of better-sqlite3's `Statement` counted here: its SQL and the methods that run it. */
interface CountedStatement {
  readonly source: string;
}
type Run = (this: CountedStatement, ...args: unknown[]) => unknown;

const RUNS = ['run', 'all', 'get', 'iterate'] as const;

/**
 * Count every statement better-sqlite3 runs while `fn` runs, by wrapping its `Statement`'s
 * methods (this process only; put back afterwards). Kysely keeps no statement of its own, and the
 * store's statement cache hands out these same objects, so every execution passes here.
 */
async function countStatements(fn: () => Promise<void>): Promise<string[]> {
  // The store's own better-sqlite3, not one the bench would resolve by itself.
  const require = createRequire(import.meta.resolve('@berth/store'));
  const Database = require('better-sqlite3') as new (file: string) => { prepare(sql: string): object; close(): void };
  const probe = new Database(':memory:');
  const proto = Object.getPrototypeOf(probe.prepare('select 1')) as Record<(typeof RUNS)[number], Run>;
  probe.close();
  const seen: string[] = [];
  const originals = RUNS.map((name) => [name, proto[name]] as const);
  for (const [name, original] of originals) {
    proto[name] = function (this: CountedStatement, ...args: unknown[]): unknown {
      seen.push(this.source);
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

/** `SELECT volumes`, `UPDATE attachments`, `BEGIN`…: a statement's verb and table. */
function kindOf(sql: string): string {
  const text = sql.trim().toLowerCase();
  const verb = /^(begin|commit|rollback|select|insert|update|delete|with)/.exec(text)?.[1] ?? text.slice(0, 12);
  const table = /(?:from|into|update)\s+"(\w+)"/.exec(text)?.[1] ?? '';
  return `${verb.toUpperCase()} ${table}`.trim();
}

/**
 * Statements, transactions and commits (a transaction, or a write outside one) of one operation,
 * and of the commits those that wait for the disk: the store switches SQLite's `synchronous` with
 * a pragma (2: FULL, synced at commit; 1: NORMAL, deferred-durable) before a transaction or a lone
 * write, so the level each commit ran at is the last one set before it. The pragmas are not
 * counted as statements.
 */
function tally(statements: readonly string[]): { statements: number; transactions: number; commits: number; durable: number; kinds: string } {
  let depth = 0;
  let transactions = 0;
  let outside = 0;
  let durable = 0;
  let level = 2;
  let begunAt = 2;
  const kinds = new Map<string, number>();
  for (const sql of statements) {
    const pragma = /^\s*pragma\s+synchronous\s*=\s*(\d)/i.exec(sql);
    if (pragma) {
      level = Number(pragma[1]);
      continue;
    }
    const kind = kindOf(sql);
    if (kind === 'BEGIN') {
      depth += 1;
      transactions += 1;
      begunAt = level;
      continue;
    }
    if (kind === 'COMMIT' || kind === 'ROLLBACK') {
      depth -= 1;
      if (kind === 'COMMIT' && begunAt === 2) durable += 1;
      continue;
    }
    if (depth === 0 && !kind.startsWith('SELECT')) {
      outside += 1;
      if (level === 2) durable += 1;
    }
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  const counted = [...kinds.values()].reduce((a, b) => a + b, 0);
  const listed = [...kinds].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([k, n]) => `${k} ×${n}`);
  return { statements: counted, transactions, commits: transactions + outside, durable, kinds: listed.join(', ') };
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
    let attach: string[] = [];
    let detach: string[] = [];
    for (let i = 0; i < rounds; i++) {
      attach = await countStatements(async () => void (await berth.attach({ volume: 'statements' })));
      detach = await countStatements(async () => void (await berth.detach({ volume: 'statements' })));
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
