import { mkdir } from 'node:fs/promises';
import type { BerthConfig, HostIdentity, Logger } from '@berth/core';
import { createHostServices, hostFacts, type HostServices } from '@berth/host';
import { createLogger } from './logger.js';

/** This machine as berth acts on it: its log, its host services, who it is. */
export interface HostSetup {
  logger: Logger;
  host: HostServices;
  identity: HostIdentity;
}

/**
 * Make the data dir (owner only), the logger (`logFile` or stderr) and the host services (rooted
 * at the config's hostRoot), and read the host's identity: what `openBerth` and `openAgent` both
 * start from.
 */
export async function setUpHost(config: BerthConfig, options: { logger?: Logger; logFile?: string; host?: HostServices }): Promise<HostSetup> {
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const logger = options.logger ?? createLogger(config.logLevel, options.logFile);
  const host =
    options.host ??
    createHostServices({
      root: config.hostRoot,
      pathPrepend: config.pathPrepend,
      defaultTimeoutMs: config.commandTimeoutMs,
      logger: logger.child({ component: 'host' }),
    });
  const facts = hostFacts();
  const identity: HostIdentity = { hostname: facts.hostname, ips: facts.ips, platform: facts.platform, osType: facts.osType };
  return { logger, host, identity };
}
