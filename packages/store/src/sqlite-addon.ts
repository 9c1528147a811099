import { createRequire } from 'node:module';

let found: { nativeBinding?: string } | undefined;

/**
 * `{ nativeBinding }` naming better-sqlite3's compiled addon where its install builds it, for
 * `new BetterSqlite3(file, { ...sqliteAddon() })`: without it better-sqlite3 finds the addon with
 * the `bindings` package (two more modules, a stack trace, a dozen paths tried: ~5 ms of every CLI
 * start on a loaded machine). `{}` (better-sqlite3 looks as before) when the addon is elsewhere.
 */
export function sqliteAddon(): { nativeBinding?: string } {
  if (found !== undefined) return found;
  try {
    found = { nativeBinding: createRequire(import.meta.url).resolve('better-sqlite3/build/Release/better_sqlite3.node') };
  } catch {
    found = {};
  }
  return found;
}
