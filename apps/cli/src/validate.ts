import { BerthError, MAX_VOLUME_BYTES, zId, zName } from '@berth/core';
import { formatSize, parseSize } from '@berth/runtime/size';

/** A volume size from a flag (`1GiB`, `512MiB`, `4096`), checked against what a volume may be. */
export function volumeSize(text: string, flag = '--size'): number {
  const trimmed = text.trim();
  if (trimmed.startsWith('-')) {
    throw new BerthError('VALIDATION', `${flag} ${text}: a size must be positive`, {
      hint: 'give a size such as 1GiB or 512MiB',
    });
  }
  const bytes = parseSize(trimmed);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new BerthError('VALIDATION', `${flag} ${text}: a size must be a positive whole number of bytes`, {
      hint: 'give a size such as 1GiB or 512MiB',
    });
  }
  if (bytes > MAX_VOLUME_BYTES) {
    throw new BerthError('VALIDATION', `${flag} ${text} is larger than the ${formatSize(MAX_VOLUME_BYTES)} a volume may have`, {
      hint: 'check the unit: sizes are bytes unless they end in KiB, MiB, GiB, TiB (or K, M, G, T)',
    });
  }
  if (bytes % 512 !== 0) {
    throw new BerthError('VALIDATION', `${flag} ${text} is ${bytes} bytes: a volume size must be a multiple of 512 bytes`, {
      hint: 'use binary units such as 512MiB or 1GiB',
    });
  }
  return bytes;
}

/** A name for a new volume or server: letters, digits, `.`, `_`, `-`; never a path. */
export function resourceName(text: string, what: 'volume' | 'server'): string {
  const result = zName.safeParse(text);
  if (result.success) return result.data;
  const reason = result.error.issues.map((issue) => issue.message).join('; ');
  throw new BerthError('VALIDATION', `invalid ${what} name "${text}": ${reason}`, {
    hint: `choose a name like ${what === 'volume' ? 'data1' : 'web-1'}`,
  });
}

/** A reference to an existing volume or server: its id or its name. */
export function resourceRef(text: string, what: 'volume' | 'server'): string {
  if (zId.safeParse(text).success || zName.safeParse(text).success) return text;
  throw new BerthError('VALIDATION', `"${text}" is neither a ${what} name nor a ${what} id`, {
    hint: `list them with \`berth ${what} list\``,
  });
}

/** An attachment or operation id (a UUID). */
export function resourceId(text: string, what: 'attachment' | 'operation'): string {
  if (zId.safeParse(text).success) return text;
  throw new BerthError('VALIDATION', `"${text}" is not an ${what} id`, {
    hint: `list them with \`berth ${what} list\``,
  });
}

/** A host name (as `hostname` prints it): letters, digits, `.`, `_`, `-`. */
export function hostName(text: string): string {
  const name = text.trim();
  if (/^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/.test(name)) return name;
  throw new BerthError('VALIDATION', `invalid host name "${text}"`, {
    hint: 'give the host name as `hostname` prints it, or leave --host out for this host',
  });
}
