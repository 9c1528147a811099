import { definePlugin, PLUGIN_API_VERSION } from '@berth/core';
import { createQemuConsumer, NAME, zQemuConsumerOptions } from './qemu-consumer.js';

export {
  createQemuConsumer,
  NAME,
  zQemuConsumerOptions,
  type GuestPublication,
  type QemuConsumer,
  type QemuConsumerOptions,
} from './qemu-consumer.js';
export {
  qemuDiskIds,
  qemuDiskMode,
  qemuHypervisorOf,
  volumeIdOfDevice,
  zQemuHypervisor,
  type QemuDiskIds,
  type QemuDiskMode,
  type QemuHypervisor,
} from './qemu-hypervisor.js';

/** The `@berth/consumer-qemu` plugin: registers the `qemu` consumer (hot-plug into a QEMU guest over QMP). */
export default definePlugin({
  name: '@berth/consumer-qemu',
  apiVersion: PLUGIN_API_VERSION,
  optionsSchema: zQemuConsumerOptions,
  register(registry) {
    registry.consumer(NAME, (context) => createQemuConsumer(context));
  },
});
