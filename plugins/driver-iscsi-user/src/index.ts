import { definePlugin, PLUGIN_API_VERSION } from '@berth/core';
import { createIscsiUserDriver, NAME } from './iscsi-user-driver.js';
import { zIscsiUserOptions } from './options.js';

export { createIscsiUserDriver, NAME, PROTOCOLS, PRIORITY, IDENTITY_KIND } from './iscsi-user-driver.js';
export { firstLivePortal } from './portal-probe.js';
export { zIscsiUserOptions, type IscsiUserOptions } from './options.js';
export { userPaths, type UserPaths, type ExportRecord } from './export-records.js';
export { KERNEL_TRANSPORT } from './host-check.js';

/** The `@berth/driver-iscsi-user` plugin: registers the `iscsi-user` transport for `iscsi` connections. */
export default definePlugin({
  name: '@berth/driver-iscsi-user',
  apiVersion: PLUGIN_API_VERSION,
  optionsSchema: zIscsiUserOptions,
  register(registry) {
    registry.transport(NAME, (context) => createIscsiUserDriver(context));
  },
});
