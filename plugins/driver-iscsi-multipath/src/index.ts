import { definePlugin, PLUGIN_API_VERSION } from '@berth/core';
import { createMultipathDriver, NAME } from './multipath-driver.js';
import { zMultipathDriverOptions } from './options.js';

export { createMultipathDriver, NAME, PROTOCOLS, PRIORITY, STATE_SUBDIR, type PathState } from './multipath-driver.js';
export type { ChapCredentials } from '@berth/iscsi';
export { zMultipathDriverOptions, type MultipathDriverOptions, type MultipathDriverOptionsInput } from './options.js';
export {
  parseMultipathConnection,
  zMultipathConnectionData,
  targetKey,
  lunKey,
  volumeKey,
  type MultipathVolume,
  type PathTarget,
  type MultipathConnectionData,
} from './multipath-connection.js';
export { AttachStateStore, zAttachState, zAttachPath, type AttachState, type AttachPath } from './attach-state.js';

/** The `@berth/driver-iscsi-multipath` plugin: registers the `iscsi-multipath` transport (kernel initiator + dm-multipath). */
export default definePlugin({
  name: '@berth/driver-iscsi-multipath',
  apiVersion: PLUGIN_API_VERSION,
  optionsSchema: zMultipathDriverOptions,
  register(registry) {
    registry.transport(NAME, (context) => createMultipathDriver(context));
  },
});
