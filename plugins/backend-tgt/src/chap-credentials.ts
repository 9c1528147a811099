import { randomBytes } from 'node:crypto';

/** A CHAP user name and secret. */
export interface ChapCredentials {
  username: string;
  password: string;
}

/** Length of a generated CHAP secret. */
export const CHAP_PASSWORD_LENGTH = 24;

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
// The largest multiple of 62 below 256: bytes above it are dropped so every character is equally likely.
const UNBIASED_LIMIT = 256 - (256 % ALPHABET.length);

/**
 * A random secret of letters and digits only. Letters and digits survive every place a secret
 * travels: tgtadm's comma-separated request, a libiscsi URL (`user%secret@`), iscsiadm records.
 * The first character is a letter so no initiator reads it as a `0x…` hex secret (RFC 3720).
 */
export function randomSecret(length: number = CHAP_PASSWORD_LENGTH): string {
  let out = '';
  while (out.length < length) {
    for (const byte of randomBytes(length * 2)) {
      if (byte >= UNBIASED_LIMIT) continue;
      const char = ALPHABET[byte % ALPHABET.length] ?? '';
      if (out.length === 0 && !/[A-Za-z]/.test(char)) continue;
      out += char;
      if (out.length === length) break;
    }
  }
  return out;
}

/** Fresh credentials: a random user name with `prefix` (tgtd's account names are global) and secret. */
export function newChapCredentials(prefix: string): ChapCredentials {
  return { username: `${prefix}${randomBytes(6).toString('hex')}`, password: randomSecret() };
}
