import { existsSync } from 'node:fs';
import { discoverPlugins, DriverCatalog, loadPluginModules, type BerthConfig, type BerthPlugin, type HostFor, type Logger, type PluginSource } from '@berth/core';
import type { HostServices } from '@berth/host';
import { BUILTIN_PLUGINS } from './builtin-plugins.js';
import { simulatedHostServices, USER_ISCSI_PLUGIN } from './simulate.js';
import type { SimulateConfig } from './simulate-config.js';

/** What `buildCatalog` needs: the config, the host the plugins act on, where else to look for plugins. */
export interface BuildCatalogOptions {
  config: BerthConfig;
  simulate: SimulateConfig;
  host: HostServices;
  logger: Logger;
  env: NodeJS.ProcessEnv;
}

/** Where else plugins come from (`openBerth`'s and `openAgent`'s options of the same names). */
export interface PluginSources {
  /** Extra directories whose package.json dependencies are scanned for plugins (BERTH_PLUGIN_DIRS adds more). */
  pluginDirs?: string[];
  /** Plugins given as objects, registered after the built-ins. */
  extraPlugins?: BerthPlugin[];
}

/**
 * The plugins of this berth in one catalog: the built-ins, the given ones, the config's and the
 * discovered packages (one that fails to load is reported, not thrown). The plugins the `simulate`
 * section names act on the simulated host. `berth` (with its store) and `berth agent` (without one)
 * both build theirs here, so a host runs the same drivers whichever of the two drives it.
 */
export async function buildCatalog(options: BuildCatalogOptions, more: PluginSources = {}): Promise<DriverCatalog> {
  const { config, simulate, host, logger, env } = options;
  // `--simulate` (the `simulate` section) picks the host its plugins act on; the others act on `host`.
  const simHost = simulate.enabled ? await simulatedHostServices(simulate, { commandTimeoutMs: config.commandTimeoutMs, logger }) : undefined;
  const simulated = new Set(simulate.plugins);
  const hostFor: HostFor = (plugin) => (simHost !== undefined && simulated.has(plugin) ? simHost : host);
  // The simulated host has a kernel initiator: there iscsi-user connects only when forced.
  const pluginOptions = simulate.enabled
    ? { ...config.pluginOptions, [USER_ISCSI_PLUGIN]: { autoSelect: false, ...config.pluginOptions[USER_ISCSI_PLUGIN] } }
    : config.pluginOptions;
  const catalog = new DriverCatalog(host, config.dataDir, logger, pluginOptions, hostFor);
  for (const builtin of BUILTIN_PLUGINS) {
    // Their schemas accept no options (builtin-plugins.test.ts): unless the config gives some,
    // they are parsed when the plugin is first used.
    catalog.add({ plugin: builtin.plugin, packageName: builtin.packageName, version: undefined, options: undefined }, { acceptsNoOptions: true });
  }
  for (const plugin of more.extraPlugins ?? []) {
    catalog.add({ plugin, packageName: plugin.name, version: undefined, options: undefined });
  }
  const sources: PluginSource[] = config.plugins.map((entry) =>
    typeof entry === 'string'
      ? { packageName: entry, from: process.cwd() }
      : { packageName: entry.package, from: process.cwd(), ...(entry.options ? { options: entry.options } : {}) },
  );
  const dirs = [...(more.pluginDirs ?? []), ...(env.BERTH_PLUGIN_DIRS ?? '').split(':').filter(Boolean)].filter((d) => existsSync(d));
  sources.push(...(await discoverPlugins(dirs)));
  const { loaded, failed } = await loadPluginModules(sources.filter((s) => !BUILTIN_PLUGINS.some((b) => b.packageName === s.packageName)));
  for (const module of loaded) catalog.add(module);
  catalog.addFailures(failed);
  // Reported by `berth doctor` and the CLI's own one-line warning; the log keeps it at info.
  for (const failure of failed) logger.info({ plugin: failure.packageName, err: failure.error }, 'plugin not loaded');
  return catalog;
}
