import { createCommandRunner, type CommandLogger } from './command-runner.js';
import { createDeviceWaiter } from './device-waiter.js';
import { createHostFs } from './host-fs.js';
import type { HostServices } from './types.js';

/** Options of `createHostServices`. */
export interface HostServicesOptions {
  /** The directory host paths resolve under (default `/`; a simulated host's directory in tests). */
  root?: string;
  /** Directories searched before PATH (the simulated host's fake tools). */
  pathPrepend?: readonly string[];
  /** Timeout of a command that names none, in ms (default 30 000). */
  defaultTimeoutMs?: number;
  /** Environment added to every command. */
  env?: Record<string, string>;
  /** Where commands are logged at debug level, secrets masked. */
  logger?: CommandLogger;
}

/** The runner, the rooted filesystem and the device waiter, pointed at one host. */
export function createHostServices(options: HostServicesOptions = {}): HostServices {
  const fs = createHostFs(options.root ?? '/');
  const runner = createCommandRunner({
    ...(options.defaultTimeoutMs !== undefined ? { defaultTimeoutMs: options.defaultTimeoutMs } : {}),
    ...(options.env ? { env: options.env } : {}),
    ...(options.pathPrepend ? { pathPrepend: options.pathPrepend } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
  });
  return { runner, fs, waiter: createDeviceWaiter(fs) };
}
