import { definePlugin, PLUGIN_API_VERSION } from '@berth/core';
import { createTgtBackend, NAME } from './backend-tgt.js';
import { zTgtBackendOptions } from './options.js';

export { createTgtBackend, NAME, DRIVER_VOLUME_TYPE, volumeIqn } from './backend-tgt.js';
export { zTgtBackendOptions, DEFAULT_CONTROL_PORT, DEFAULT_IQN_PREFIX, type TgtBackendOptions } from './options.js';
export { stopManagedTgtd, managedTgtdPaths, type StopManagedTgtdOptions } from './managed-tgtd.js';
export { parseTargetList, parsePortalList, parseAccountList, type TgtTarget, type TgtLun, type TgtNexus, type TgtBoundAccount } from './tgtadm-show-parser.js';

/** The `@berth/backend-tgt` plugin: registers the `tgt` volume backend. */
export default definePlugin({
  name: '@berth/backend-tgt',
  apiVersion: PLUGIN_API_VERSION,
  optionsSchema: zTgtBackendOptions,
  register(registry) {
    registry.backend(NAME, (context) => createTgtBackend(context));
  },
});
