import { readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';

/** The lowest port `freeTcpPort` picks: above the well-known and most registered services' ports. */
const LOWEST_PORT = 10_000;

/**
 * A TCP port nothing listens on right now at any of `addresses`, taken at random *below the
 * kernel's ephemeral range* (`net.ipv4.ip_local_port_range`, 32768–60999 by default) when there is
 * room there, else one the kernel picks: each other address must let it be bound too (or, for an
 * address this machine cannot bind, must refuse a connection on it). Free a moment ago, not
 * reserved: the caller binds it soon, and a collision shows as the caller's own EADDRINUSE.
 *
 * Why not the kernel's pick (port 0): that is an ephemeral port, which any outgoing connection on
 * the machine may take as its local port the moment the listener lets it go. A daemon stopped and
 * started again on its port (tgtd after a restart, PostgreSQL) then found it taken: seen in CI,
 * where tgtd "could not listen on 127.0.0.1:43073" after a test stopped it, while other suites'
 * clients were connecting. Outgoing connections never take a port below the range.
 */
export async function freeTcpPort(addresses: readonly string[] = ['127.0.0.1'], attempts = 50): Promise<number> {
  const [first = '127.0.0.1', ...others] = addresses;
  const below = ephemeralRangeStart();
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    const wanted = below > LOWEST_PORT + 1_000 ? LOWEST_PORT + Math.floor(Math.random() * (below - LOWEST_PORT)) : 0;
    let port: number;
    try {
      port = await bindOnce(first, wanted);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE' || (error as NodeJS.ErrnoException).code === 'EACCES') continue;
      throw error;
    }
    const free = await Promise.all(others.map((address) => isFreeAt(address, port)));
    if (free.every(Boolean)) return port;
  }
  throw new Error(`no TCP port is free on all of ${addresses.join(', ')} after ${attempts} tries`);
}

/** The first port of the kernel's ephemeral range (32768, Linux's default, when it cannot be read). */
export function ephemeralRangeStart(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 0 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

async function isFreeAt(address: string, port: number): Promise<boolean> {
  try {
    return (await bindOnce(address, port)) === port;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') return false;
    return !(await acceptsConnection(address, port));
  }
}

function bindOnce(address: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(port, address, () => {
      const bound = server.address();
      server.close(() => (typeof bound === 'object' && bound !== null ? resolve(bound.port) : reject(new Error(`no port bound on ${address}`))));
    });
  });
}

/** Whether something accepts a TCP connection at `address:port`. */
export function acceptsConnection(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: address, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
