// The many-hosts harness itself (support/netns.ts): two namespaces reach a listener on the bridge
// address, each from its own address, and not one on this namespace's 127.0.0.1 (where the suites'
// PostgreSQL listens); clean-up leaves no namespace, veth or bridge behind.
import { once } from 'node:events';
import net from 'node:net';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTestHosts, sweepOrphanedTestHosts, type TestHosts } from '../support/netns.js';

const isRoot = process.getuid?.() === 0;

/** Connect to host:port from inside the namespace and send `hello`; prints `ok` or the error code. */
const CLIENT = `
const socket = require('node:net').connect({ host: process.argv[1], port: Number(process.argv[2]) });
socket.on('connect', () => socket.end(process.argv[3], () => console.log('ok')));
socket.on('error', (error) => console.log(error.code));
`;

async function listen(host: string): Promise<{ server: net.Server; port: number; seen: Array<{ from: string; text: string }> }> {
  const seen: Array<{ from: string; text: string }> = [];
  const server = net.createServer((socket) => {
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => seen.push({ from: socket.remoteAddress ?? '', text: Buffer.concat(chunks).toString('utf8') }));
  });
  server.listen(0, host);
  await once(server, 'listening');
  return { server, port: (server.address() as net.AddressInfo).port, seen };
}

describe.skipIf(!isRoot)('test hosts: network namespaces on one bridge', () => {
  let made: TestHosts | undefined;

  beforeAll(async () => {
    await sweepOrphanedTestHosts();
  });

  afterAll(async () => {
    await made?.cleanup();
  });

  it('two namespaces reach a listener on the bridge address from their own addresses, not 127.0.0.1', async () => {
    made = await makeTestHosts(2);
    const hosts = made;
    const bridged = await listen(hosts.gateway);
    const local = await listen('127.0.0.1');
    try {
      const answers = await Promise.all(
        hosts.hosts.map((host) => hosts.spawnIn(host, process.execPath, ['-e', CLIENT, hosts.gateway, String(bridged.port), host.name], { timeout: 30_000 })),
      );
      expect(answers.map((a) => String(a.stdout).trim())).toEqual(['ok', 'ok']);
      await expect.poll(() => bridged.seen.length).toBe(2);
      expect(bridged.seen.map((s) => [s.text, s.from]).sort()).toEqual(hosts.hosts.map((h) => [h.name, h.address]));

      // Inside, 127.0.0.1 is the namespace's own loopback: nothing listens there.
      const [first] = hosts.hosts;
      const refused = await hosts.spawnIn(first!, process.execPath, ['-e', CLIENT, '127.0.0.1', String(local.port), 'x'], { timeout: 30_000 });
      expect(String(refused.stdout).trim()).toBe('ECONNREFUSED');
      expect(local.seen).toEqual([]);
    } finally {
      bridged.server.close();
      local.server.close();
    }

    await hosts.cleanup();
    const namespaces = (await execa('ip', ['netns', 'list'])).stdout;
    for (const host of hosts.hosts) expect(namespaces).not.toContain(host.netns);
    const links = (await execa('ip', ['-o', 'link'])).stdout;
    expect(links).not.toContain(hosts.run);
  });
});
