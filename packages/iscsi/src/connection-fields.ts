import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import type { LunAddressing } from './by-path.js';
import { zIscsiName, zRecordValue } from './target.js';

// Every message is written here so that zod never echoes a value back (a password may be one).
/** A zod error message that says "is missing" for an absent key and "must be …" otherwise. */
export const missingOr = (what: string) => (issue: { input?: unknown }): string =>
  issue.input === undefined ? 'is missing' : `must be ${what}`;

/** A connection_info text (a portal): not empty, at most 300 characters. */
export const zConnectionText = lazySchema(() => z.string({ error: missingOr('a string') }).min(1, 'is empty').max(300, 'is too long'));

/** A connection_info secret or user name: not empty, and a value iscsiadm can write into a record. */
export const zConnectionSecret = lazySchema(() => z.string({ error: missingOr('a string') }).min(1, 'is empty').pipe(zRecordValue.unwrap().max(1024, 'is too long')));

/** A connection_info IQN. */
export const zConnectionIqn = lazySchema(() => z.string({ error: missingOr('a string') }).pipe(zIscsiName));

/**
 * The connection_info keys that name an iSCSI volume (the transports' `sourceKeys`): the target
 * and the LUN. A portal is not one of them: one LUN is reachable through several.
 */
export const ISCSI_SOURCE_KEYS: readonly string[] = ['target_iqn', 'target_lun'];

/** A connection_info LUN number (`target_lun`, an entry of `target_luns`). */
export const zConnectionLun = lazySchema(() => z
  .number({ error: missingOr('a whole number') })
  .int('must be a whole number')
  .nonnegative('must not be negative')
  .max(0xffff_ffff, 'is out of range'));

/** `auth_method` / `discovery_auth_method`: CHAP or None, any case. */
export const zAuthMethod = lazySchema(() => z
  .string({ error: missingOr('a string') })
  .transform((s) => s.trim().toUpperCase())
  .pipe(z.enum(['CHAP', 'NONE'], { error: () => 'must be CHAP or None' })));

/** os-brick's `addressing_mode`: how the target numbers LUNs, which decides the kernel's LUN. */
export const zAddressingMode = z.enum(['transparent', 'SAM', 'SAM2', 'SAM3-flat'], { error: () => 'must be transparent, SAM, SAM2 or SAM3-flat' });

/** The CHAP keys of an `iscsi` connection_info (Cinder's names), for a login and for SendTargets. */
export const zChapConnectionKeys = lazySchema(() => z.object({
  auth_method: zAuthMethod.optional(),
  auth_username: zConnectionSecret.optional(),
  auth_password: zConnectionSecret.optional(),
  auth_username_in: zConnectionSecret.optional(),
  auth_password_in: zConnectionSecret.optional(),
  discovery_auth_method: zAuthMethod.optional(),
  discovery_auth_username: zConnectionSecret.optional(),
  discovery_auth_password: zConnectionSecret.optional(),
  discovery_auth_username_in: zConnectionSecret.optional(),
  discovery_auth_password_in: zConnectionSecret.optional(),
}));

/** The LUN addressing an `addressing_mode` stands for (`transparent` and none are plain SAM). */
export function addressingOf(mode: z.output<typeof zAddressingMode> | undefined): LunAddressing {
  return mode === undefined || mode === 'transparent' ? 'SAM' : mode;
}

