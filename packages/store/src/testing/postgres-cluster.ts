import { accessSync, constants, readdirSync, realpathSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { createCommandRunner, freeTcpPort } from '@berth/host';
import type { CommandRunner } from '@berth/host';
import pg from 'pg';

/** Where Debian's `postgresql` package puts the server binaries (one directory per major version). */
const DEBIAN_POSTGRES_ROOT = '/usr/lib/postgresql';

/** The OS user that runs the cluster when this process is root (PostgreSQL refuses to run as root). */
const CLUSTER_USER = 'postgres';

/** A throwaway PostgreSQL cluster for tests: one server on 127.0.0.1, trust authentication. */
export interface PostgresCluster {
  /** The TCP port the server listens on (127.0.0.1 only). */
  readonly port: number;
  /** The directory holding the data directory, the socket and the log; removed by `stop`. */
  readonly dir: string;
  /** The directory of `initdb`, `pg_ctl` and `postgres` that was used. */
  readonly binDir: string;
  /** The URL of database `name` as the superuser, e.g. `postgres://postgres@127.0.0.1:PORT/name`. */
  url(database?: string): string;
  /** Create a fresh, empty database (a unique name unless given) and return its URL. */
  createDatabase(name?: string): Promise<string>;
  /** Run one statement as the superuser on `database` (default `postgres`): terminate backends, read rows. */
  query<R extends Record<string, unknown> = Record<string, unknown>>(text: string, values?: unknown[], database?: string): Promise<R[]>;
  /** Stop the server at once (`-m immediate`: the data is thrown away) and remove the directory. */
  stop(): Promise<void>;
}

/** Options of `startPostgresCluster`. */
export interface StartPostgresClusterOptions {
  /** Directory of `initdb`/`pg_ctl` (default: found by `findPostgresBinDir`). */
  binDir?: string;
  /** Deadline of initdb and of the server start, in ms (default 60000). */
  timeoutMs?: number;
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** A directory that holds the three programs a cluster needs, side by side. */
function isServerBinDir(dir: string): boolean {
  return ['initdb', 'pg_ctl', 'postgres'].every((name) => executable(join(dir, name)));
}

/**
 * Find the PostgreSQL server programs: `BERTH_PG_BINDIR` when set; else the newest
 * `/usr/lib/postgresql/<major>/bin` (Debian keeps the server binaries there, off PATH); else an
 * `initdb` on PATH, followed through symlinks to the directory it really lives in (this machine
 * has `/usr/local/bin/initdb` → `/usr/lib/postgresql/15/bin/initdb`). In every case `initdb`,
 * `pg_ctl` and `postgres` must sit in the same directory, so that one major version is used for
 * all three. Throws, saying what to install, when none is found.
 */
export function findPostgresBinDir(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env['BERTH_PG_BINDIR'];
  if (fromEnv !== undefined && fromEnv !== '') {
    if (isServerBinDir(fromEnv)) return fromEnv;
    throw new Error(`BERTH_PG_BINDIR=${fromEnv} does not hold initdb, pg_ctl and postgres`);
  }
  let majors: string[] = [];
  try {
    majors = readdirSync(DEBIAN_POSTGRES_ROOT).filter((name) => /^\d+$/.test(name));
  } catch {
    // No Debian layout: look on PATH.
  }
  for (const major of majors.sort((a, b) => Number(b) - Number(a))) {
    const dir = join(DEBIAN_POSTGRES_ROOT, major, 'bin');
    if (isServerBinDir(dir)) return dir;
  }
  for (const entry of (env['PATH'] ?? '').split(delimiter)) {
    if (entry === '' || !executable(join(entry, 'initdb'))) continue;
    const dir = dirname(realpathSync(join(entry, 'initdb')));
    if (isServerBinDir(dir)) return dir;
  }
  throw new Error(
    'PostgreSQL server programs (initdb, pg_ctl, postgres) not found: run scripts/install-system-deps.sh (apt-get install postgresql) or set BERTH_PG_BINDIR',
  );
}

/** The uid and gid of `user` from /etc/passwd. */
async function userIds(user: string): Promise<{ uid: number; gid: number }> {
  const passwd = await readFile('/etc/passwd', 'utf8');
  for (const line of passwd.split('\n')) {
    const fields = line.split(':');
    if (fields[0] === user && fields[2] !== undefined && fields[3] !== undefined) {
      return { uid: Number(fields[2]), gid: Number(fields[3]) };
    }
  }
  throw new Error(`user ${user} does not exist: install Debian's postgresql package (it creates the user)`);
}

let databaseCounter = 0;

/** Run one statement on the database at `url` (a short connection of its own); its rows. */
export async function queryOn<R extends Record<string, unknown> = Record<string, unknown>>(url: string, text: string, values: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<R>(text, values)).rows;
  } finally {
    await client.end();
  }
}

/**
 * Create a fresh database on a running cluster, given the URL of any of its databases (a test
 * process that did not start the cluster: vitest's global setup hands the URL to its workers).
 * Returns the new database's URL.
 */
export async function createDatabaseOn(serverUrl: string, name?: string): Promise<string> {
  databaseCounter += 1;
  const database = name ?? `berth_test_${process.pid}_${databaseCounter}`;
  if (!/^[a-z_][a-z0-9_]*$/.test(database)) throw new Error(`database name ${database} is not a plain identifier`);
  // FILE_COPY: with fsync off, copying template1's files is the fastest way to a new database.
  await queryOn(serverUrl, `create database ${database} strategy file_copy`);
  const url = new URL(serverUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

/**
 * Start a throwaway cluster: `initdb -A trust --no-sync` into a new temp directory and `pg_ctl
 * start -w` with the server on 127.0.0.1 at a free port, its socket in that directory and
 * `fsync=off` (the data is thrown away). As root, both run as the `postgres` user through
 * `runuser` (PostgreSQL refuses to run as root), and the directory is handed to that user. The
 * cluster uses the C locale, so text sorts byte-wise as it does on SQLite. Always `stop()` it
 * (in `afterAll`/`finally`): it stops the server and removes the directory.
 */
export async function startPostgresCluster(options: StartPostgresClusterOptions = {}): Promise<PostgresCluster> {
  const binDir = options.binDir ?? findPostgresBinDir();
  const timeoutMs = options.timeoutMs ?? 60_000;
  const runner: CommandRunner = createCommandRunner({ defaultTimeoutMs: timeoutMs });
  const asRoot = process.getuid?.() === 0;
  const run = async (program: string, args: string[]): Promise<void> => {
    const file = join(binDir, program);
    if (asRoot) await runner.run('runuser', ['-u', CLUSTER_USER, '--', file, ...args]);
    else await runner.run(file, args);
  };

  const dir = await mkdtemp(join(tmpdir(), 'berth-pg-'));
  const dataDir = join(dir, 'data');
  const socketDir = join(dir, 'socket');
  const logFile = join(dir, 'server.log');
  let started = false;
  const stopServer = async (): Promise<void> => {
    if (!started) return;
    started = false;
    await run('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
  };
  try {
    await mkdir(socketDir, { mode: 0o700 });
    if (asRoot) {
      const { uid, gid } = await userIds(CLUSTER_USER);
      await chown(dir, uid, gid);
      await chown(socketDir, uid, gid);
    }
    await run('initdb', ['-D', dataDir, '-A', 'trust', '--no-sync', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-instructions']);

    // Another process may take the port between the probe and the start: try a few ports.
    let port = 0;
    let lastError: unknown;
    for (let attempt = 0; attempt < 5 && !started; attempt += 1) {
      port = await freeTcpPort();
      const serverOptions = [
        '-c listen_addresses=127.0.0.1',
        `-p ${port}`,
        `-k ${socketDir}`,
        '-c fsync=off',
        '-c synchronous_commit=off',
        '-c full_page_writes=off',
        '-c max_connections=200',
      ].join(' ');
      try {
        await run('pg_ctl', ['-D', dataDir, '-l', logFile, '-w', '-t', String(Math.ceil(timeoutMs / 1000)), '-o', serverOptions, 'start']);
        started = true;
      } catch (error) {
        lastError = error;
      }
    }
    if (!started) {
      const log = await readFile(logFile, 'utf8').catch(() => '');
      throw new Error(`PostgreSQL did not start: ${String(lastError)}\n${log}`);
    }
    const finalPort = port;

    const url = (database = 'postgres'): string => `postgres://postgres@127.0.0.1:${finalPort}/${database}`;
    const query = <R extends Record<string, unknown>>(text: string, values: unknown[] = [], database?: string): Promise<R[]> => queryOn<R>(url(database), text, values);
    return {
      port: finalPort,
      dir,
      binDir,
      url,
      createDatabase: (name?: string) => createDatabaseOn(url(), name),
      query,
      async stop(): Promise<void> {
        try {
          await stopServer();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (error) {
    await stopServer().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}
