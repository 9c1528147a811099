import { mkdir } from 'node:fs/promises';
import { BerthError, type BerthConfig, type HostIdentity, type Logger } from '@berth/core';
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
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 }).catch((error: unknown) => {
    // A data dir that is a file (or under one) was an "unexpected error: EEXIST" to report as a bug.
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EEXIST' && code !== 'ENOTDIR') throw error;
    throw new BerthError('CONFIG', `the data dir ${config.dataDir} is not a directory`, {
      hint: 'point --data-dir (or BERTH_DATA_DIR) at a directory, or move that file away',
      details: { dataDir: config.dataDir },
      cause: error,
    });
  });
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
