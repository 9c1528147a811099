import { z } from 'zod';
import { lazySchema } from './lazy-schema.js';

/**
 * A host's connector properties (os-brick's names), as sent to `initialize_connection`.
 * Unknown keys are kept so a third-party driver can add its own.
 */
export const zConnector = lazySchema(() => z.looseObject({
  host: z.string(),
  initiator: z.string().optional(),
  ip: z.string().optional(),
  multipath: z.boolean().optional(),
  enforce_multipath: z.boolean().optional(),
  platform: z.string().optional(),
  os_type: z.string().optional(),
  do_local_attach: z.boolean().optional(),
  uuid: z.string().optional(),
}));
export type Connector = z.output<typeof zConnector>;

/** A portal: `host:port`, with IPv6 hosts in brackets. */
export const zPortal = lazySchema(() => z.string().min(3).max(300));

/** The `data` of a connection_info (Cinder's key names); unknown keys are kept. */
export const zConnectionData = lazySchema(() => z.looseObject({
  device_path: z.string().optional(),
  target_portal: zPortal.optional(),
  target_iqn: z.string().optional(),
  target_lun: z.number().int().nonnegative().optional(),
  target_portals: z.array(zPortal).optional(),
  target_iqns: z.array(z.string()).optional(),
  target_luns: z.array(z.number().int().nonnegative()).optional(),
  target_discovered: z.boolean().optional(),
  auth_method: z.string().optional(),
  auth_username: z.string().optional(),
  auth_password: z.string().optional(),
  discovery_auth_method: z.string().optional(),
  discovery_auth_username: z.string().optional(),
  discovery_auth_password: z.string().optional(),
  volume_id: z.string().optional(),
  encrypted: z.boolean().optional(),
  qos_specs: z.unknown().optional(),
  access_mode: z.enum(['rw', 'ro']).optional(),
}));
export type ConnectionData = z.output<typeof zConnectionData>;

/** What a backend's `initializeConnection` returns and a transport's `connect` takes. */
export const zConnectionInfo = lazySchema(() => z.object({
  driver_volume_type: z.string().min(1),
  data: zConnectionData,
}));
export type ConnectionInfo = z.output<typeof zConnectionInfo>;

/** Keys of connection_info.data and connectors that hold secrets. */
export const SECRET_KEYS: readonly string[] = [
  'auth_password',
  'discovery_auth_password',
  'target_auth_password',
  'auth_password_in',
  'discovery_auth_password_in',
  'password',
  'password_in',
];

/**
 * Whether a key names a secret: one of `SECRET_KEYS` in any case, or any key that says password,
 * passwd or secret (`node.session.auth.password` in a device's meta, `Auth_Password` in a
 * connector: an agent or plugin that sends one by another name must not get it stored, nor shown
 * to members — a fault explorer's did).
 */
export function isSecretKey(key: string): boolean {
  return SECRET_KEYS.includes(key.toLowerCase()) || /pass(?:word|wd)|secret/i.test(key);
}

/** A copy of connection_info without any secret (what berth stores and prints by default). */
export function redactConnectionInfo(info: ConnectionInfo): ConnectionInfo {
  const data: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(info.data)) {
    if (!isSecretKey(key)) data[key] = value;
  }
  return { driver_volume_type: info.driver_volume_type, data: data as ConnectionData };
}

/**
 * connection_info as an attachment of `mode` connects it: a read-only attachment gets
 * `access_mode: 'ro'` over the backend's default (Cinder sets access_mode the same way); a
 * read-write one takes what the backend said.
 */
export function withAccessMode(info: ConnectionInfo, mode: 'rw' | 'ro'): ConnectionInfo {
  return mode === 'ro' ? { ...info, data: { ...info.data, access_mode: 'ro' } } : info;
}

/** Every secret value inside a connection_info (for the command runner's redaction). */
export function secretsOf(info: ConnectionInfo): string[] {
  const out: string[] = [];
  for (const [key, value] of Object.entries(info.data as Record<string, unknown>)) {
    if (isSecretKey(key) && typeof value === 'string' && value.length > 0) out.push(value);
  }
  return out;
}

/** One path of a connected device (a multipath device has several). */
export const zDevicePath = lazySchema(() => z.object({
  portal: z.string().optional(),
  device: z.string().optional(),
  state: z.string(),
  /** Why the path is in that state, in words (`session FREE, disk transport-offline: its I/O fails`). */
  detail: z.string().optional(),
}));
export type DevicePath = z.output<typeof zDevicePath>;

/** Facts that identify one device instance (never a secret): `{ kind: 'loop', rdev: '7:3', ... }`. */
export const zDeviceIdentity = lazySchema(() => z
  .record(z.string(), z.union([z.string(), z.number(), z.boolean()]))
  .refine((identity) => typeof identity.kind === 'string', 'a device identity names its kind'));
export type DeviceIdentity = z.output<typeof zDeviceIdentity>;

/** What a transport's `connect` returns: the block device on this host. */
export const zDevice = lazySchema(() => z.object({
  /**
   * The device node (`/dev/loop3`, `/dev/sdb`, `/dev/dm-0`) on the host its transport runs on: a
   * transport given another host root (`--simulate`'s) names it under that root; consumers get it
   * resolved to the machine's path (`DriverCatalog.machineDevice`). Not stored resolved: a device
   * recorded by an older berth with a `realPath` key reads back without it (unknown keys are dropped).
   */
  path: z.string(),
  type: z.literal('block'),
  scsi_wwn: z.string().optional(),
  multipath_id: z.string().optional(),
  paths: z.array(zDevicePath).optional(),
  /** Transport-specific, secret-free facts needed to disconnect later (persisted). */
  meta: z.record(z.string(), z.unknown()).optional(),
  /**
   * What identifies this very device, as the transport saw it at connect (persisted): loop —
   * device number, backing file's device and inode, offset and size limit; iSCSI — session id,
   * H:C:T:L and WWN; dm-multipath — the map's uuid. A device path is only a name the kernel reuses:
   * undo, detach and reconcile touch a device only while its identity still matches this.
   */
  identity: zDeviceIdentity.optional(),
}));
export type Device = z.output<typeof zDevice>;

/**
 * A connector without secret-named keys. Callers strip secrets before storing; every store does it
 * again so that no code path can persist one.
 */
export function connectorWithoutSecrets(connector: Connector): Connector {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(connector)) {
    if (!isSecretKey(key)) out[key] = value;
  }
  return out as Connector;
}

/**
 * A JSON object without secret-named keys at any depth (work item payloads and results may
 * carry a connection's data; CHAP passwords must still never reach the database).
 */
export function recordWithoutSecrets(record: Record<string, unknown>): Record<string, unknown> {
  const strip = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(strip);
    if (value === null || typeof value !== 'object') return value;
    const out: Record<string, unknown> = {};
    for (const [key, inner] of Object.entries(value)) {
      if (!isSecretKey(key)) out[key] = strip(inner);
    }
    return out;
  };
  return strip(record) as Record<string, unknown>;
}
