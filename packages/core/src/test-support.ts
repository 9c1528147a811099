import type { HostServices } from '@berth/host';
import { DriverCatalog } from './catalog.js';
import type { Device } from './connection.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import { silentLogger } from './logger.js';
import { definePlugin, PLUGIN_API_VERSION } from './plugin.js';

// For core's unit tests only (not exported from the package): drivers that keep their state in
// memory, so the pipelines' decisions are tested in milliseconds.

/**
 * A catalog with a `mem` backend (exports `/dev/mem-<volume>`), transport (connects into `devices`,
 * or as `connect` says) and consumer (publishes at `/dev/berth<device>`).
 */
export function memCatalog(devices: Map<string, Device>, connect?: TransportDriver['connect']): DriverCatalog {
  const catalog = new DriverCatalog({ fs: { resolve: (p: string) => p } } as unknown as HostServices, '/tmp', silentLogger);
  const plugin = definePlugin({
    name: 'mem',
    apiVersion: PLUGIN_API_VERSION,
    register: (r) => {
      r.backend('mem', () => ({
        name: 'mem',
        create: async (volume) => ({ providerLocation: `mem:${volume.id}` }),
        delete: async () => undefined,
        initializeConnection: async (volume) => ({ driver_volume_type: 'mem', data: { device_path: `/dev/mem-${volume.id}` } }),
        terminateConnection: async () => undefined,
        check: async () => ({ ok: true, summary: 'mem' }),
      }));
      r.transport('mem', () => ({
        name: 'mem',
        protocols: ['mem'],
        connectorProperties: async () => ({}),
        connect: connect ?? (async (c) => devices.set(String(c.data.device_path), { path: String(c.data.device_path), type: 'block' }).get(String(c.data.device_path))!),
        disconnect: async (c) => void devices.delete(String(c.data.device_path)),
        check: async () => ({ ok: true, summary: 'mem' }),
      }));
      r.consumer('mem', () => ({ name: 'mem', publish: async (_s, device) => ({ path: `/dev/berth${device.path}` }), unpublish: async () => undefined }));
    },
  });
  catalog.add({ plugin, packageName: 'mem', version: undefined, options: undefined });
  return catalog;
}
