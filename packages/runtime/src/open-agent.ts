import {
  baseConnectorOf,
  FaultInjector,
  type BerthConfig,
  type Connector,
  type DriverCatalog,
  type HostIdentity,
  type Logger,
} from '@berth/core';
import { buildCatalog } from './build-catalog.js';
import { setUpHost } from './host-setup.js';
import { loadConfigs, type OpenBerthOptions } from './open-berth.js';

/** Options of `openAgent`: `openBerth`'s, less the store (an agent has none) and recovery. */
export type OpenAgentOptions = Pick<
  OpenBerthOptions,
  'dataDir' | 'configFile' | 'hostRoot' | 'pluginDirs' | 'env' | 'logger' | 'logFile' | 'host' | 'simulate' | 'extraPlugins'
>;

/** What a host needs to run host steps for the API: its drivers, its identity, its connector. No store. */
export interface AgentHost {
  config: BerthConfig;
  catalog: DriverCatalog;
  logger: Logger;
  identity: HostIdentity;
  /** The host's base connector (host name, ip, platform, the configured multipath). */
  baseConnector(): Connector;
  /** Stop the plugins' background work (backends this host started). */
  close(): Promise<void>;
}

/**
 * Compose a `berth agent`'s host: config → host services (or the simulated host) → plugins, with
 * `BERTH_FAULTS` armed in the drivers. Unlike `openBerth` it opens no store and recovers nothing:
 * an agent never holds database credentials, and what a dead agent left is the API's to resume.
 */
export async function openAgent(options: OpenAgentOptions = {}): Promise<AgentHost> {
  const env = options.env ?? process.env;
  const { config, simulate } = await loadConfigs(options);
  const { logger, host, identity } = await setUpHost(config, options);
  const catalog = await buildCatalog({ config, simulate, host, logger, env }, options);
  // Crash tests arm driver points on the agent as they do on an embedded berth.
  catalog.useFaults(new FaultInjector(config.faults));
  return {
    config,
    catalog,
    logger,
    identity,
    baseConnector: () => baseConnectorOf(identity, config),
    async close() {
      for (const backend of catalog.instantiatedBackends()) await backend.close?.().catch(() => undefined);
    },
  };
}
