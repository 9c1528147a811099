import { createServer, type Server } from 'node:net';
import { describe, expect, it } from 'vitest';
import { acceptsConnection, ephemeralRangeStart, freeTcpPort } from './free-port.js';

function listen(port: number, address: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(port, address, () => resolve(server));
  });
}

describe('freeTcpPort', () => {
  it('returns a port that can be bound on every address given', async () => {
    const port = await freeTcpPort(['127.0.0.1', '127.0.0.2']);
    const servers = [await listen(port, '127.0.0.1'), await listen(port, '127.0.0.2')];
    expect(await acceptsConnection('127.0.0.2', port)).toBe(true);
    for (const server of servers) await new Promise((resolve) => server.close(resolve));
    expect(await acceptsConnection('127.0.0.2', port)).toBe(false);
  });

  it('picks a port below the ephemeral range, which no outgoing connection takes when its listener stops', async () => {
    const below = ephemeralRangeStart();
    for (let i = 0; i < 20; i += 1) {
      const port = await freeTcpPort();
      expect(port).toBeGreaterThanOrEqual(10_000);
      expect(port).toBeLessThan(below);
    }
  });

  it('gives up with an error naming the addresses when no port is free on all of them', async () => {
    // No tries left stands for "every port tried was taken somewhere" (that cannot be staged for real).
    await expect(freeTcpPort(['127.0.0.1', '127.0.0.3'], 0)).rejects.toThrow('127.0.0.1, 127.0.0.3');
  });
});
