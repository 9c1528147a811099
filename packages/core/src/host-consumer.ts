import type { HostFs } from '@berth/host';
import type { Consumer, Publication } from './contracts/consumer.js';
import type { Device } from './connection.js';
import type { Attachment, Server } from './model.js';
import { definePlugin, PLUGIN_API_VERSION } from './plugin.js';

/** Where the host consumer puts its stable links. */
export const STABLE_LINK_DIR = '/dev/berth';

/** The stable path of a volume's device on its host. */
export function stableLinkPath(volumeId: string): string {
  return `${STABLE_LINK_DIR}/${volumeId}`;
}

/**
 * The default consumer: the server is this host itself, so publishing means giving the device a
 * name that does not change across attaches (`/dev/loop3` today, `/dev/loop7` tomorrow):
 * `/dev/berth/<volume-id>` → the device.
 */
export function createHostConsumer(fs: HostFs): Consumer {
  return {
    name: 'host',
    async publish(_server: Server, device: Device, attachment: Attachment): Promise<Publication> {
      const link = stableLinkPath(attachment.volumeId);
      await fs.mkdir(STABLE_LINK_DIR, { mode: 0o755 });
      // A device of a transport on another host root (the simulated host) is linked by its path
      // on this machine, so the stable link opens the same device whoever follows it.
      await fs.symlink(device.realPath ?? device.path, link);
      return { path: link };
    },
    async unpublish(_server: Server, attachment: Attachment): Promise<void> {
      const link = stableLinkPath(attachment.volumeId);
      const target = await fs.readlink(link);
      // Only remove our own link: another attachment of a multiattach volume on another server
      // never shares a host, and a link to another device means someone re-published since.
      const device = attachment.device;
      if (target !== undefined && (device === null || target === (device.realPath ?? device.path))) {
        await fs.unlink(link);
      }
    },
    async check() {
      return { ok: true, summary: `stable links under ${fs.resolve(STABLE_LINK_DIR)}` };
    },
  };
}

/** Core's own plugin: registers the `host` consumer. */
export const corePlugin = definePlugin({
  name: '@berth/core',
  apiVersion: PLUGIN_API_VERSION,
  register(registry) {
    registry.consumer('host', (context) => createHostConsumer(context.host.fs));
  },
});
