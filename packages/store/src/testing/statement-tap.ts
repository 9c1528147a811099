import BetterSqlite3 from 'better-sqlite3';
import { WalSync } from '../sqlite-wal-sync.js';

/** One statement better-sqlite3 ran: its SQL (whitespace folded, lower case) and its parameters. */
export interface TappedStatement {
  sql: string;
  params: unknown[];
}

type Run = (this: { source: string }, ...args: unknown[]) => unknown;
const RUNS = ['run', 'get', 'all', 'iterate'] as const;

/** Not a statement: where a durable commit asked for the WAL's sync (`WalSync.sync`), in the stream. */
export const WAL_SYNC_MARK = '(wal sync)';

/**
 * Every statement this process's better-sqlite3 — the store's own copy — runs while `fn` runs,
 * seen by wrapping its `Statement` methods (put back afterwards). Kysely keeps no statement of its
 * own and the store's statement cache hands out these same objects, so every execution passes
 * here. A durable commit's request for the WAL's sync follows it in the stream as a
 * `WAL_SYNC_MARK` entry (the driver asks right after the commit, before the next statement can
 * run). For tests and benchmarks only; one operation at a time, or the marks interleave.
 */
export async function tapSqliteStatements(fn: () => Promise<void>): Promise<TappedStatement[]> {
  const probe = new BetterSqlite3(':memory:');
  const proto = Object.getPrototypeOf(probe.prepare('select 1')) as Record<(typeof RUNS)[number], Run>;
  probe.close();
  const seen: TappedStatement[] = [];
  const originals = RUNS.map((name) => [name, proto[name]] as const);
  for (const [name, original] of originals) {
    proto[name] = function (this: { source: string }, ...args: unknown[]): unknown {
      seen.push({ sql: this.source.replace(/\s+/g, ' ').trim().toLowerCase(), params: args.flat(2) });
      return original.apply(this, args);
    };
  }
  const sync = WalSync.prototype.sync;
  WalSync.prototype.sync = function (this: WalSync): Promise<void> {
    seen.push({ sql: WAL_SYNC_MARK, params: [] });
    return sync.call(this);
  };
  try {
    await fn();
  } finally {
    for (const [name, original] of originals) proto[name] = original;
    WalSync.prototype.sync = sync;
  }
  return seen;
}

/** One commit: a transaction, or a write outside one. */
export interface TappedCommit {
  /** Waited for a sync of the WAL before it returned, or deferred-durable (no sync). */
  durable: boolean;
  /** Its statements (without BEGIN and COMMIT). */
  statements: TappedStatement[];
}

/**
 * The commits of `seen`, each with its durability: a durable one is followed by the driver's
 * `WAL_SYNC_MARK`. Rolled-back transactions and reads outside one are left out.
 */
export function sqliteCommits(seen: readonly TappedStatement[]): TappedCommit[] {
  const out: TappedCommit[] = [];
  let open: TappedCommit | undefined;
  for (const s of seen) {
    if (s.sql === WAL_SYNC_MARK) {
      const last = out.at(-1);
      if (last !== undefined) last.durable = true;
      continue;
    }
    if (s.sql.startsWith('begin')) {
      open = { durable: false, statements: [] };
      continue;
    }
    if (s.sql === 'commit' || s.sql === 'rollback') {
      if (open && s.sql === 'commit') out.push(open);
      open = undefined;
      continue;
    }
    if (open) open.statements.push(s);
    else if (!s.sql.startsWith('select')) out.push({ durable: false, statements: [s] });
  }
  return out;
}
