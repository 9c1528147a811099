import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { discoveryLoginPdu, pingPortal } from './portal-ping.js';

const INITIATOR = 'iqn.2004-10.com.ubuntu:01:aa';
const servers: Server[] = [];
const sockets = new Set<Socket>();

afterEach(async () => {
  for (const socket of sockets) socket.destroy();
  sockets.clear();
  await Promise.all(servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))));
});

/** A listener on 127.0.0.1 that does `onPdu` with the first bytes a client sends; its portal. */
async function listen(onPdu: (socket: Socket, pdu: Buffer) => void): Promise<string> {
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.once('data', (pdu) => onPdu(socket, pdu));
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (typeof address !== 'object' || address === null) throw new Error('no address');
  return `127.0.0.1:${address.port}`;
}

describe('discoveryLoginPdu', () => {
  it('is an immediate Login Request from security to operational negotiation, its text padded to 4 bytes', () => {
    const pdu = discoveryLoginPdu(INITIATOR);
    const text = `InitiatorName=${INITIATOR}\0SessionType=Discovery\0AuthMethod=None\0`;
    expect(pdu[0]).toBe(0x43);
    expect(pdu[1]).toBe(0x81);
    expect(pdu.readUIntBE(5, 3)).toBe(text.length);
    expect(pdu[8]).toBe(0x80);
    expect(pdu.readUInt16BE(14)).toBe(0); // TSIH: a new session
    expect(pdu.length % 4).toBe(0);
    expect(pdu.length).toBe(48 + Math.ceil(text.length / 4) * 4);
    expect(pdu.subarray(48, 48 + text.length).toString()).toBe(text);
  });
});

describe('pingPortal', () => {
  it('answered: a Login Response comes back (a refusal is an answer too)', async () => {
    const portal = await listen((socket, pdu) => {
      expect(pdu[0]! & 0x3f).toBe(0x03);
      const reply = Buffer.alloc(48);
      reply[0] = 0x23;
      reply[36] = 0x02; // status class 2: initiator error (CHAP wanted)
      socket.end(reply);
    });
    expect(await pingPortal(portal, INITIATOR, 2_000)).toBe(true);
  });

  it('not answered: a listener that takes the connection and says nothing, past the deadline', async () => {
    const portal = await listen(() => undefined);
    const started = Date.now();
    expect(await pingPortal(portal, INITIATOR, 300)).toBe(false);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it('not answered: a connection closed without a reply, and a reply that is not a Login Response', async () => {
    expect(await pingPortal(await listen((socket) => socket.end()), INITIATOR, 2_000)).toBe(false);
    expect(await pingPortal(await listen((socket) => socket.end(Buffer.alloc(48, 0x3f))), INITIATOR, 2_000)).toBe(false);
  });

  it('not answered: nothing listens', async () => {
    const portal = await listen(() => undefined);
    await Promise.all(servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))));
    for (const socket of sockets) socket.destroy();
    expect(await pingPortal(portal, INITIATOR, 2_000)).toBe(false);
  });
});

describe('pingPortal with a portal it cannot parse', () => {
  it('is not answered (and does not throw)', async () => {
    expect(await pingPortal('[fe80::1', INITIATOR, 500)).toBe(false);
  });
});
