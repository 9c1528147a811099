import { BerthError } from '@berth/core';
import type { HostFs } from '@berth/host';

/** A sysfs attribute's value without its final newline; `undefined` when the file is gone. */
export async function readAttribute(fs: HostFs, hostPath: string): Promise<string | undefined> {
  const text = await fs.readFileIfExists(hostPath);
  if (text === undefined) return undefined;
  return text.endsWith('\n') ? text.slice(0, -1) : text;
}

/** A sysfs attribute trimmed of surrounding whitespace; `undefined` when gone or empty. */
export async function readTrimmed(fs: HostFs, hostPath: string): Promise<string | undefined> {
  const value = (await readAttribute(fs, hostPath))?.trim();
  return value === '' ? undefined : value;
}

/** A sysfs attribute as an integer; `undefined` when gone or not a number. */
export async function readInteger(fs: HostFs, hostPath: string): Promise<number | undefined> {
  const value = await readTrimmed(fs, hostPath);
  return value !== undefined && /^-?\d+$/.test(value) ? Number(value) : undefined;
}

/** `realpath`, or `undefined` when something on the way is gone (a device removed meanwhile). */
export async function realpathIfExists(fs: HostFs, hostPath: string): Promise<string | undefined> {
  try {
    return await fs.realpath(hostPath);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw error;
  }
}

/**
 * The kernel name of a block device given as `sdb`, `dm-0` or `/dev/sdb`. Names are put into
 * sysfs paths, so anything that is not a plain name (`..`, `/`) is refused.
 */
export function blockName(nameOrPath: string): string {
  const name = nameOrPath.startsWith('/dev/') ? nameOrPath.slice('/dev/'.length) : nameOrPath;
  if (!/^[A-Za-z0-9][A-Za-z0-9_:.+-]*$/.test(name) || name.includes('..')) {
    throw new BerthError('VALIDATION', `not a block device name: ${JSON.stringify(nameOrPath)}`);
  }
  return name;
}

/** A non-negative integer for a sysfs path component (host, session, LUN numbers). */
export function checkIndex(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new BerthError('VALIDATION', `invalid ${what}: ${String(value)} is not a non-negative integer`);
  }
  return value;
}
