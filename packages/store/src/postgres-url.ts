import { BerthError } from '@berth/core';
import { z } from '@berth/core/zod';

/** A PostgreSQL connection URL: `postgres://` or `postgresql://`, with a host or a socket directory. */
export const zPostgresUrl = z.string().refine((value) => parsePostgresUrl(value) !== undefined, {
  message: 'must be a postgres://user[:password]@host[:port]/database URL',
});

function parsePostgresUrl(value: string): URL | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') return undefined;
  // A socket directory may be given as ?host=/run/postgresql with an empty authority.
  if (url.hostname === '' && url.searchParams.get('host') === null) return undefined;
  // Its parts are %-decoded by the driver: a malformed escape (`%zz` in a password) is not a URL.
  try {
    for (const part of [url.username, url.password, url.pathname]) decodeURIComponent(part);
  } catch {
    return undefined;
  }
  return url;
}

/** Whether `value` looks like a PostgreSQL URL (what `--store` and BERTH_STORE_URL take). */
export function isPostgresUrl(value: string): boolean {
  return /^postgres(ql)?:\/\//i.test(value);
}

/**
 * The URL with its password replaced by `***` (and any `password` query parameter): the only form
 * of a store URL that may appear in a message, a log line or an error.
 */
export function redactPostgresUrl(value: string): string {
  const url = parsePostgresUrl(value);
  if (url === undefined) {
    // Not parseable: keep only the scheme, since we cannot tell where a password would be.
    const scheme = /^([a-z]+:)/i.exec(value)?.[1] ?? '';
    return `${scheme}//…`;
  }
  if (url.password !== '') url.password = '***';
  for (const key of [...url.searchParams.keys()]) {
    if (/pass/i.test(key)) url.searchParams.set(key, '***');
  }
  return url.toString();
}

/** The URL's password (decoded), for redacting driver messages that might echo it. */
export function postgresUrlPassword(value: string): string | undefined {
  const url = parsePostgresUrl(value);
  if (url === undefined || url.password === '') return undefined;
  return decodeURIComponent(url.password);
}

/** Parse a store URL at the boundary: CONFIG (with the URL redacted) when it is not one. */
export function parseStoreUrl(value: string): string {
  if (parsePostgresUrl(value) !== undefined) return value;
  throw new BerthError('CONFIG', `the store URL ${redactPostgresUrl(value)} is not a PostgreSQL URL`, {
    hint: 'use postgres://user[:password]@host[:port]/database, with any "%" in the user or password written %25 (or set BERTH_STORE_URL); leave it out for the embedded SQLite store',
  });
}
