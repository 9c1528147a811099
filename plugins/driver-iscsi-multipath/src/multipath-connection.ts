import { z } from '@berth/core/zod';
import { BerthError, lazySchema, type ConnectionInfo } from '@berth/core';
import {
  addressingOf,
  chapOfConnection,
  formatPortal,
  kernelLun,
  lunKey,
  missingOr,
  secretsOfChap,
  toPortal,
  zAddressingMode,
  zChapConnectionKeys,
  zConnectionIqn,
  zConnectionLun,
  zConnectionText,
  type ConnectionChap,
  type LunAddressing,
  type LunTarget,
} from '@berth/iscsi';

export { lunKey, targetKey } from '@berth/iscsi';

/** One path of a volume: a LUN of a target through one portal. */
export type PathTarget = LunTarget;

/** The volume an `iscsi` connection_info names, for the multipath transport. */
export interface MultipathVolume extends ConnectionChap {
  /** `target_portal`/`target_iqn`/`target_lun`, else the first listed path: the discovery portal and the lock key. */
  primary: PathTarget;
  /** The paths `target_portals`/`target_iqns`/`target_luns` list; `undefined` means "discover them through `primary`". */
  listed?: PathTarget[];
  addressing: LunAddressing;
}

/** The slice of an `iscsi` connection_info's `data` this transport reads (Cinder's and os-brick's key names). */
export const zMultipathConnectionData = lazySchema(() => z.looseObject({
  target_portal: zConnectionText.optional(),
  target_iqn: zConnectionIqn.optional(),
  target_lun: zConnectionLun.optional(),
  target_portals: z.array(zConnectionText, { error: missingOr('a list of portals') }).min(1, 'is empty').max(64, 'has more than 64 portals').optional(),
  target_iqns: z.array(zConnectionIqn, { error: missingOr('a list of IQNs') }).optional(),
  target_luns: z.array(zConnectionLun, { error: missingOr('a list of LUNs') }).optional(),
  ...zChapConnectionKeys.unwrap().shape,
  /** os-brick's `addressing_mode`: how the target numbers LUNs, which decides the kernel's LUN. */
  addressing_mode: zAddressingMode.optional(),
}));

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
  const addressing = addressingOf(data.addressing_mode);

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

  const chap = forConnect ? chapOfConnection(data, problems) : {};
  if (problems.length > 0 || primary === undefined) throw invalid(problems.length > 0 ? problems : ['data names no portal']);
  return {
    primary,
    ...(listed === undefined ? {} : { listed }),
    addressing,
    ...chap,
  };
}

function invalid(problems: string[]): BerthError {
  return new BerthError('VALIDATION', `the iscsi connection_info cannot be used for multipath: ${problems.join('; ')}`, {
    hint: HINT,
    details: { problems },
  });
}

/** The per-volume lock key: connects and disconnects of one volume take turns. */
export function volumeKey(volume: MultipathVolume): string {
  return `volume|${lunKey(volume.primary)}`;
}

/** Every secret of a volume (for the runner's masking and for tests that look for leaks). */
export function secretsOfVolume(volume: MultipathVolume): string[] {
  return secretsOfChap(volume);
}
