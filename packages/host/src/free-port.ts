import { connect, createServer } from 'node:net';

/**
 * A TCP port nothing listens on right now at any of `addresses`: the kernel picks one on the
 * first address, and each other address must let it be bound too (or, for an address this
 * machine cannot bind, must refuse a connection on it). Free a moment ago, not reserved: the
 * caller binds it soon, and a collision shows as the caller's own EADDRINUSE.
 */
export async function freeTcpPort(addresses: readonly string[] = ['127.0.0.1'], attempts = 50): Promise<number> {
  const [first = '127.0.0.1', ...others] = addresses;
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    const port = await bindOnce(first, 0);
    const free = await Promise.all(others.map((address) => isFreeAt(address, port)));
    if (free.every(Boolean)) return port;
  }
  throw new Error(`no TCP port is free on all of ${addresses.join(', ')} after ${attempts} tries`);
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
