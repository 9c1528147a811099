import { connect } from 'node:net';
import { randomBytes } from 'node:crypto';
import { parsePortal } from './portal.js';

/** The Basic Header Segment of every iSCSI PDU (RFC 7143 §11.2.1). */
const BHS_BYTES = 48;
const OP_LOGIN_REQUEST = 0x03;
const OP_LOGIN_RESPONSE = 0x23;
/** I (immediate) bit of byte 0. */
const IMMEDIATE = 0x40;
/** Byte 1 of the login request: T (transit) set, CSG 0 (security negotiation), NSG 1 (operational). */
const TRANSIT_SECURITY_TO_OPERATIONAL = 0x80 | (0 << 2) | 1;

/**
 * A discovery Login Request PDU (RFC 7143 §11.12) naming `initiator`, without authentication.
 * Whatever the target answers — accepted, or refused for want of CHAP — it answers with a Login
 * Response: that answer is what the ping waits for.
 */
export function discoveryLoginPdu(initiator: string): Buffer {
  const text = Buffer.from(`InitiatorName=${initiator}\0SessionType=Discovery\0AuthMethod=None\0`, 'utf8');
  const padded = Math.ceil(text.length / 4) * 4;
  const pdu = Buffer.alloc(BHS_BYTES + padded);
  pdu[0] = IMMEDIATE | OP_LOGIN_REQUEST;
  pdu[1] = TRANSIT_SECURITY_TO_OPERATIONAL;
  // Version-max and version-min 0, no AHS; DataSegmentLength (3 bytes, unpadded).
  pdu.writeUIntBE(text.length, 5, 3);
  // ISID: type 0x80 (random), then 5 random bytes; TSIH 0 (a new session).
  pdu[8] = 0x80;
  randomBytes(5).copy(pdu, 9);
  pdu.writeUInt32BE(1, 16); // ITT
  pdu.writeUInt32BE(1, 24); // CmdSN
  text.copy(pdu, BHS_BYTES);
  return pdu;
}

/**
 * Whether the iSCSI target at `portal` (`host:port`, `[v6]:port`) answers a login within
 * `timeoutMs`: a stand-in for the kernel's NOP-Out. The kernel pings a session's connection every
 * `noop_out_interval` and fails the connection when no NOP-In comes back within
 * `noop_out_timeout`; a session held by another program (qemu-storage-daemon, the simulated
 * host's) has no connection of its own to ping, so a fresh discovery login stands in for it. A TCP
 * connect alone would not do: a stopped tgtd still completes handshakes (the kernel queues them),
 * and only a PDU shows the target is there to answer. An unparsable portal is not answered.
 */
export function pingPortal(portal: string, initiator: string, timeoutMs: number): Promise<boolean> {
  let address: { host: string; port: number };
  try {
    address = parsePortal(portal);
  } catch {
    return Promise.resolve(false);
  }
  return new Promise((resolve) => {
    let received = Buffer.alloc(0);
    const socket = connect({ host: address.host, port: address.port });
    const end = (answered: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answered);
    };
    const timer = setTimeout(() => end(false), timeoutMs);
    // A ping in flight does not keep the process alive.
    timer.unref();
    socket.unref();
    socket.once('connect', () => socket.write(discoveryLoginPdu(initiator)));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= 1) end((received[0]! & 0x3f) === OP_LOGIN_RESPONSE);
    });
    socket.once('error', () => end(false));
    socket.once('close', () => end(false));
  });
}
