import os from 'node:os';
import path from 'node:path';

/**
 * Where berth keeps its database, volume files and run state: `--data-dir`, else `BERTH_DATA_DIR`,
 * else `/var/lib/berth` for root and `$XDG_DATA_HOME/berth` (`~/.local/share/berth`) otherwise.
 */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.BERTH_DATA_DIR) return path.resolve(env.BERTH_DATA_DIR);
  if (process.getuid?.() === 0) return '/var/lib/berth';
  const xdg = env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share');
  return path.join(xdg, 'berth');
}
