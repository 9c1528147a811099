import { definePlugin, PLUGIN_API_VERSION } from '@berth/core';
import { createLibvirtConsumer, NAME, zLibvirtConsumerOptions } from './libvirt-consumer.js';

export {
  createLibvirtConsumer,
  libvirtHypervisorOf,
  DEFAULT_LIBVIRT_URI,
  NAME,
  zLibvirtConsumerOptions,
  zLibvirtHypervisor,
  type GuestPublication,
  type LibvirtConsumer,
  type LibvirtConsumerOptions,
  type LibvirtHypervisor,
} from './libvirt-consumer.js';
export { diskAlias, diskModeOf, diskXml, freeVirtioTarget, type LibvirtDiskSpec } from './disk-xml.js';
export { parseDomblklist, Virsh, virshFailed, type DomainBlock } from './virsh.js';

/** The `@berth/consumer-libvirt` plugin: registers the `libvirt` consumer (hot-plug into a libvirt domain with virsh). */
export default definePlugin({
  name: '@berth/consumer-libvirt',
  apiVersion: PLUGIN_API_VERSION,
  optionsSchema: zLibvirtConsumerOptions,
  register(registry) {
    registry.consumer(NAME, (context) => createLibvirtConsumer(context));
  },
});
