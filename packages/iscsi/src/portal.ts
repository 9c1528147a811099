import { isIPv4, isIPv6 } from 'node:net';
import { BerthError } from '@berth/core';

/** The iSCSI well-known port, used when a portal names none. */
export const DEFAULT_ISCSI_PORT = 3260;

/** A portal: the address as text (IPv6 without brackets) and the TCP port. */
export interface Portal {
  /** An IPv4 or IPv6 address (no brackets) or a host name. */
  host: string;
  port: number;
}

/** A portal as iscsiadm prints it in lists: with the target portal group tag. */
export interface PortalWithTag extends Portal {
  /** The target portal group tag; -1 when the record has none (`--op new` without one). */
  tpgt: number;
}

function invalid(text: string, why: string): BerthError {
  return new BerthError('VALIDATION', `invalid iSCSI portal ${JSON.stringify(text)}: ${why}`, {
    hint: 'write a portal as host:port, [ipv6]:port, or a bare address for port 3260',
  });
}

function parsePort(text: string, whole: string): number {
  if (!/^\d{1,5}$/.test(text)) throw invalid(whole, `port ${JSON.stringify(text)} is not a number`);
  const port = Number(text);
  if (port < 1 || port > 65535) throw invalid(whole, `port ${port} is out of range`);
  return port;
}

/**
 * Parse `host:port`, `[v6]:port`, `[v6]`, a bare address (port 3260) or any of these followed by
 * `,TPGT`. A bare IPv6 address with no brackets is read as an address without a port, as
 * iscsiadm reads it.
 */
export function parsePortal(text: string): Portal & { tpgt?: number } {
  const whole = text.trim();
  let rest = whole;
  let tpgt: number | undefined;
  const comma = rest.lastIndexOf(',');
  if (comma >= 0 && comma > rest.lastIndexOf(']')) {
    const tag = rest.slice(comma + 1);
    if (!/^-?\d+$/.test(tag)) throw invalid(whole, `portal group tag ${JSON.stringify(tag)} is not a number`);
    // iscsiadm prints an unset tag (-1) as the unsigned 4294967295 in `-m node`.
    tpgt = Number(tag) === 4294967295 ? -1 : Number(tag);
    rest = rest.slice(0, comma);
  }
  let host: string;
  let port = DEFAULT_ISCSI_PORT;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0) throw invalid(whole, 'the IPv6 address has no closing bracket');
    host = rest.slice(1, close);
    const after = rest.slice(close + 1);
    if (after !== '') {
      if (!after.startsWith(':')) throw invalid(whole, `unexpected ${JSON.stringify(after)} after the address`);
      port = parsePort(after.slice(1), whole);
    }
  } else if ((rest.match(/:/g) ?? []).length > 1) {
    host = rest;
  } else {
    const colon = rest.indexOf(':');
    host = colon < 0 ? rest : rest.slice(0, colon);
    if (colon >= 0) port = parsePort(rest.slice(colon + 1), whole);
  }
  if (host === '') throw invalid(whole, 'the address is empty');
  if (/[\s/,[\]]/.test(host)) throw invalid(whole, 'the address holds a character no address has');
  if (host.includes(':') && !isIPv6(host.split('%')[0] ?? '')) throw invalid(whole, 'not an IPv6 address');
  return tpgt === undefined ? { host, port } : { host, port, tpgt };
}

/** The portal as iscsiadm takes it after `-p`: `host:port`, with IPv6 in brackets. */
export function formatPortal(portal: Portal): string {
  return portal.host.includes(':') ? `[${portal.host}]:${portal.port}` : `${portal.host}:${portal.port}`;
}

/**
 * The host in one spelling per address: lower case, IPv6 compressed (`fe80:0::1` → `fe80::1`), an
 * IPv4-mapped IPv6 address as its IPv4 address, the zone kept.
 */
export function canonicalHost(host: string): string {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  const [address = '', ...zone] = bare.split('%');
  if (!isIPv6(address)) return bare.toLowerCase();
  // The WHATWG URL parser is a complete RFC 5952 serialiser, which saves writing one.
  let canonical = new URL(`http://[${address}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical);
  if (mapped) {
    const high = parseInt(mapped[1] ?? '0', 16);
    const low = parseInt(mapped[2] ?? '0', 16);
    const v4 = [high >> 8, high & 0xff, low >> 8, low & 0xff].join('.');
    if (isIPv4(v4)) canonical = v4;
  }
  return zone.length > 0 ? `${canonical}%${zone.join('%')}` : canonical;
}

/** Whether two portals are the same address and port, whatever the brackets and spelling. */
export function samePortal(a: Portal, b: Portal): boolean {
  return a.port === b.port && canonicalHost(a.host) === canonicalHost(b.host);
}

/** A key that is equal for two portals exactly when `samePortal` says they are the same. */
export function portalKey(portal: Portal): string {
  return formatPortal({ host: canonicalHost(portal.host), port: portal.port });
}
