import { definePlugin, PLUGIN_API_VERSION } from '@berth/core';
import { createIscsiDriver, NAME } from './iscsi-driver.js';
import { zIscsiDriverOptions } from './options.js';

export { createIscsiDriver, NAME, PROTOCOLS, STATE_SUBDIR } from './iscsi-driver.js';
export { zIscsiDriverOptions, type IscsiDriverOptions, type IscsiDriverOptionsInput } from './options.js';
export {
  parseIscsiConnection,
  zIscsiConnectionData,
  targetKey,
  lunKey,
  scanSlices,
  type IscsiVolumeTarget,
  type ChapCredentials,
  type IscsiConnectionData,
} from '@berth/iscsi';
export { AttachStateStore, zAttachState, type AttachState } from './attach-state.js';

/** The `@berth/driver-iscsi` plugin: registers the `iscsi` transport (single path, kernel initiator). */
export default definePlugin({
  name: '@berth/driver-iscsi',
  apiVersion: PLUGIN_API_VERSION,
  optionsSchema: zIscsiDriverOptions,
  register(registry) {
    registry.transport(NAME, (context) => createIscsiDriver(context));
  },
});
