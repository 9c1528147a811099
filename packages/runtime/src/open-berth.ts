import { readFile } from 'node:fs/promises';
import path from 'node:path';
import {
  BerthContainer,
  BerthError,
  BerthServiceImpl,
  resolveConfig,
  TOKENS,
  type BerthConfig,
  type BerthPlugin,
  type BerthService,
  type Logger,
  type Store,
} from '@berth/core';
import type { HostServices } from '@berth/host';
import { isEnvironmentError, openPostgresStore, openSqliteStoreForUse } from '@berth/store';
import { buildCatalog } from './build-catalog.js';
import { setUpHost } from './host-setup.js';
import { defaultDataDir } from './data-dir.js';
import { resolveSimulateConfig, splitSimulateSection, type SimulateConfig } from './simulate-config.js';

export { BUILTIN_PLUGINS } from './builtin-plugins.js';

/** Options of `openBerth`; each falls back to the environment, then to a default. */
export interface OpenBerthOptions {
  /** Else BERTH_DATA_DIR, else /var/lib/berth (root) or ~/.local/share/berth. */
  dataDir?: string;
  /** Else BERTH_CONFIG, else `<dataDir>/config.json` when it exists. */
  configFile?: string;
  /** Else BERTH_HOST_ROOT, else `/`. */
  hostRoot?: string;
  /** A PostgreSQL URL for the store (`--store`); else BERTH_STORE_URL, else the config file, else SQLite in the data dir. */
  storeUrl?: string;
  /** Extra directories whose package.json dependencies are scanned for plugins (also BERTH_PLUGIN_DIRS). */
  pluginDirs?: string[];
  env?: NodeJS.ProcessEnv;
  /** Use this logger instead of the JSON-on-stderr default. */
  logger?: Logger;
  /** Append the log's JSON lines to this file instead of stderr (the CLI: `<data dir>/logs/berth.log`). */
  logFile?: string;
  /** Use these host services instead of the real machine's (tests and the simulated host). */
  host?: HostServices;
  /**
   * Run the plugins the config's `simulate.plugins` names (the iSCSI transports by default) on
   * berth's simulated host in real-backed mode: for machines whose kernel cannot log in to iSCSI.
   * Wins over `BERTH_SIMULATE` and the config's `simulate.enabled`.
   */
  simulate?: boolean;
  /** Finish operations left running by a process that died (default true). */
  recover?: boolean;
  /** Plugins given as objects (benchmarks, tests, embedding apps), registered after the built-ins. */
  extraPlugins?: BerthPlugin[];
}

async function readConfigFile(file: string | undefined, required: boolean): Promise<unknown> {
  if (file === undefined) return undefined;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if (!required) return undefined;
    throw new BerthError('CONFIG', `cannot read config file ${file}`, { cause: error, hint: 'check the path given with --config or BERTH_CONFIG' });
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    // Where, not what: V8's message quotes the text around the error, and a config may hold a
    // store URL with its password.
    const at = error instanceof SyntaxError ? /position (\d+)/.exec(error.message)?.[1] : undefined;
    const why = at === undefined ? '' : ` (at ${lineColumn(text, Number(at))})`;
    throw new BerthError('CONFIG', `config file ${file} is not valid JSON${why}`, {
      cause: error,
      hint: `fix it (check with: node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' ${file}), or move it aside to run with the defaults`,
    });
  }
}

/** `line L, column C` (1-based) of offset `at` in `text`. */
function lineColumn(text: string, at: number): string {
  const before = text.slice(0, at).split('\n');
  return `line ${before.length}, column ${(before.at(-1)?.length ?? 0) + 1}`;
}

/** Read the config from file + environment + options (validated once). */
export async function loadConfig(options: OpenBerthOptions = {}): Promise<BerthConfig> {
  return (await loadConfigs(options)).config;
}

/**
 * Read core's config and runtime's own `simulate` section from file + environment + options
 * (each validated once).
 */
export async function loadConfigs(options: OpenBerthOptions = {}): Promise<{ config: BerthConfig; simulate: SimulateConfig }> {
  const env = options.env ?? process.env;
  const dataDir = path.resolve(options.dataDir ?? defaultDataDir(env));
  const explicit = options.configFile ?? env.BERTH_CONFIG;
  const configFile = explicit ?? path.join(dataDir, 'config.json');
  const file = await readConfigFile(configFile, explicit !== undefined);
  const { rest, section } = splitSimulateSection(file);
  // Errors name the file the values came from (only when there was one), and the options by the
  // flags the CLI gives them as.
  const origins = {
    ...(file === undefined ? {} : { file: configFile }),
    overrides: { dataDir: 'the data dir (--data-dir, BERTH_DATA_DIR)', hostRoot: 'the hostRoot option', store: '--store' },
  };
  const config = resolveConfig(
    rest,
    env,
    {
      dataDir,
      ...(options.hostRoot ? { hostRoot: options.hostRoot } : {}),
      ...(options.storeUrl ? { store: { kind: 'postgres' as const, url: options.storeUrl } } : {}),
    },
    origins,
  );
  return { config, simulate: resolveSimulateConfig(section, env, config.dataDir, options.simulate, origins.file) };
}

/**
 * Compose berth: config → host services → store → plugins → the service. The CLI and the HTTP app
 * both start here, so they run the very same pipeline.
 */
export async function openBerth(options: OpenBerthOptions = {}): Promise<BerthService> {
  const env = options.env ?? process.env;
  const { config, simulate } = await loadConfigs(options);
  const { logger, host, identity } = await setUpHost(config, options);

  // SQLite: a full disk or a read-only data dir still lets people look (`volume list`, `show`,
  // `attachment list`): the store then opens read-only, and every write says why it cannot.
  let store: Store;
  let readOnly: BerthError | undefined;
  if (config.store.kind === 'postgres') {
    store = await openPostgresStore({ url: config.store.url, ...(config.store.poolSize === undefined ? {} : { poolSize: config.store.poolSize }) });
  } else {
    const opened = await openSqliteStoreForUse({
      filename: config.store.filename ?? path.join(config.dataDir, 'berth.db'),
      ...(config.store.busyTimeoutMs === undefined ? {} : { busyTimeoutMs: config.store.busyTimeoutMs }),
    });
    store = opened.store;
    readOnly = opened.readOnly;
    if (readOnly) logger.warn({ reason: readOnly.details.reason, err: readOnly.message }, 'the berth database is open read-only');
  }

  const catalog = await buildCatalog({ config, simulate, host, logger, env }, options);

  const container = BerthContainer.create()
    .registerInstance(TOKENS.Config, config)
    .registerInstance(TOKENS.Store, store)
    .registerInstance(TOKENS.Host, host)
    .registerInstance(TOKENS.HostIdentity, identity)
    .registerInstance(TOKENS.Logger, logger)
    .registerInstance(TOKENS.Catalog, catalog)
    .registerSingleton(TOKENS.Service, BerthServiceImpl);
  const service = container.resolve<BerthService>(TOKENS.Service);
  // Nothing stays in a transitional state: whatever a dead process left half done is resumed or
  // rolled back before this one does anything else.
  if ((options.recover ?? true) && readOnly === undefined) {
    try {
      await service.recover?.();
    } catch (error) {
      // Recovery writes; on a disk that filled up it cannot. What it left stays `running` and the
      // next command that can write finishes it: this one can still read.
      if (!isEnvironmentError(error)) throw error;
      logger.warn({ reason: error.details.reason, err: error.message }, 'could not recover interrupted operations now');
    }
  }
  return service;
}
