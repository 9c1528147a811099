import { BerthError } from './errors.js';
import type { Device, DeviceIdentity } from './connection.js';
import type { StorageGone } from './contracts/transport-driver.js';

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

/**
 * `details.reason` of the CONFLICT a transport throws when it will not disconnect (without
 * `force`) a device whose storage went away behind berth's back (`ConnectedDevice.storageGone`).
 */
export const STORAGE_GONE = 'storage-gone';

/** What happened to `storage` (a file, for the loop transport), in words. */
export function storageGoneText(storage: string, how: StorageGone): string {
  return how === 'deleted'
    ? `its backing file ${storage} was deleted behind berth's back`
    : `its backing file ${storage} was replaced behind berth's back (the path names another file now)`;
}

/**
 * What to do about a device whose storage is gone: the data written since lives only in the
 * device, so it is copied off before a forced detach lets go of it. `volume`: its name, when known.
 */
export function storageGoneHint(device: string, volume = '<volume>'): string {
  return `what was written since the file went lives only in ${device}: copy it off first (dd if=${device} of=<somewhere> bs=1M), then \`berth detach ${volume} --force\`; it stays attached meanwhile`;
}

/** The CONFLICT (untouched) a transport throws instead of disconnecting, without `force`, a device whose storage is gone. */
export function storageGoneError(device: string, storage: string, how: StorageGone): BerthError {
  return new BerthError('CONFLICT', `${device} holds the only copy of its volume's data: ${storageGoneText(storage, how)}; not detaching it`, {
    hint: storageGoneHint(device),
    details: { reason: STORAGE_GONE, device, storage, storageGone: how, untouched: true },
  });
}
