import { createHash } from 'node:crypto';
import { z } from '@berth/core/zod';
import { BerthError, lazySchema, type ConnectionInfo } from '@berth/core';
import { formatPortal, toPortal, zIscsiName } from '@berth/iscsi';

/** The LUN of one target this transport connects, validated. */
export interface UserLun {
  iqn: string;
  lun: number;
  /** Portals to try in order: `target_portal` first, then the others of `target_portals`. */
  portals: string[];
  readOnly: boolean;
  /** Initiator CHAP; with `passwordIn`, mutual. */
  auth?: { username: string; password: string; usernameIn?: string; passwordIn?: string };
}

// Messages are written here so that zod never echoes a value (a password may be one).
const zText = lazySchema(() => z.string({ error: 'must be a string' }).min(1, 'is empty').max(1024, 'is too long').regex(/^[^\x00-\x1f\x7f]*$/, 'holds a control character'));

const zData = lazySchema(() => z.looseObject({
  target_portal: zText,
  target_portals: z.array(zText).optional(),
  target_iqn: z.string({ error: 'must be a string' }).pipe(zIscsiName),
  target_lun: z.number({ error: 'must be a whole number' }).int('must be a whole number').min(0, 'must not be negative').max(0x3fff, 'is out of range (0-16383)'),
  auth_method: z.string().optional(),
  auth_username: zText.optional(),
  auth_password: zText.optional(),
  auth_username_in: zText.optional(),
  auth_password_in: zText.optional(),
  access_mode: z.enum(['rw', 'ro']).optional(),
}));

const HINT = 'the backend must return target_portal, target_iqn and target_lun, and auth_username/auth_password when auth_method is CHAP';

/**
 * Read an `iscsi` connection_info. `locate` (disconnect, reconcile: the stored copy has no
 * passwords) reads only what names the LUN.
 */
export function parseUserConnection(connection: ConnectionInfo, purpose: 'connect' | 'locate'): UserLun {
  const problems: string[] = [];
  if (connection.driver_volume_type !== 'iscsi') problems.push(`driver_volume_type ${JSON.stringify(connection.driver_volume_type)} is not iscsi`);
  const parsed = zData.safeParse(connection.data ?? {});
  if (!parsed.success) for (const issue of parsed.error.issues) problems.push(`data.${issue.path.map(String).join('.')} ${issue.message}`);
  let portals: string[] = [];
  if (parsed.success) {
    const given = [parsed.data.target_portal, ...(parsed.data.target_portals ?? [])];
    for (const text of given) {
      try {
        const portal = formatPortal(toPortal(text));
        if (!portals.includes(portal)) portals.push(portal);
      } catch (error) {
        problems.push(`data.target_portal(s) ${BerthError.is(error) ? error.message : 'holds something that is not a portal'}`);
      }
    }
  }
  let auth: UserLun['auth'];
  if (parsed.success && purpose === 'connect' && (parsed.data.auth_method ?? 'None').toUpperCase() === 'CHAP') {
    const d = parsed.data;
    if (d.auth_username === undefined || d.auth_password === undefined) problems.push('data.auth_username and data.auth_password are needed when auth_method is CHAP');
    if ((d.auth_username_in === undefined) !== (d.auth_password_in === undefined)) problems.push('data.auth_username_in and data.auth_password_in go together (mutual CHAP)');
    if (d.auth_username !== undefined && d.auth_password !== undefined) {
      auth = {
        username: d.auth_username,
        password: d.auth_password,
        ...(d.auth_username_in !== undefined && d.auth_password_in !== undefined ? { usernameIn: d.auth_username_in, passwordIn: d.auth_password_in } : {}),
      };
    }
  }
  if (!parsed.success || problems.length > 0) {
    throw new BerthError('VALIDATION', `the iscsi connection_info cannot be used: ${problems.join('; ')}`, { hint: HINT, details: { problems } });
  }
  portals = portals.length > 0 ? portals : [parsed.data.target_portal];
  return {
    iqn: parsed.data.target_iqn,
    lun: parsed.data.target_lun,
    portals,
    readOnly: parsed.data.access_mode === 'ro',
    ...(auth ? { auth } : {}),
  };
}

/** The names of one LUN's QEMU objects and files: fixed by target and LUN, so a crash leaves findable leftovers. */
export interface ExportNames {
  /** 20 hex digits of SHA-256(iqn, lun). */
  key: string;
  /** The iSCSI (protocol) node; `nodeB` is the one a failover builds beside it, alternately. */
  node: string;
  nodeB: string;
  /** The `raw` filter over the protocol node: what the export names, re-pointed on failover. */
  filter: string;
  exportId: string;
  secretId: string;
}

/** The names for `iqn` + `lun` (QMP names stay under QEMU's 31-character limit). */
export function exportNames(iqn: string, lun: number): ExportNames {
  const key = createHash('sha256').update(`${iqn}\u0000${lun}`).digest('hex').slice(0, 20);
  return { key, node: `iu-${key}`, nodeB: `iu-${key}-b`, filter: `iu-${key}-f`, exportId: `iu-${key}-x`, secretId: `iu-${key}-s` };
}
