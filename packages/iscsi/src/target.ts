import { z } from '@berth/core/zod';
import { lazySchema, parseWith } from '@berth/core';
import { formatPortal, parsePortal, type Portal } from './portal.js';

/** An iSCSI name: `iqn.…`, `eui.…` or `naa.…`, at most 223 bytes (RFC 3720), no whitespace. */
export const zIscsiName = lazySchema(() => z
  .string()
  .max(223)
  .regex(/^(iqn|eui|naa)\.[^\s\x00-\x1f\x7f]+$/i, 'not an iSCSI name (iqn.…, eui.… or naa.…)'));

/** A portal given as text (`host:port`, `[v6]:port`) or as a parsed `Portal`. */
export const zPortalInput = lazySchema(() => z.union([
  z.string().min(1).max(300),
  z.object({ host: z.string().min(1).max(255), port: z.number().int().min(1).max(65535) }),
]));

/** The node a command is about: a target name at a portal. */
export const zIscsiTarget = lazySchema(() => z.object({ iqn: zIscsiName, portal: zPortalInput }));

/** What callers pass to name a node. */
export type IscsiTargetInput = z.input<typeof zIscsiTarget>;

/** A node with its portal parsed. */
export interface IscsiTarget {
  iqn: string;
  portal: Portal;
}

/** A record key such as `node.session.auth.username` or `node.conn[0].startup`. */
export const zRecordKey = lazySchema(() => z.string().regex(/^[A-Za-z][A-Za-z0-9_.[\]]*$/, 'not an iscsiadm record key').max(200));

/**
 * A record value. Control characters are refused: iscsiadm writes `key = value` lines, so a newline
 * in a value would write a second key into the record.
 */
export const zRecordValue = lazySchema(() => z.string().max(1024).regex(/^[^\x00-\x1f\x7f]*$/, 'holds a control character'));

/** An iface name (`default`, `iser`, or a file under /etc/iscsi/ifaces). */
export const zIfaceName = lazySchema(() => z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.:-]*$/, 'not an iface name').max(64));

/** Validate a node and parse its portal (throws a VALIDATION BerthError). */
export function toTarget(input: IscsiTargetInput): IscsiTarget {
  const parsed = parseWith(zIscsiTarget, input, 'iSCSI target');
  return { iqn: parsed.iqn, portal: toPortal(parsed.portal) };
}

/** Validate a portal given as text or as a `Portal` (throws a VALIDATION BerthError). */
export function toPortal(input: string | Portal): Portal {
  const parsed = parseWith(zPortalInput, input, 'iSCSI portal');
  // A structured portal is still checked by the text parser, so both forms accept the same set.
  const { host, port } = parsePortal(typeof parsed === 'string' ? parsed : formatPortal(parsed));
  return { host, port };
}
