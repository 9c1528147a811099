export { openBerth, loadConfig, loadConfigs, BUILTIN_PLUGINS, type OpenBerthOptions } from './open-berth.js';
export { parseSize, formatSize } from './size.js';
export { defaultDataDir } from './data-dir.js';
export { createLogger, REDACT_PATHS } from './logger.js';
export { simulatedHostPaths, stopSimulatedHost } from './simulate.js';
export { zSimulateConfig, resolveSimulateConfig, type SimulateConfig } from './simulate-config.js';
export { seededRandom } from './seeded-random.js';
