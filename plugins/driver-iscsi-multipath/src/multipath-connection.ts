import { z } from 'zod';
import { BerthError, type ConnectionInfo } from '@berth/core';
import {
  formatPortal,
  kernelLun,
  portalKey,
  toPortal,
  zIscsiName,
  zRecordValue,
  type LunAddressing,
  type Portal,
} from '@berth/iscsi';

/** CHAP credentials for a login (`node.session.auth.*`) or a discovery (`discovery.sendtargets.auth.*`). */
export interface ChapCredentials {
  username: string;
  password: string;
  /** Mutual CHAP: the name the target answers with. */
  usernameIn?: string;
  /** Mutual CHAP: the target's secret. */
  passwordIn?: string;
}

/** One path of a volume: a LUN of a target through one portal. */
export interface PathTarget {
  iqn: string;
  portal: Portal;
  /** The portal as iscsiadm takes it (`host:port`, IPv6 in brackets). */
  portalText: string;
  /** The target's LUN number. */
  lun: number;
  /** The LUN number the kernel uses for it (differs from `lun` under flat addressing). */
  kernelLun: number;
}

/** The volume an `iscsi` connection_info names, for the multipath transport. */
export interface MultipathVolume {
  /** `target_portal`/`target_iqn`/`target_lun`, else the first listed path: the discovery portal and the lock key. */
  primary: PathTarget;
  /** The paths `target_portals`/`target_iqns`/`target_luns` list; `undefined` means "discover them through `primary`". */
  listed?: PathTarget[];
  addressing: LunAddressing;
  /** Session CHAP (every path), when `auth_method` is CHAP. */
  auth?: ChapCredentials;
  /** SendTargets CHAP, when `discovery_auth_method` is CHAP. */
  discoveryAuth?: ChapCredentials;
}

// Every message is written here so that zod never echoes a value back (a password may be one).
const missingOr = (what: string) => (issue: { input?: unknown }) => (issue.input === undefined ? 'is missing' : `must be ${what}`);
const zText = z.string({ error: missingOr('a string') }).min(1, 'is empty').max(300, 'is too long');
const zSecretText = z.string({ error: missingOr('a string') }).min(1, 'is empty').pipe(zRecordValue.max(1024, 'is too long'));
const zIqn = z.string({ error: missingOr('a string') }).pipe(zIscsiName);
const zLun = z
  .number({ error: missingOr('a whole number') })
  .int('must be a whole number')
  .nonnegative('must not be negative')
  .max(0xffff_ffff, 'is out of range');
const zAuthMethod = z
  .string({ error: missingOr('a string') })
  .transform((s) => s.trim().toUpperCase())
  .pipe(z.enum(['CHAP', 'NONE'], { error: () => 'must be CHAP or None' }));

/** The slice of an `iscsi` connection_info's `data` this transport reads (Cinder's and os-brick's key names). */
export const zMultipathConnectionData = z.looseObject({
  target_portal: zText.optional(),
  target_iqn: zIqn.optional(),
  target_lun: zLun.optional(),
  target_portals: z.array(zText, { error: missingOr('a list of portals') }).min(1, 'is empty').max(64, 'has more than 64 portals').optional(),
  target_iqns: z.array(zIqn, { error: missingOr('a list of IQNs') }).optional(),
  target_luns: z.array(zLun, { error: missingOr('a list of LUNs') }).optional(),
  auth_method: zAuthMethod.optional(),
  auth_username: zSecretText.optional(),
  auth_password: zSecretText.optional(),
  auth_username_in: zSecretText.optional(),
  auth_password_in: zSecretText.optional(),
  discovery_auth_method: zAuthMethod.optional(),
  discovery_auth_username: zSecretText.optional(),
  discovery_auth_password: zSecretText.optional(),
  discovery_auth_username_in: zSecretText.optional(),
  discovery_auth_password_in: zSecretText.optional(),
  /** os-brick's `addressing_mode`: how the target numbers LUNs, which decides the kernel's LUN. */
  addressing_mode: z.enum(['transparent', 'SAM', 'SAM2', 'SAM3-flat'], { error: () => 'must be transparent, SAM, SAM2 or SAM3-flat' }).optional(),
});

/** Parsed `data` of an `iscsi` connection_info for this transport. */
export type MultipathConnectionData = z.output<typeof zMultipathConnectionData>;

const HINT =
  'the backend must return target_portals with target_iqns and target_luns (os-brick\'s multipath keys), or ' +
  'target_portal, target_iqn and target_lun to discover the other portals; and auth_username/auth_password when auth_method is CHAP';

/** What a connection_info is parsed for. */
export interface ParseOptions {
  /** The `driver_volume_type` values accepted. */
  protocols: readonly string[];
  /**
   * `connect` checks the credentials; everything else (disconnect, paths) only names the LUN and
   * gets the connection_info berth stored, whose passwords were removed.
   */
  purpose?: 'connect' | 'locate';
}

/**
 * Validate an `iscsi` connection_info for multipath and return the volume it names. Throws a
 * VALIDATION BerthError naming every missing or wrong key, and never any value.
 */
export function parseMultipathConnection(connection: ConnectionInfo, options: ParseOptions): MultipathVolume {
  const forConnect = (options.purpose ?? 'connect') === 'connect';
  const problems: string[] = [];
  if (!options.protocols.includes(connection.driver_volume_type)) {
    problems.push(`driver_volume_type ${JSON.stringify(connection.driver_volume_type)} is not one of ${options.protocols.join(', ')}`);
  }
  const parsed = zMultipathConnectionData.safeParse(connection.data ?? {});
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      // Credentials are not read when locating: their problems do not stop a disconnect.
      const key = String(issue.path[0] ?? '');
      if (!forConnect && /auth/.test(key)) continue;
      problems.push(`data.${issue.path.map(String).join('.') || '(root)'} ${issue.message}`);
    }
  }
  if (problems.length > 0 || !parsed.success) throw invalid(problems);
  const data = parsed.data;
  const addressing: LunAddressing = data.addressing_mode === undefined || data.addressing_mode === 'transparent' ? 'SAM' : data.addressing_mode;

  const path = (portalText: string, iqn: string, lun: number, key: string): PathTarget | undefined => {
    try {
      const portal = toPortal(portalText);
      return { iqn, portal, portalText: formatPortal(portal), lun, kernelLun: kernelLun(lun, addressing) };
    } catch (error) {
      problems.push(`data.${key} ${BerthError.is(error) ? error.message : 'is not a portal'}`);
      return undefined;
    }
  };

  let listed: PathTarget[] | undefined;
  if (data.target_portals !== undefined) {
    const portals = data.target_portals;
    if (data.target_iqns !== undefined && data.target_iqns.length !== portals.length) {
      problems.push(`data.target_iqns has ${data.target_iqns.length} entries for ${portals.length} target_portals`);
    }
    if (data.target_luns !== undefined && data.target_luns.length !== portals.length) {
      problems.push(`data.target_luns has ${data.target_luns.length} entries for ${portals.length} target_portals`);
    }
    if (data.target_iqns === undefined && data.target_iqn === undefined) problems.push('data.target_iqns is missing (and no target_iqn to use for every portal)');
    if (data.target_luns === undefined && data.target_lun === undefined) problems.push('data.target_luns is missing (and no target_lun to use for every portal)');
    if (problems.length === 0) {
      listed = [];
      const seen = new Set<string>();
      portals.forEach((portalText, i) => {
        const iqn = data.target_iqns?.[i] ?? data.target_iqn ?? '';
        const lun = data.target_luns?.[i] ?? data.target_lun ?? 0;
        const p = path(portalText, iqn, lun, `target_portals.${i}`);
        if (p === undefined) return;
        // A portal listed twice is one path, not two sessions.
        const key = lunKey(p);
        if (!seen.has(key)) listed?.push(p);
        seen.add(key);
      });
    }
  } else {
    for (const key of ['target_portal', 'target_iqn', 'target_lun'] as const) {
      if (data[key] === undefined) problems.push(`data.${key} is missing (needed to discover the portals when target_portals is absent)`);
    }
  }

  let primary: PathTarget | undefined;
  if (data.target_portal !== undefined && data.target_iqn !== undefined && data.target_lun !== undefined) {
    primary = path(data.target_portal, data.target_iqn, data.target_lun, 'target_portal');
  } else {
    primary = listed?.[0];
  }

  let auth: ChapCredentials | undefined;
  let discoveryAuth: ChapCredentials | undefined;
  if (forConnect) {
    auth = credentials(data.auth_method, data.auth_username, data.auth_password, data.auth_username_in, data.auth_password_in, 'auth', problems);
    discoveryAuth = credentials(
      data.discovery_auth_method,
      data.discovery_auth_username,
      data.discovery_auth_password,
      data.discovery_auth_username_in,
      data.discovery_auth_password_in,
      'discovery_auth',
      problems,
    );
  }
  if (problems.length > 0 || primary === undefined) throw invalid(problems.length > 0 ? problems : ['data names no portal']);
  return {
    primary,
    ...(listed === undefined ? {} : { listed }),
    addressing,
    ...(auth === undefined ? {} : { auth }),
    ...(discoveryAuth === undefined ? {} : { discoveryAuth }),
  };
}

function invalid(problems: string[]): BerthError {
  return new BerthError('VALIDATION', `the iscsi connection_info cannot be used for multipath: ${problems.join('; ')}`, {
    hint: HINT,
    details: { problems },
  });
}

function credentials(
  method: string | undefined,
  username: string | undefined,
  password: string | undefined,
  usernameIn: string | undefined,
  passwordIn: string | undefined,
  prefix: string,
  problems: string[],
): ChapCredentials | undefined {
  if (method === undefined) {
    // Cinder drivers send credentials with auth_method set; credentials alone are a backend bug.
    if (username !== undefined || password !== undefined) problems.push(`data.${prefix}_method is missing while ${prefix}_username/${prefix}_password are given`);
    return undefined;
  }
  if (method !== 'CHAP') return undefined;
  if (username === undefined) problems.push(`data.${prefix}_username is missing (${prefix}_method is CHAP)`);
  if (password === undefined) problems.push(`data.${prefix}_password is missing (${prefix}_method is CHAP)`);
  if ((usernameIn === undefined) !== (passwordIn === undefined)) {
    problems.push(`data.${prefix}_username_in and data.${prefix}_password_in go together (mutual CHAP needs both)`);
  }
  if (username === undefined || password === undefined) return undefined;
  return { username, password, ...(usernameIn !== undefined && passwordIn !== undefined ? { usernameIn, passwordIn } : {}) };
}

/** The per-target key: one node record and one session per (IQN, portal). */
export function targetKey(target: Pick<PathTarget, 'iqn' | 'portal'>): string {
  return `${target.iqn}|${portalKey(target.portal)}`;
}

/** The per-path key: one block device per (IQN, portal, LUN). */
export function lunKey(target: Pick<PathTarget, 'iqn' | 'portal' | 'kernelLun'>): string {
  return `${targetKey(target)}|${target.kernelLun}`;
}

/** The per-volume lock key: connects and disconnects of one volume take turns. */
export function volumeKey(volume: MultipathVolume): string {
  return `volume|${lunKey(volume.primary)}`;
}

/** Every secret of a volume (for the runner's masking and for tests that look for leaks). */
export function secretsOfVolume(volume: MultipathVolume): string[] {
  return [volume.auth?.password, volume.auth?.passwordIn, volume.discoveryAuth?.password, volume.discoveryAuth?.passwordIn].filter(
    (s): s is string => s !== undefined && s !== '',
  );
}
