import { BerthError } from './errors.js';
import type { Device, DeviceIdentity } from './connection.js';

/** `details.reason` of the CONFLICT a transport throws when the path now names another device. */
export const IDENTITY_MISMATCH = 'identity-mismatch';

/** Whether two identities name the same device instance (every key equal). */
export function sameIdentity(a: DeviceIdentity, b: DeviceIdentity): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const key of keys) if (a[key] !== b[key]) return false;
  return true;
}

/**
 * Whether `a` and `b` are the same device: by identity when both have one, else (records made
 * before transports reported identities) by path.
 */
export function sameDevice(a: Device, b: Device): boolean {
  if (a.identity && b.identity) return sameIdentity(a.identity, b.identity);
  return a.path === b.path;
}

/** Whether `error` is a transport refusing to touch a device because the path now names another one. */
export function isIdentityMismatch(error: unknown): boolean {
  return BerthError.is(error) && error.code === 'CONFLICT' && error.details.reason === IDENTITY_MISMATCH;
}

/** The CONFLICT a transport throws when what is at `device.path` is not the device it connected. */
export function identityMismatch(device: Device, found: DeviceIdentity | undefined, what: string): BerthError {
  return new BerthError('CONFLICT', `${device.path} is no longer the device berth connected for ${what}: it is another device now; not touching it`, {
    hint: 'the device berth made is gone (the kernel reused its name); `berth reconcile` finds what is left',
    details: { reason: IDENTITY_MISMATCH, device: device.path, expected: device.identity ?? null, found: found ?? null, untouched: true },
  });
}
