/** A portal as open-iscsi keeps it: the address text without brackets, and a port. */
export interface PortalAddress {
  /** Address text as given, IPv6 without brackets (`127.0.0.1`, `fe80::1`). */
  address: string;
  port: number;
}

/** The iSCSI port when a portal names none. */
export const ISCSI_DEFAULT_PORT = 3260;

/**
 * Parse iscsiadm's `-p` value (`ADDR[:PORT][,TPGT]`, `[V6][:PORT][,TPGT]`) the way
 * open-iscsi's `str_to_ipport` does; port -1 and tpgt -1 when absent.
 */
export function parsePortalArg(text: string): { address: string; port: number; tpgt: number } {
  let rest = text;
  let tpgt = -1;
  const comma = rest.lastIndexOf(',');
  if (comma >= 0) {
    const tag = rest.slice(comma + 1);
    rest = rest.slice(0, comma);
    tpgt = /^-?\d+$/.test(tag) ? Number(tag) : -1;
  }
  let address = rest;
  let port = -1;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    address = close > 0 ? rest.slice(1, close) : rest.slice(1);
    const after = close > 0 ? rest.slice(close + 1) : '';
    if (after.startsWith(':') && /^\d+$/.test(after.slice(1))) port = Number(after.slice(1));
  } else {
    const colons = (rest.match(/:/g) ?? []).length;
    // One colon is ADDR:PORT; more is a bare IPv6 address without a port.
    if (colons === 1) {
      const at = rest.indexOf(':');
      address = rest.slice(0, at);
      const p = rest.slice(at + 1);
      port = /^\d+$/.test(p) ? Number(p) : -1;
    }
  }
  return { address, port, tpgt };
}

/** `host:port` with IPv6 in brackets, parsed into address and port (default 3260). */
export function parsePortal(text: string): PortalAddress {
  const parsed = parsePortalArg(text);
  return { address: parsed.address, port: parsed.port < 0 ? ISCSI_DEFAULT_PORT : parsed.port };
}

/** Whether open-iscsi brackets this address when it prints `ADDR:PORT` (no `.` in it). */
export function isBracketed(address: string): boolean {
  return !address.includes('.');
}

/** `ADDR:PORT` as iscsiadm prints portals in listings (`[v6]:port`). */
export function formatPortal(address: string, port: number): string {
  return isBracketed(address) ? `[${address}]:${port}` : `${address}:${port}`;
}

/** `host:port` as `TargetAccess` takes it (IPv6 in brackets). */
export function portalKey(p: PortalAddress): string {
  return p.address.includes(':') ? `[${p.address}]:${p.port}` : `${p.address}:${p.port}`;
}

/** Whether two portals are the same address and port (case and brackets ignored). */
export function samePortal(a: PortalAddress, b: PortalAddress): boolean {
  return a.port === b.port && normalizeAddress(a.address) === normalizeAddress(b.address);
}

function normalizeAddress(address: string): string {
  return address.replace(/^\[(.*)\]$/, '$1').toLowerCase();
}

/** The peer address as the kernel prints it in `address`: IPv6 as 8 full 4-digit groups. */
export function kernelPeerAddress(address: string): string {
  if (!address.includes(':')) return address;
  const [head = '', tail] = address.split('%')[0]!.split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const fill = tail === undefined ? [] : new Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0');
  return [...left, ...fill, ...right].map((g) => g.padStart(4, '0').toLowerCase()).join(':');
}
