import { connect, type Socket } from 'node:net';

/**
 * A small client of libvirtd's own RPC protocol (the "remote" program, XDR over its unix socket):
 * the few calls this consumer makes, on one connection per socket kept open between them, so an
 * attach costs libvirtd's own work and no `virsh` process (30–140 ms each on a loaded host).
 *
 * Wire format (libvirt's `remote_protocol.x` and `virnetprotocol.x`, read to understand, numbers
 * checked against libvirt 9.0 with `LIBVIRT_LOG_FILTERS=1:rpc virsh ...`): each packet is a
 * big-endian u32 length (itself included), a header of six u32 (program, version, procedure,
 * type, serial, status), then the XDR body. A reply with status 1 carries a `remote_error`.
 */

const REMOTE_PROGRAM = 0x20008086;
const REMOTE_VERSION = 1;
const KEEPALIVE_PROGRAM = 0x6b656570;
const KEEPALIVE_PING = 1;
const KEEPALIVE_PONG = 2;

const TYPE_CALL = 0;
const TYPE_REPLY = 1;
const TYPE_MESSAGE = 2;
const STATUS_OK = 0;
const STATUS_ERROR = 1;

/** The procedures used (libvirt 9.0's numbers; the protocol keeps them stable). */
export const Proc = {
  CONNECT_OPEN: 1,
  DOMAIN_GET_XML_DESC: 14,
  DOMAIN_LOOKUP_BY_NAME: 23,
  AUTH_LIST: 66,
  DOMAIN_ATTACH_DEVICE_FLAGS: 160,
  DOMAIN_GET_STATE: 212,
  CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY: 316,
  CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY: 317,
  DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED: 333,
  DOMAIN_DETACH_DEVICE_ALIAS: 392,
} as const;

/** `VIR_DOMAIN_AFFECT_LIVE`. */
export const AFFECT_LIVE = 1;
/** `VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED`. */
const EVENT_ID_DEVICE_REMOVED = 15;
const AUTH_NONE = 0;
const MAX_PACKET = 32 * 1024 * 1024;

/** XDR writer: u32/i32, strings (length, bytes, padding), optional values, fixed opaque. */
class XdrWriter {
  private readonly parts: Buffer[] = [];
  u32(value: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(value >>> 0);
    this.parts.push(b);
    return this;
  }
  i32(value: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32BE(value);
    this.parts.push(b);
    return this;
  }
  string(text: string): this {
    const bytes = Buffer.from(text, 'utf8');
    this.u32(bytes.length);
    this.parts.push(bytes, Buffer.alloc((4 - (bytes.length % 4)) % 4));
    return this;
  }
  opaqueFixed(bytes: Buffer): this {
    this.parts.push(bytes, Buffer.alloc((4 - (bytes.length % 4)) % 4));
    return this;
  }
  domain(dom: RemoteDomain): this {
    return this.string(dom.name).opaqueFixed(dom.uuid).i32(dom.id);
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** XDR reader over one packet's body; throws on a short body (a protocol error). */
class XdrReader {
  private offset = 0;
  constructor(private readonly buf: Buffer) {}
  private need(n: number): void {
    if (this.offset + n > this.buf.length) throw new Error('libvirt RPC: short reply');
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.offset);
    this.offset += 4;
    return v;
  }
  i32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.offset);
    this.offset += 4;
    return v;
  }
  opaqueFixed(n: number): Buffer {
    this.need(n);
    const v = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n + ((4 - (n % 4)) % 4);
    return Buffer.from(v);
  }
  string(): string {
    const length = this.u32();
    this.need(length);
    const text = this.buf.toString('utf8', this.offset, this.offset + length);
    this.offset += length + ((4 - (length % 4)) % 4);
    return text;
  }
  optionalString(): string | undefined {
    return this.u32() === 0 ? undefined : this.string();
  }
  domain(): RemoteDomain {
    return { name: this.string(), uuid: this.opaqueFixed(16), id: this.i32() };
  }
}

/** `remote_nonnull_domain`. */
export interface RemoteDomain {
  name: string;
  uuid: Buffer;
  id: number;
}

/** An error libvirtd answered (its `virErrorNumber` and message), or a broken connection (`code` -1). */
export class LibvirtRpcError extends Error {
  constructor(
    message: string,
    readonly code: number,
    /** True when the connection broke or could not be made (libvirtd down or restarting). */
    readonly connection = false,
  ) {
    super(message);
    this.name = 'LibvirtRpcError';
  }
}

/** A call that got no answer within its time. */
export class LibvirtRpcTimeout extends Error {
  constructor(readonly procedure: number) {
    super(`libvirt RPC procedure ${procedure} got no answer in time`);
    this.name = 'LibvirtRpcTimeout';
  }
}

interface Pending {
  resolve(body: Buffer): void;
  reject(error: Error): void;
}

/** The unix socket of a local `DRIVER:///system` URI, or `undefined` when only virsh can reach it. */
export function systemSocketOf(uri: string): string | undefined {
  return /^[a-z]+:\/\/\/system$/.test(uri) ? '/run/libvirt/libvirt-sock' : undefined;
}

/**
 * One connection to libvirtd, opened on first use (`AUTH_LIST`: NONE must be offered; then
 * `CONNECT_OPEN` of the URI) and again after it breaks (libvirtd restarted). Calls are matched to
 * replies by serial; device-removed events go to their callback. The socket is unref'd: an idle
 * connection never keeps a process alive.
 */
export class LibvirtRpcConnection {
  private socket: Socket | undefined;
  private opening: Promise<Socket> | undefined;
  private serial = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly removedListeners = new Map<number, (alias: string) => void>();

  constructor(
    readonly socketPath: string,
    readonly uri: string,
  ) {}

  /** Close the connection (pending calls fail as a broken connection). */
  close(): void {
    this.socket?.destroy();
    this.socket = undefined;
  }

  /** Call `procedure` with an XDR body; the reply's body, or `LibvirtRpcError` / `LibvirtRpcTimeout`. */
  async call(procedure: number, body: Buffer, timeoutMs: number): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    const socket = await this.open(timeoutMs);
    return this.send(socket, procedure, body, Math.max(1, deadline - Date.now()));
  }

  private send(socket: Socket, procedure: number, body: Buffer, timeoutMs: number): Promise<Buffer> {
    const serial = this.serial++;
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(serial);
        reject(new LibvirtRpcTimeout(procedure));
      }, timeoutMs);
      this.pending.set(serial, {
        resolve: (reply) => {
          clearTimeout(timer);
          resolve(reply);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      socket.write(packet(REMOTE_PROGRAM, procedure, TYPE_CALL, serial, STATUS_OK, body));
    });
  }

  private open(timeoutMs: number): Promise<Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    this.opening ??= this.connectAndOpen(timeoutMs).finally(() => {
      this.opening = undefined;
    });
    return this.opening;
  }

  private async connectAndOpen(timeoutMs: number): Promise<Socket> {
    const deadline = Date.now() + timeoutMs;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(this.socketPath);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new LibvirtRpcTimeout(0));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (error: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new LibvirtRpcError(`cannot connect to ${this.socketPath}: ${error.code ?? error.message}`, -1, true));
      });
    });
    this.attach(socket);
    try {
      const remaining = () => Math.max(1, deadline - Date.now());
      const auth = new XdrReader(await this.send(socket, Proc.AUTH_LIST, Buffer.alloc(0), remaining()));
      const types = Array.from({ length: auth.u32() }, () => auth.i32());
      if (!types.includes(AUTH_NONE)) throw new LibvirtRpcError(`libvirtd wants authentication (${types.join(',')}) on ${this.socketPath}`, -1, true);
      await this.send(socket, Proc.CONNECT_OPEN, new XdrWriter().u32(1).string(this.uri).u32(0).done(), remaining());
    } catch (error) {
      socket.destroy();
      throw error;
    }
    socket.unref();
    this.socket = socket;
    return socket;
  }

  /** Read packets off the socket; a broken socket fails every pending call as a connection error. */
  private attach(socket: Socket): void {
    let buffered: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      while (buffered.length >= 4) {
        const length = buffered.readUInt32BE(0);
        if (length < 28 || length > MAX_PACKET) {
          socket.destroy(new Error(`libvirt RPC: bad packet length ${length}`));
          return;
        }
        if (buffered.length < length) break;
        const one = buffered.subarray(0, length);
        buffered = buffered.subarray(length);
        this.dispatch(socket, one);
      }
    });
    const broken = (why: string) => {
      if (this.socket === socket) this.socket = undefined;
      const error = new LibvirtRpcError(`the connection to libvirtd broke (${why})`, -1, true);
      for (const [serial, call] of this.pending) {
        this.pending.delete(serial);
        call.reject(error);
      }
      // Event callbacks die with their connection: wake their waiters, who look again.
      for (const [id, listener] of this.removedListeners) {
        this.removedListeners.delete(id);
        listener('');
      }
    };
    socket.on('error', (error: NodeJS.ErrnoException) => broken(error.code ?? error.message));
    socket.on('close', () => broken('closed'));
  }

  private dispatch(socket: Socket, one: Buffer): void {
    const program = one.readUInt32BE(4);
    const procedure = one.readInt32BE(12);
    const type = one.readInt32BE(16);
    const serial = one.readUInt32BE(20);
    const status = one.readInt32BE(24);
    const body = one.subarray(28);
    if (program === KEEPALIVE_PROGRAM) {
      if (procedure === KEEPALIVE_PING) socket.write(packet(KEEPALIVE_PROGRAM, KEEPALIVE_PONG, TYPE_MESSAGE, 0, STATUS_OK, Buffer.alloc(0)));
      return;
    }
    if (program !== REMOTE_PROGRAM) return;
    if (type === TYPE_MESSAGE) {
      if (procedure === Proc.DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED) {
        try {
          const reader = new XdrReader(body);
          const callbackId = reader.i32();
          reader.domain();
          this.removedListeners.get(callbackId)?.(reader.string());
        } catch {
          // A malformed event is ignored: the waiter looks again at its deadline.
        }
      }
      return;
    }
    if (type !== TYPE_REPLY) return;
    const call = this.pending.get(serial);
    if (!call) return;
    this.pending.delete(serial);
    if (status === STATUS_ERROR) {
      try {
        const reader = new XdrReader(body);
        const code = reader.i32();
        reader.i32();
        call.reject(new LibvirtRpcError(reader.optionalString() ?? `libvirt error ${code}`, code));
      } catch (error) {
        call.reject(error as Error);
      }
      return;
    }
    call.resolve(Buffer.from(body));
  }

  /** `virDomainLookupByName`. */
  async lookup(name: string, timeoutMs: number): Promise<RemoteDomain> {
    return new XdrReader(await this.call(Proc.DOMAIN_LOOKUP_BY_NAME, new XdrWriter().string(name).done(), timeoutMs)).domain();
  }

  /** `virDomainAttachDeviceFlags(dom, xml, flags)`. */
  async attachDevice(name: string, xml: string, flags: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const dom = await this.lookup(name, timeoutMs);
    await this.call(Proc.DOMAIN_ATTACH_DEVICE_FLAGS, new XdrWriter().domain(dom).string(xml).u32(flags).done(), Math.max(1, deadline - Date.now()));
  }

  /** `virDomainDetachDeviceAlias(dom, alias, flags)` (asynchronous: returns once the guest was asked). */
  async detachDeviceAlias(name: string, alias: string, flags: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const dom = await this.lookup(name, timeoutMs);
    await this.call(Proc.DOMAIN_DETACH_DEVICE_ALIAS, new XdrWriter().domain(dom).string(alias).u32(flags).done(), Math.max(1, deadline - Date.now()));
  }

  /** `virDomainGetXMLDesc(dom, 0)`: the live XML of a running domain. */
  async xmlDesc(name: string, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    const dom = await this.lookup(name, timeoutMs);
    return new XdrReader(await this.call(Proc.DOMAIN_GET_XML_DESC, new XdrWriter().domain(dom).u32(0).done(), Math.max(1, deadline - Date.now()))).string();
  }

  /**
   * Register for the domain's device-removed events; `next()` resolves at the next one (or when
   * the connection breaks), `stop()` deregisters. Registered before it returns, so a removal that
   * follows cannot be missed.
   */
  async watchDeviceRemoved(name: string, timeoutMs: number): Promise<{ next(): Promise<string>; stop(): Promise<void> }> {
    const deadline = Date.now() + timeoutMs;
    const dom = await this.lookup(name, timeoutMs);
    const reply = await this.call(
      Proc.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
      new XdrWriter().i32(EVENT_ID_DEVICE_REMOVED).u32(1).domain(dom).done(),
      Math.max(1, deadline - Date.now()),
    );
    const callbackId = new XdrReader(reply).i32();
    const socket = this.socket;
    let seen = 0;
    let wake: (() => void) | undefined;
    let lastAlias = '';
    this.removedListeners.set(callbackId, (alias) => {
      seen++;
      lastAlias = alias;
      wake?.();
    });
    let consumed = 0;
    return {
      next: () =>
        new Promise<string>((resolve) => {
          const check = () => {
            if (seen > consumed || !this.removedListeners.has(callbackId)) {
              consumed = seen;
              wake = undefined;
              resolve(lastAlias);
              return true;
            }
            return false;
          };
          if (!check()) wake = () => void check();
        }),
      stop: async () => {
        const registered = this.removedListeners.delete(callbackId);
        wake?.();
        // Only on the connection it was made on (a new connection has no such callback).
        if (registered && socket && this.socket === socket) {
          await this.call(Proc.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY, new XdrWriter().i32(callbackId).done(), 5_000).catch(() => undefined);
        }
      },
    };
  }
}

function packet(program: number, procedure: number, type: number, serial: number, status: number, body: Buffer): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(28 + body.length, 0);
  header.writeUInt32BE(program, 4);
  header.writeUInt32BE(REMOTE_VERSION, 8);
  header.writeInt32BE(procedure, 12);
  header.writeInt32BE(type, 16);
  header.writeUInt32BE(serial, 20);
  header.writeInt32BE(status, 24);
  return Buffer.concat([header, body]);
}
