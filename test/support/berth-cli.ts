import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { cleanUpSandboxDir, OWNER_FILE, SANDBOX_PREFIX } from './orphans.js';

/** The repository root. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The built `berth` executable, run as a user runs it. */
export const BERTH_BIN = join(REPO_ROOT, 'apps', 'cli', 'bin', 'run.js');
/** The test workspace: its package.json lists the fixture plugins (`file:` dependencies). */
export const TEST_WORKSPACE = join(REPO_ROOT, 'test');

/** What one run of the CLI produced. */
export interface BerthRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** A private berth world: its own data dir and HOME, so nothing touches the machine's real berth. */
export interface BerthSandbox {
  root: string;
  dataDir: string;
  home: string;
  env: Record<string, string>;
  /** Run `berth ARGS`; never throws on a non-zero exit. */
  run(args: readonly string[], extraEnv?: Record<string, string>): Promise<BerthRun>;
  /** Run `berth ARGS --json`, expect exit 0 and return the parsed output. */
  json<T>(args: readonly string[]): Promise<T>;
  /**
   * Stop any berth still running here, then remove its /dev/berth links, detach its loop devices
   * and delete the sandbox. Later runs are refused: a test body that outlived its timeout must not
   * recreate the data dir after clean-up.
   */
  remove(): Promise<void>;
}

/** Options of `makeSandbox`. */
export interface SandboxOptions {
  /** Becomes BERTH_PLUGIN_DIRS (the test workspace makes the fixtures visible). */
  pluginDirs?: string[];
  /** The `berth` executable to run (default: this checkout's built one, `BERTH_BIN`). */
  bin?: string;
  /**
   * Where berth runs (default: the sandbox). The config's `plugins` are found from here: the
   * checkout (`REPO_ROOT`) makes its workspace plugins (`@berth/consumer-qemu`) loadable by name.
   */
  cwd?: string;
}

/** Make a sandbox: its own data dir, HOME and npm cache. */
export async function makeSandbox(options: SandboxOptions = {}): Promise<BerthSandbox> {
  const bin = options.bin ?? BERTH_BIN;
  const root = await mkdtemp(join(tmpdir(), SANDBOX_PREFIX));
  // Lets a later run clean this sandbox up if this process is killed before its afterEach.
  await writeFile(join(root, OWNER_FILE), String(process.pid));
  const dataDir = join(root, 'data');
  const home = join(root, 'home');
  const env: Record<string, string> = {
    BERTH_DATA_DIR: dataDir,
    HOME: home,
    XDG_DATA_HOME: join(home, '.local', 'share'),
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_CACHE_HOME: join(home, '.cache'),
    // npm (run by `berth plugins install`) keeps its cache and config inside the sandbox too.
    npm_config_cache: join(home, '.npm'),
    npm_config_update_notifier: 'false',
    NO_COLOR: '1',
  };
  if (options.pluginDirs !== undefined) env['BERTH_PLUGIN_DIRS'] = options.pluginDirs.join(':');

  const running = new Set<ResultPromise>();
  let removed = false;

  const run = async (args: readonly string[], extraEnv: Record<string, string> = {}): Promise<BerthRun> => {
    if (removed) throw new Error(`sandbox ${root} was already removed; not running berth ${args.join(' ')}`);
    const child = execa(process.execPath, [bin, ...args], {
      env: { ...inheritedEnv(), ...env, ...extraEnv },
      extendEnv: false,
      reject: false,
      cwd: options.cwd ?? root,
      timeout: 90_000,
      stdin: 'ignore',
    });
    running.add(child);
    try {
      const result = await child;
      return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
    } finally {
      running.delete(child);
    }
  };

  return {
    root,
    dataDir,
    home,
    env,
    run,
    async json<T>(args: readonly string[]): Promise<T> {
      const result = await run([...args, '--json']);
      if (result.exitCode !== 0) {
        throw new Error(`berth ${args.join(' ')} --json exited ${result.exitCode}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
      }
      return JSON.parse(result.stdout) as T;
    },
    async remove(): Promise<void> {
      removed = true;
      for (const child of running) child.kill('SIGKILL');
      await Promise.allSettled([...running]);
      await cleanUpSandboxDir(root);
    },
  };
}

/** The parent's environment minus anything berth or npm would read, so the host's settings cannot leak in. */
export function inheritedEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined) continue;
    // NODE_ENV=test (vitest's) would make oclif print development-only warnings users never see.
    if (key.startsWith('BERTH_') || key.startsWith('npm_') || key.startsWith('NPM_') || key === 'DEBUG' || key === 'NODE_ENV') continue;
    out[key] = value;
  }
  return out;
}

/** Parse a `--json` error body. */
export function errorBody(run: BerthRun): { code: string; message: string; hint?: string } {
  const body = JSON.parse(run.stdout) as { error?: { code: string; message: string; hint?: string } };
  if (body.error === undefined) throw new Error(`not an error body: ${run.stdout}`);
  return body.error;
}
