import { definePlugin, PLUGIN_API_VERSION } from '@berth/core';
import { createLoopDriver, NAME, zLoopDriverOptions } from './loop-driver.js';

export { createLoopDriver, NAME, PROTOCOLS, zLoopDriverOptions, type LoopDriverOptions } from './loop-driver.js';
export { majorMinor, parseLosetupList, parseFindShow, parseGetSize64, type LoopDevice } from './losetup.js';

/** The `@berth/driver-loop` plugin: registers the `loop` transport for `file` and `local` connections. */
export default definePlugin({
  name: '@berth/driver-loop',
  apiVersion: PLUGIN_API_VERSION,
  optionsSchema: zLoopDriverOptions,
  register(registry) {
    registry.transport(NAME, (context) => createLoopDriver(context));
  },
});
