import { BerthError, zQemuHypervisor, type Attachment, type QemuHypervisor, type Server } from '@berth/core';

/** Where a server's QEMU listens: core's schema of the server record's `hypervisor` field (`type: 'qemu'`). */
export { zQemuHypervisor, type QemuHypervisor };

/** The server's QEMU settings, or a CONFIG error saying how to give them. */
export function qemuHypervisorOf(server: Server): QemuHypervisor {
  const parsed = zQemuHypervisor.safeParse(server.hypervisor);
  if (!parsed.success) {
    throw new BerthError('CONFIG', `server ${server.name} has no QEMU hypervisor settings: ${parsed.error.issues[0]?.message ?? 'invalid'}`, {
      hint: `give the server its QEMU: berth server create ${server.name} --hypervisor qemu --qmp /path/to/qmp.sock`,
      details: { server: server.name },
    });
  }
  return parsed.data;
}

/** The names berth gives a volume's disk inside QEMU. */
export interface QemuDiskIds {
  /** The qdev id of the `virtio-blk-pci` device (`berth-<volume id>`). */
  deviceId: string;
  /** The block node (`berth-` + 24 hex digits of the id: QEMU's node names stop at 31 characters). */
  nodeName: string;
}

const DEVICE_PREFIX = 'berth-';

/** The device id and node name of a volume's disk. */
export function qemuDiskIds(volumeId: string): QemuDiskIds {
  return { deviceId: `${DEVICE_PREFIX}${volumeId}`, nodeName: `${DEVICE_PREFIX}${volumeId.replace(/-/g, '').slice(0, 24)}` };
}

/** The volume id in a device id berth gave, or undefined for any other device. */
export function volumeIdOfDevice(deviceId: string): string | undefined {
  if (!deviceId.startsWith(DEVICE_PREFIX)) return undefined;
  const rest = deviceId.slice(DEVICE_PREFIX.length);
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(rest) ? rest : undefined;
}

/** How the disk is opened, from the connection_info the backend gave (Cinder's keys). */
export interface QemuDiskMode {
  readOnly: boolean;
  /** `cache.direct`: off only when the backend says host caching is safe (`cacheable`). */
  direct: boolean;
  /** Pass the guest's discards down (`discard: true` in the connection_info). */
  discard: boolean;
}

/** The disk's mode for an attachment: read-only for `ro`, caching and discard from its connection_info. */
export function qemuDiskMode(attachment: Attachment): QemuDiskMode {
  const data: Record<string, unknown> = attachment.connectionInfo?.data ?? {};
  return {
    readOnly: attachment.mode === 'ro' || data.access_mode === 'ro',
    direct: data.cacheable !== true,
    discard: data.discard === true,
  };
}
