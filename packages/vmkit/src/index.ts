export { buildCpio, type CpioEntry } from './cpio.js';
export {
  buildGuestImage,
  moduleLoadOrder,
  newestKernel,
  parseModulesDep,
  GUEST_MODULES,
  GUEST_PACKAGES_HINT,
  type GuestImage,
  type GuestImageSources,
  type ModuleFile,
} from './guest-image.js';
export { AGENT_PORT_NAME, AGENT_SCRIPT, READY_MARKER, initScript } from './guest-scripts.js';
export {
  GuestAgent,
  guestSerial,
  parseDisks,
  VIRTIO_SERIAL_BYTES,
  type GuestCommandResult,
  type GuestDisk,
} from './guest-agent.js';
export { bootQemuGuest, connectAgent, qemuGuestArgs, QEMU_BINARY, type QemuGuest, type QemuGuestOptions } from './qemu-guest.js';
export {
  agentSocketFromXml,
  bootLibvirtGuest,
  ensureLibvirtDaemons,
  libvirtGuestXml,
  LIBVIRT_URI,
  type LibvirtDaemons,
  type LibvirtGuest,
  type LibvirtGuestOptions,
} from './libvirt-guest.js';
export { guestServer, LoopVolumes, makeLoopVolume, type LoopVolume } from './loop-volume.js';
