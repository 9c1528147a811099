import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import backendFile from '@berth/backend-file';
import backendTgt from '@berth/backend-tgt';
import {
  BerthContainer,
  BerthError,
  BerthServiceImpl,
  corePlugin,
  discoverPlugins,
  DriverCatalog,
  loadPluginModules,
  resolveConfig,
  TOKENS,
  type BerthConfig,
  type BerthPlugin,
  type BerthService,
  type HostIdentity,
  type Logger,
  type PluginSource,
} from '@berth/core';
import driverIscsi from '@berth/driver-iscsi';
import driverIscsiMultipath from '@berth/driver-iscsi-multipath';
import driverIscsiUser from '@berth/driver-iscsi-user';
import driverLoop from '@berth/driver-loop';
import { createHostServices, hostFacts, type HostServices } from '@berth/host';
import { openSqliteStore } from '@berth/store';
import { defaultDataDir } from './data-dir.js';
import { createLogger } from './logger.js';
import { simulatedHostServices, USER_ISCSI_PLUGIN } from './simulate.js';
import { resolveSimulateConfig, splitSimulateSection, type SimulateConfig } from './simulate-config.js';

/** Options of `openBerth`; each falls back to the environment, then to a default. */
export interface OpenBerthOptions {
  /** Else BERTH_DATA_DIR, else /var/lib/berth (root) or ~/.local/share/berth. */
  dataDir?: string;
  /** Else BERTH_CONFIG, else `<dataDir>/config.json` when it exists. */
  configFile?: string;
  /** Else BERTH_HOST_ROOT, else `/`. */
  hostRoot?: string;
  /** Extra directories whose package.json dependencies are scanned for plugins (also BERTH_PLUGIN_DIRS). */
  pluginDirs?: string[];
  env?: NodeJS.ProcessEnv;
  /** Use this logger instead of the JSON-on-stderr default. */
  logger?: Logger;
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

/**
 * Plugins every berth has: the host consumer, the loop, user-space iSCSI, iSCSI and iSCSI multipath
 * transports, the file and tgt backends. iscsi-user comes before the kernel iSCSI transports: connector
 * properties merge in this order, so their initiator name (the simulated host's, with --simulate) wins.
 */
export const BUILTIN_PLUGINS: ReadonlyArray<{ packageName: string; plugin: BerthPlugin }> = [
  { packageName: '@berth/core', plugin: corePlugin as BerthPlugin },
  { packageName: '@berth/driver-loop', plugin: driverLoop as BerthPlugin },
  { packageName: '@berth/backend-file', plugin: backendFile as BerthPlugin },
  { packageName: '@berth/driver-iscsi-user', plugin: driverIscsiUser as BerthPlugin },
  { packageName: '@berth/driver-iscsi', plugin: driverIscsi as BerthPlugin },
  { packageName: '@berth/driver-iscsi-multipath', plugin: driverIscsiMultipath as BerthPlugin },
  { packageName: '@berth/backend-tgt', plugin: backendTgt as BerthPlugin },
];

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
    throw new BerthError('CONFIG', `config file ${file} is not valid JSON`, { cause: error });
  }
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
  const { rest, section } = splitSimulateSection(await readConfigFile(configFile, explicit !== undefined));
  const config = resolveConfig(rest, env, {
    dataDir,
    ...(options.hostRoot ? { hostRoot: options.hostRoot } : {}),
  });
  return { config, simulate: resolveSimulateConfig(section, env, config.dataDir, options.simulate) };
}

/**
 * Compose berth: config → host services → store → plugins → the service. The CLI and the HTTP app
 * both start here, so they run the very same pipeline.
 */
export async function openBerth(options: OpenBerthOptions = {}): Promise<BerthService> {
  const env = options.env ?? process.env;
  const { config, simulate } = await loadConfigs(options);
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const logger = options.logger ?? createLogger(config.logLevel);
  const host =
    options.host ??
    createHostServices({
      root: config.hostRoot,
      pathPrepend: config.pathPrepend,
      defaultTimeoutMs: config.commandTimeoutMs,
      logger: logger.child({ component: 'host' }),
    });

  const store = await openSqliteStore({ filename: config.store.filename ?? path.join(config.dataDir, 'berth.db') });

  // The plugins the `simulate` section names run on the simulated host; everything else on this one.
  const hostOverrides: Record<string, HostServices> = {};
  if (simulate.enabled) {
    const simHost = await simulatedHostServices(simulate, { commandTimeoutMs: config.commandTimeoutMs, logger });
    for (const name of simulate.plugins) hostOverrides[name] = simHost;
  }
  // The simulated host has a kernel initiator: there iscsi-user connects only when forced.
  const pluginOptions = simulate.enabled
    ? { ...config.pluginOptions, [USER_ISCSI_PLUGIN]: { autoSelect: false, ...config.pluginOptions[USER_ISCSI_PLUGIN] } }
    : config.pluginOptions;
  const catalog = new DriverCatalog(host, config.dataDir, logger, pluginOptions, hostOverrides);
  for (const builtin of BUILTIN_PLUGINS) {
    catalog.add({ plugin: builtin.plugin, packageName: builtin.packageName, version: undefined, options: undefined });
  }
  for (const plugin of options.extraPlugins ?? []) {
    catalog.add({ plugin, packageName: plugin.name, version: undefined, options: undefined });
  }
  const sources: PluginSource[] = config.plugins.map((entry) =>
    typeof entry === 'string'
      ? { packageName: entry, from: process.cwd() }
      : { packageName: entry.package, from: process.cwd(), ...(entry.options ? { options: entry.options } : {}) },
  );
  const dirs = [...(options.pluginDirs ?? []), ...(env.BERTH_PLUGIN_DIRS ?? '').split(':').filter(Boolean)].filter((d) => existsSync(d));
  sources.push(...(await discoverPlugins(dirs)));
  const { loaded, failed } = await loadPluginModules(sources.filter((s) => !BUILTIN_PLUGINS.some((b) => b.packageName === s.packageName)));
  for (const module of loaded) catalog.add(module);
  catalog.addFailures(failed);
  // Reported by `berth doctor` and the CLI's own one-line warning; the log keeps it at info.
  for (const failure of failed) logger.info({ plugin: failure.packageName, err: failure.error }, 'plugin not loaded');

  const facts = hostFacts();
  const identity: HostIdentity = { hostname: facts.hostname, ips: facts.ips, platform: facts.platform, osType: facts.osType };
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
  if (options.recover ?? true) await service.recover?.();
  return service;
}
