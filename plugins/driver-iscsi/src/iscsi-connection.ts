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

/** The volume an `iscsi` connection_info names, validated: one LUN of one target at one portal. */
export interface IscsiVolumeTarget {
  iqn: string;
  portal: Portal;
  /** The portal as iscsiadm takes it (`host:port`, IPv6 in brackets). */
  portalText: string;
  /** The target's LUN number (`target_lun`). */
  lun: number;
  /** The LUN number the kernel uses for it (differs from `lun` under flat addressing). */
  kernelLun: number;
  /** Session CHAP, when `auth_method` is CHAP. */
  auth?: ChapCredentials;
  /** SendTargets CHAP, when `discovery_auth_method` is CHAP. */
  discoveryAuth?: ChapCredentials;
}

// Every message is written here so that zod never echoes a value back (a password may be one).
const missingOr = (what: string) => (issue: { input?: unknown }) =>
  issue.input === undefined ? 'is missing' : `must be ${what}`;

const zText = z.string({ error: missingOr('a string') }).min(1, 'is empty');
const zSecretText = zText.pipe(zRecordValue.max(1024, 'is too long'));

const zAuthMethod = z
  .string({ error: missingOr('a string') })
  .transform((s) => s.trim().toUpperCase())
  .pipe(z.enum(['CHAP', 'NONE'], { error: () => 'must be CHAP or None' }));

/** The slice of an `iscsi` connection_info's `data` this transport reads (Cinder's key names). */
export const zIscsiConnectionData = z.looseObject({
  target_portal: zText,
  target_iqn: z.string({ error: missingOr('a string') }).pipe(zIscsiName),
  target_lun: z
    .number({ error: missingOr('a whole number') })
    .int('must be a whole number')
    .nonnegative('must not be negative')
    .max(0xffff_ffff, 'is out of range'),
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
  addressing_mode: z
    .enum(['transparent', 'SAM', 'SAM2', 'SAM3-flat'], { error: () => 'must be transparent, SAM, SAM2 or SAM3-flat' })
    .optional(),
});

/** The keys that name the LUN, nothing else: what disconnect, extend and paths read. */
const zIscsiLunData = zIscsiConnectionData.pick({ target_portal: true, target_iqn: true, target_lun: true, addressing_mode: true }).loose();

/** Parsed `data` of an `iscsi` connection_info. */
export type IscsiConnectionData = z.output<typeof zIscsiConnectionData>;

const HINT =
  'the backend\'s initialize_connection must return target_portal, target_iqn and target_lun (Cinder\'s names), ' +
  'and auth_username/auth_password when auth_method is CHAP';

/** What a connection_info is parsed for. */
export interface ParseOptions {
  /** The `driver_volume_type` values accepted (default `['iscsi']`). */
  protocols?: readonly string[];
  /**
   * `connect` needs the credentials and checks them; everything else (disconnect, extend, paths)
   * only names the LUN, and gets the connection_info berth stored, whose passwords were removed.
   */
  purpose?: 'connect' | 'locate';
}

/**
 * Validate an `iscsi` connection_info and return the target it names. Throws a VALIDATION
 * BerthError naming every missing or wrong key, and never any value.
 */
export function parseIscsiConnection(connection: ConnectionInfo, options: ParseOptions = {}): IscsiVolumeTarget {
  const protocols = options.protocols ?? ['iscsi'];
  const forConnect = (options.purpose ?? 'connect') === 'connect';
  const problems: string[] = [];
  if (!protocols.includes(connection.driver_volume_type)) {
    problems.push(`driver_volume_type ${JSON.stringify(connection.driver_volume_type)} is not one of ${protocols.join(', ')}`);
  }
  const parsed = (forConnect ? zIscsiConnectionData : zIscsiLunData).safeParse(connection.data ?? {});
  if (!parsed.success) {
    for (const issue of parsed.error.issues) problems.push(`data.${issue.path.map(String).join('.') || '(root)'} ${issue.message}`);
  }
  let auth: ChapCredentials | undefined;
  let discoveryAuth: ChapCredentials | undefined;
  let portal: Portal | undefined;
  if (parsed.success && forConnect) {
    const data = parsed.data as IscsiConnectionData;
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
  if (parsed.success) {
    try {
      portal = toPortal(parsed.data.target_portal);
    } catch (error) {
      problems.push(`data.target_portal ${BerthError.is(error) ? error.message : 'is not a portal'}`);
    }
  }
  if (problems.length > 0 || !parsed.success || portal === undefined) {
    throw new BerthError('VALIDATION', `the iscsi connection_info cannot be used: ${problems.join('; ')}`, {
      hint: HINT,
      details: { problems },
    });
  }
  const data = parsed.data;
  const addressing: LunAddressing = data.addressing_mode === undefined || data.addressing_mode === 'transparent' ? 'SAM' : data.addressing_mode;
  return {
    iqn: data.target_iqn,
    portal,
    portalText: formatPortal(portal),
    lun: data.target_lun,
    kernelLun: kernelLun(data.target_lun, addressing),
    ...(auth === undefined ? {} : { auth }),
    ...(discoveryAuth === undefined ? {} : { discoveryAuth }),
  };
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
  return {
    username,
    password,
    ...(usernameIn !== undefined && passwordIn !== undefined ? { usernameIn, passwordIn } : {}),
  };
}

/** The per-target lock key: one node record and one session per (IQN, portal). */
export function targetKey(target: Pick<IscsiVolumeTarget, 'iqn' | 'portal'>): string {
  return `${target.iqn}|${portalKey(target.portal)}`;
}

/** The per-LUN lock key: one block device per (IQN, portal, LUN). */
export function lunKey(target: Pick<IscsiVolumeTarget, 'iqn' | 'portal' | 'kernelLun'>): string {
  return `${targetKey(target)}|${target.kernelLun}`;
}

/** Every secret of a target (for the runner's masking and for tests that look for leaks). */
export function secretsOfTarget(target: IscsiVolumeTarget): string[] {
  return [target.auth?.password, target.auth?.passwordIn, target.discoveryAuth?.password, target.discoveryAuth?.passwordIn].filter(
    (s): s is string => s !== undefined && s !== '',
  );
}
