import { z } from '@berth/core/zod';
import { BerthError, lazySchema, type ConnectionInfo } from '@berth/core';
import { kernelLun } from './by-path.js';
import { chapOfConnection, secretsOfChap, type ConnectionChap } from './chap-credentials.js';
import { addressingOf, zAddressingMode, zChapConnectionKeys, zConnectionIqn, zConnectionLun, zConnectionText } from './connection-fields.js';
import type { LunTarget } from './lun-device.js';
import { formatPortal, portalKey, type Portal } from './portal.js';
import { toPortal } from './target.js';

/** The volume an `iscsi` connection_info names, validated: one LUN of one target at one portal, with its CHAP. */
export interface IscsiVolumeTarget extends LunTarget, ConnectionChap {}

/** The slice of an `iscsi` connection_info's `data` a single-LUN connect reads (Cinder's key names). */
export const zIscsiConnectionData = lazySchema(() => z.looseObject({
  target_portal: zConnectionText,
  target_iqn: zConnectionIqn,
  target_lun: zConnectionLun,
  ...zChapConnectionKeys.unwrap().shape,
  /** os-brick's `addressing_mode`: how the target numbers LUNs, which decides the kernel's LUN. */
  addressing_mode: zAddressingMode.optional(),
}));

/** The keys that name the LUN, nothing else: what disconnect, extend and paths read. */
const zIscsiLunData = lazySchema(() => zIscsiConnectionData.unwrap().pick({ target_portal: true, target_iqn: true, target_lun: true, addressing_mode: true }).loose());

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
 * Validate an `iscsi` connection_info naming one LUN and return the target it names. Throws a
 * VALIDATION BerthError naming every missing or wrong key, and never any value.
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
  const chap = parsed.success && forConnect ? chapOfConnection(parsed.data as IscsiConnectionData, problems) : {};
  let portal: Portal | undefined;
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
  return {
    iqn: data.target_iqn,
    portal,
    portalText: formatPortal(portal),
    lun: data.target_lun,
    kernelLun: kernelLun(data.target_lun, addressingOf(data.addressing_mode)),
    ...chap,
  };
}

/** The per-target lock key: one node record and one session per (IQN, portal). */
export function targetKey(target: { iqn: string; portal: Portal }): string {
  return `${target.iqn}|${portalKey(target.portal)}`;
}

/** The per-LUN lock key: one block device per (IQN, portal, LUN). */
export function lunKey(target: { iqn: string; portal: Portal; kernelLun: number }): string {
  return `${targetKey(target)}|${target.kernelLun}`;
}

/** Every secret of a target (for the runner's masking and for tests that look for leaks). */
export function secretsOfTarget(target: IscsiVolumeTarget): string[] {
  return secretsOfChap(target);
}
