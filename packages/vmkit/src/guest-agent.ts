import { createConnection, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

/** What one guest command returned. */
export interface GuestCommandResult {
  exitCode: number;
  output: string;
  /** Round trip in ms, measured on the host. */
  durationMs: number;
}

/** A virtio disk as the guest lists it in /sys/block. */
export interface GuestDisk {
  /** `vda`, `vdb`, ... */
  name: string;
  /** What the guest reads in `/sys/block/<name>/serial` (virtio keeps the first 20 bytes). */
  serial: string;
  sizeBytes: number;
  readOnly: boolean;
}

/** virtio-blk passes at most 20 bytes of serial to the guest. */
export const VIRTIO_SERIAL_BYTES = 20;

/** The serial a guest sees for a disk given `serial` (its first 20 bytes). */
export function guestSerial(serial: string): string {
  return serial.slice(0, VIRTIO_SERIAL_BYTES);
}

// Guest polls nap 5 ms between looks at /sys/block.
const POLL_STEP_MS = 5;
const SAFE_TEXT = /^[A-Za-z0-9._:=+-]*$/;
const SAFE_SERIAL = /^[A-Za-z0-9._-]{1,20}$/;

interface Pending {
  id: number;
  lines: string[];
  started: boolean;
  resolve: (result: GuestCommandResult) => void;
  reject: (error: Error) => void;
  startedAt: number;
  timer: NodeJS.Timeout;
}

/**
 * The host's end of the guest agent channel (a virtio-serial port backed by a Unix socket): run a
 * command line in the guest's shell and get its output and exit code. One command at a time, in
 * the order asked; a command sent before the guest is up waits in the socket until the agent
 * reads it, so the first `run` doubles as "wait until booted".
 */
export class GuestAgent {
  private buffer = '';
  private nextId = 1;
  private pending: Pending | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(private readonly socket: Socket, readonly socketPath: string) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('close', () => this.fail(new Error(`guest agent channel ${socketPath} closed`)));
    socket.on('error', (error) => this.fail(error));
  }

  /** Connect to the agent's socket (it exists once QEMU runs; the guest may still be booting). */
  static async connect(socketPath: string): Promise<GuestAgent> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(socketPath);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    });
    return new GuestAgent(socket, socketPath);
  }

  /** Run `command` (one line of busybox sh) in the guest; rejects when `timeoutMs` passes first. */
  run(command: string, timeoutMs = 30_000): Promise<GuestCommandResult> {
    if (command.includes('\n')) return Promise.reject(new Error('a guest command is one line'));
    const next = this.queue.then(() => this.send(command, timeoutMs));
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Run `command` and return its output; rejects when it exits non-zero. */
  async check(command: string, timeoutMs?: number): Promise<string> {
    const result = await this.run(command, timeoutMs);
    if (result.exitCode !== 0) throw new Error(`guest command \`${command}\` exited ${result.exitCode}: ${result.output.trim()}`);
    return result.output;
  }

  /** Every virtio disk the guest has, with its serial. */
  async disks(): Promise<GuestDisk[]> {
    return parseDisks(await this.check('disks'));
  }

  /**
   * Wait in the guest until a disk with this serial appears (its probe finished); resolves with
   * its name. The guest polls /sys/block itself, so the answer comes one channel hop after it.
   */
  async waitForDisk(serial: string, timeoutMs: number): Promise<string> {
    const s = guestSerial(serial);
    if (!SAFE_SERIAL.test(s)) throw new Error(`unexpected serial ${s}`);
    const result = await this.run(`waitdisk ${s} ${Math.ceil(timeoutMs / POLL_STEP_MS)}`, timeoutMs * 4 + 10_000);
    if (result.exitCode !== 0) throw new Error(`the guest saw no disk with serial ${s} within ${timeoutMs} ms; it has: ${JSON.stringify(await this.disks())}`);
    return result.output.trim();
  }

  /** Wait in the guest until no disk has this serial any more. */
  async waitForDiskGone(serial: string, timeoutMs: number): Promise<void> {
    const s = guestSerial(serial);
    if (!SAFE_SERIAL.test(s)) throw new Error(`unexpected serial ${s}`);
    const result = await this.run(`waitgone ${s} ${Math.ceil(timeoutMs / POLL_STEP_MS)}`, timeoutMs * 4 + 10_000);
    if (result.exitCode !== 0) throw new Error(`the guest still has a disk with serial ${s} after ${timeoutMs} ms`);
  }

  /** Write `text` at byte `offset` of the disk with this serial, then fsync it. */
  async writePattern(serial: string, offset: number, text: string): Promise<void> {
    if (!SAFE_TEXT.test(text)) throw new Error('a pattern is letters, digits and ._:=+- only');
    await this.check(`writeat ${guestSerial(serial)} ${Math.trunc(offset)} '${text}'`);
  }

  /** Read `length` bytes at `offset` of the disk with this serial, as the guest sees them. */
  async readPattern(serial: string, offset: number, length: number): Promise<string> {
    return this.check(`readat ${guestSerial(serial)} ${Math.trunc(offset)} ${Math.trunc(length)}`);
  }

  /** `sync` in the guest: everything it wrote is on its disks. */
  async sync(): Promise<void> {
    await this.check('sync');
  }

  /** Close the channel (the guest's agent restarts and waits for the next host). */
  close(): void {
    this.closed = true;
    this.socket.destroy();
  }

  private send(command: string, timeoutMs: number): Promise<GuestCommandResult> {
    if (this.closed) return Promise.reject(new Error(`guest agent channel ${this.socketPath} is closed`));
    const id = this.nextId++;
    return new Promise<GuestCommandResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending?.id !== id) return;
        this.pending = undefined;
        reject(new Error(`guest command \`${command}\` got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending = { id, lines: [], started: false, resolve, reject, startedAt: performance.now(), timer };
      this.socket.write(`${id} ${command}\n`);
    });
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      this.onLine(line);
    }
  }

  private onLine(line: string): void {
    const pending = this.pending;
    if (!pending) return;
    const prefix = `@@${pending.id} `;
    if (line === `${prefix}begin`) {
      pending.started = true;
      return;
    }
    if (line.startsWith(`${prefix}end `)) {
      clearTimeout(pending.timer);
      this.pending = undefined;
      pending.resolve({
        exitCode: Number(line.slice(prefix.length + 4)),
        output: pending.lines.join(''),
        durationMs: performance.now() - pending.startedAt,
      });
      return;
    }
    // Lines of an answer to a command that timed out earlier carry another id: dropped.
    if (pending.started) pending.lines.push(`${line}\n`);
  }

  private fail(error: Error): void {
    this.closed = true;
    const pending = this.pending;
    if (!pending) return;
    clearTimeout(pending.timer);
    this.pending = undefined;
    pending.reject(error);
  }
}

/** Parse the agent's `disks` lines: `name|serial|sectors|ro`. */
export function parseDisks(text: string): GuestDisk[] {
  const disks: GuestDisk[] = [];
  for (const line of text.split('\n')) {
    const [name, serial, sectors, ro] = line.trim().split('|');
    if (!name || serial === undefined || sectors === undefined || ro === undefined) continue;
    disks.push({ name, serial, sizeBytes: Number(sectors) * 512, readOnly: ro === '1' });
  }
  return disks;
}
