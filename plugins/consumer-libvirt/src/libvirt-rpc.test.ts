import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtRpcConnection, LibvirtRpcError, Proc } from './libvirt-rpc.js';

const REMOTE = 0x20008086;
const KEEPALIVE = 0x6b656570;

function xdrString(text: string): Buffer {
  const bytes = Buffer.from(text);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(bytes.length);
  return Buffer.concat([head, bytes, Buffer.alloc((4 - (bytes.length % 4)) % 4)]);
}
function u32(...values: number[]): Buffer {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeUInt32BE(v >>> 0, 4 * i));
  return b;
}
function packet(program: number, proc: number, type: number, serial: number, status: number, body: Buffer): Buffer {
  return Buffer.concat([u32(28 + body.length, program, 1, proc, type, serial, status), body]);
}
const domain = (name: string) => Buffer.concat([xdrString(name), Buffer.alloc(16, 7), u32(3)]);

/**
 * A stand-in libvirtd on a unix socket speaking the few procedures the client uses, so framing,
 * XDR, errors, keepalive and reconnection are checked without a daemon (the e2e suite checks the
 * real one).
 */
describe('libvirt RPC client against a stand-in daemon', () => {
  let dir: string;
  let server: Server;
  const sockets: Socket[] = [];
  const pongs: number[] = [];
  let opened = 0;
  let dropNextXml = false;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'berth-libvirt-rpc-'));
    server = createServer((socket) => {
      sockets.push(socket);
      let buffered = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        while (buffered.length >= 4 && buffered.length >= buffered.readUInt32BE(0)) {
          const one = buffered.subarray(0, buffered.readUInt32BE(0));
          buffered = buffered.subarray(one.length);
          const [program, , proc, , serial] = [4, 8, 12, 16, 20].map((o) => one.readUInt32BE(o)) as [number, number, number, number, number];
          const body = one.subarray(28);
          const reply = (payload: Buffer, status = 0) => socket.write(packet(REMOTE, proc, 1, serial, status, payload));
          if (program === KEEPALIVE) {
            pongs.push(proc);
            continue;
          }
          if (proc === Proc.AUTH_LIST) reply(u32(1, 0));
          else if (proc === Proc.CONNECT_OPEN) {
            opened++;
            // A keepalive ping before the reply: the client answers it and carries on.
            socket.write(packet(KEEPALIVE, 1, 2, 0, 0, Buffer.alloc(0)));
            reply(Buffer.alloc(0));
          } else if (proc === Proc.DOMAIN_LOOKUP_BY_NAME) {
            const name = body.subarray(4, 4 + body.readUInt32BE(0)).toString();
            if (name === 'web-1') reply(domain(name));
            else reply(Buffer.concat([u32(42, 10, 1), xdrString(`Domain not found: no domain with matching name '${name}'`), u32(2, 0, 0, 0, 0, 0, 0, 0)]), 1);
          } else if (proc === Proc.DOMAIN_GET_XML_DESC) {
            if (dropNextXml) {
              dropNextXml = false;
              socket.destroy();
            } else reply(xdrString("<domain type='qemu' id='3'><name>web-1</name></domain>"));
          }
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(path.join(dir, 'sock'), resolve));
  });

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });

  it('opens the connection once, answers a keepalive ping, reads replies and errors; a broken connection fails the call and the next call reconnects', async () => {
    const connection = new LibvirtRpcConnection(path.join(dir, 'sock'), 'qemu:///system');
    try {
      expect(await connection.xmlDesc('web-1', 5_000)).toBe("<domain type='qemu' id='3'><name>web-1</name></domain>");
      expect(await connection.lookup('web-1', 5_000)).toEqual({ name: 'web-1', uuid: Buffer.alloc(16, 7), id: 3 });
      expect(opened).toBe(1);
      expect(pongs).toEqual([2]);
      const missing = await connection.lookup('nope', 5_000).catch((e: unknown) => e);
      expect(missing).toBeInstanceOf(LibvirtRpcError);
      expect(missing).toMatchObject({ code: 42, connection: false, message: "Domain not found: no domain with matching name 'nope'" });

      dropNextXml = true;
      const broken = await connection.xmlDesc('web-1', 5_000).catch((e: unknown) => e);
      expect(broken).toMatchObject({ connection: true });
      expect(await connection.xmlDesc('web-1', 5_000)).toContain('web-1');
      expect(opened).toBe(2);
    } finally {
      connection.close();
    }
  });

  it('a socket nobody listens on is a connection error (the caller then runs virsh)', async () => {
    const connection = new LibvirtRpcConnection(path.join(dir, 'none'), 'qemu:///system');
    expect(await connection.lookup('web-1', 5_000).catch((e: unknown) => e)).toMatchObject({ connection: true, code: -1 });
  });
});
