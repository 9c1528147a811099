import { definePlugin, PLUGIN_API_VERSION } from '@berth/core';
import { createFileBackend, NAME, zFileBackendOptions } from './backend-file.js';

export { createFileBackend, NAME, zFileBackendOptions, type FileBackendOptions } from './backend-file.js';

/** The `@berth/backend-file` plugin: registers the `file` volume backend. */
export default definePlugin({
  name: '@berth/backend-file',
  apiVersion: PLUGIN_API_VERSION,
  optionsSchema: zFileBackendOptions,
  register(registry) {
    registry.backend(NAME, (context) => createFileBackend(context));
  },
});
