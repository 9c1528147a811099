export { openBerth, loadConfig, BUILTIN_PLUGINS, type OpenBerthOptions } from './open-berth.js';
export { parseSize, formatSize } from './size.js';
export { defaultDataDir } from './data-dir.js';
export { createLogger, REDACT_PATHS } from './logger.js';
export { simulatedHostPaths, stopSimulatedHost, SIMULATED_PLUGINS } from './simulate.js';
export { seededRandom } from './seeded-random.js';
