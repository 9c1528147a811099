import BetterSqlite3 from 'better-sqlite3';

/** One statement better-sqlite3 ran: its SQL (whitespace folded, lower case) and its parameters. */
export interface TappedStatement {
  sql: string;
  params: unknown[];
}

type Run = (this: { source: string }, ...args: unknown[]) => unknown;
const RUNS = ['run', 'get', 'all', 'iterate'] as const;

/**
 * Every statement this process's better-sqlite3 — the store's own copy — runs while `fn` runs,
 * seen by wrapping its `Statement` methods (put back afterwards). Kysely keeps no statement of its
 * own and the store's statement cache hands out these same objects, so every execution passes
 * here, the store's `PRAGMA synchronous` switches included. For tests and benchmarks only.
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
  try {
    await fn();
  } finally {
    for (const [name, original] of originals) proto[name] = original;
  }
  return seen;
}

/** One commit: a transaction, or a write outside one. */
export interface TappedCommit {
  /** Synced at commit (`synchronous` FULL), or deferred-durable (NORMAL). */
  durable: boolean;
  /** Its statements (without BEGIN and COMMIT). */
  statements: TappedStatement[];
}

/**
 * The commits of `seen`, each with the durability it ran at: the store sets `synchronous` with a
 * pragma before a transaction or a lone write (2: FULL, 1: NORMAL), so a commit's level is the
 * last one set before it began. Rolled-back transactions and reads outside one are left out.
 */
export function sqliteCommits(seen: readonly TappedStatement[]): TappedCommit[] {
  const out: TappedCommit[] = [];
  let level = 2;
  let open: TappedCommit | undefined;
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
    if (s.sql === 'commit' || s.sql === 'rollback') {
      if (open && s.sql === 'commit') out.push(open);
      open = undefined;
      continue;
    }
    if (open) open.statements.push(s);
    else if (!s.sql.startsWith('select')) out.push({ durable: level === 2, statements: [s] });
  }
  return out;
}
