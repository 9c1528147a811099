import type { HostServices } from '@berth/host';
import { DriverCatalog } from './catalog.js';
import type { Device } from './connection.js';
import type { Consumer } from './contracts/consumer.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import { silentLogger } from './logger.js';
import { definePlugin, PLUGIN_API_VERSION } from './plugin.js';

// For core's unit tests only (not exported from the package): drivers that keep their state in
// memory, so the pipelines' decisions are tested in milliseconds.

/** Options of `memCatalog`. */
export interface MemCatalogOptions {
  /** The root of the host services the plugin runs on (none: the host says none). */
  root?: string;
  /** The transport lists its devices (`connected`, source key `device_path`), for reconcile. */
  lists?: boolean;
  /** Where the drivers' calls that change something are named (`connect`, `disconnect`, `terminate`, `unpublish`, `repair`). */
  calls?: string[];
  /**
   * The transport repairs paths: each listed device has one path (portal `mem:1`) whose state is
   * this map's entry for its path (default `active`); `repairPaths` sets a `failed` one `active`.
   * Needs `lists`.
   */
  pathStates?: Map<string, string>;
  /** While set, `repairPaths` finds no live path to move a failed one to (`changed: false`). */
  noLivePath?: { now: boolean };
  /** Each `connected()` call, named by what it may do: `readOnly` (a dry run's) or `may-change`. Needs `lists`. */
  looks?: string[];
  /** Registered as consumer `mem` instead of the one that only names paths. */
  consumer?: Consumer;
  /** Called by the transport's disconnect once the device is gone from `devices`. */
  afterDisconnect?: (device: string) => Promise<void>;
  /** Register no transport (as after `plugins uninstall --force` of the plugin that had it). */
  noTransport?: boolean;
  /** The transport's disconnect instead of the one that forgets the device. */
  disconnect?: TransportDriver['disconnect'];
}

/**
 * A catalog with a `mem` backend (exports `/dev/mem-<volume>`), transport (connects into `devices`,
 * or as `connect` says) and consumer (publishes at `/dev/berth<device>`).
 */
export function memCatalog(devices: Map<string, Device>, connect?: TransportDriver['connect'], options: MemCatalogOptions = {}): DriverCatalog {
  // A host path resolves under the root, as `createHostFs(root)`'s does.
  const root = options.root;
  const fs = stubHostFs(root);
  const catalog = new DriverCatalog({ fs } as unknown as HostServices, '/tmp', silentLogger);
  const called = (name: string): void => void options.calls?.push(name);
  const plugin = definePlugin({
    name: 'mem',
    apiVersion: PLUGIN_API_VERSION,
    register: (r) => {
      r.backend('mem', () => ({
        name: 'mem',
        create: async (volume) => ({ providerLocation: `mem:${volume.id}` }),
        delete: async () => undefined,
        initializeConnection: async (volume) => ({ driver_volume_type: 'mem', data: { device_path: `/dev/mem-${volume.id}` } }),
        terminateConnection: async () => called('terminate'),
        check: async () => ({ ok: true, summary: 'mem' }),
      }));
      if (!options.noTransport) r.transport('mem', () => ({
        name: 'mem',
        protocols: ['mem'],
        connectorProperties: async () => ({}),
        connect: async (c, context) => {
          called('connect');
          if (connect) return connect(c, context);
          return devices.set(String(c.data.device_path), { path: String(c.data.device_path), type: 'block' }).get(String(c.data.device_path))!;
        },
        disconnect: async (c, device, disconnectOptions) => {
          called('disconnect');
          if (options.disconnect) return options.disconnect(c, device, disconnectOptions);
          devices.delete(String(c.data.device_path));
          await options.afterDisconnect?.(String(c.data.device_path));
        },
        ...(options.lists
          ? {
              sourceKeys: ['device_path'],
              connected: async (list?: { readOnly?: boolean }) => {
                options.looks?.push(list?.readOnly === true ? 'readOnly' : 'may-change');
                return [...devices.values()].map((device) => {
                  const state = options.pathStates?.get(device.path) ?? 'active';
                  return { device: options.pathStates ? { ...device, paths: [{ portal: 'mem:1', state }] } : device, source: { device_path: device.path } };
                });
              },
            }
          : {}),
        ...(options.pathStates
          ? {
              repairPaths: async (listed: { device: Device }) => {
                if (options.pathStates!.get(listed.device.path) !== 'failed') return { changed: false, detail: `${listed.device.path}: its path answers` };
                if (options.noLivePath?.now === true) return { changed: false, detail: `${listed.device.path}: every path is failed` };
                called('repair');
                options.pathStates!.set(listed.device.path, 'active');
                return { changed: true, detail: `${listed.device.path} moved to mem:2` };
              },
            }
          : {}),
        check: async () => ({ ok: true, summary: 'mem' }),
      }));
      r.consumer('mem', () =>
        options.consumer ?? {
          name: 'mem',
          publish: async (_s, device) => ({ path: `/dev/berth${device.path}` }),
          unpublish: async () => called('unpublish'),
        },
      );
    },
  });
  catalog.add({ plugin, packageName: 'mem', version: undefined, options: undefined });
  return catalog;
}

/**
 * A stand-in for `HostFs` in unit tests: a host path resolves under `root` as `createHostFs(root)`'s
 * does, and every path is a block device (the check `connect`'s device passes in the catalog's
 * guard), unless `notBlock` names it (then it is `as` says, or missing).
 */
export function stubHostFs(root?: string, notBlock: Record<string, 'file' | 'char' | 'missing'> = {}): Record<string, unknown> {
  const resolve = (p: string): string => (root === undefined || root === '/' ? p : `${root}${p}`);
  return {
    resolve,
    ...(root === undefined ? {} : { root }),
    toHostPath: (p: string) => p,
    realpath: async (p: string) => {
      if (notBlock[p] === 'missing') throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' });
      return p;
    },
    stat: async (p: string) => {
      const kind = notBlock[p];
      if (kind === 'missing') return undefined;
      return { isFile: kind === 'file', isDirectory: false, isSymbolicLink: false, isBlockDevice: kind === undefined, size: 0 };
    },
  };
}
