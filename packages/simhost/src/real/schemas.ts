import { z } from '@berth/core/zod';

// Portals and IQNs end up in libiscsi URLs and QMP arguments: keep them to characters that mean
// nothing in a URL path.
const PORTAL = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/;
const IQN = /^[A-Za-z0-9.:_-]+$/;

/** A portal `host:port` or `[v6]:port`. */
export const zPortal = z.string().regex(PORTAL, 'a portal is host:port or [ipv6]:port');

/** An iSCSI name (target or initiator). */
export const zIscsiName = z.string().min(1).max(223).regex(IQN, 'an iSCSI name holds letters, digits and . : _ -');

/** CHAP settings of a login (target-access.ts `LoginAuth`). */
export const zLoginAuth = z
  .object({
    method: z.literal('CHAP'),
    username: z.string().min(1),
    password: z.string().min(1),
    usernameIn: z.string().min(1).optional(),
    passwordIn: z.string().min(1).optional(),
  })
  .refine((a) => (a.usernameIn === undefined) === (a.passwordIn === undefined), 'mutual CHAP needs both usernameIn and passwordIn');

/** What `RealTargetAccess.login` accepts (the signal is checked apart: zod does not copy it). */
export const zLoginRequest = z.object({
  portal: zPortal,
  iqn: zIscsiName,
  initiator: zIscsiName,
  auth: zLoginAuth.optional(),
});

/** A validated login request. */
export type ValidLoginRequest = z.output<typeof zLoginRequest>;

/** A LUN number tgtd can have. */
export const zLun = z.number().int().min(0).max(16383);
