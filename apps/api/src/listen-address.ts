import { BerthError } from '@berth/core';

/** Where to listen. */
export interface ListenAddress {
  host: string;
  port: number;
}

/** Parse `host:port` (`[::1]:8776` for IPv6); port 0 picks a free port. */
export function parseListenAddress(text: string): ListenAddress {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text.trim());
  const host = match?.[1] ?? match?.[2];
  const port = Number(match?.[3]);
  if (host === undefined || !Number.isInteger(port) || port > 65535) {
    throw new BerthError('VALIDATION', `cannot listen on ${JSON.stringify(text)}: expected host:port`, {
      hint: 'for example 127.0.0.1:8776, or [::1]:8776 for IPv6',
    });
  }
  return { host, port };
}
