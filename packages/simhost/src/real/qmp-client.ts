import { connect, type Socket } from 'node:net';
import { BerthError } from '@berth/core';

/** How long a QMP exchange may take when the caller names no timeout, in ms. */
export const DEFAULT_QMP_TIMEOUT_MS = 10_000;

/** A QMP command answered with `{"error": {...}}`. */
export class QmpError extends Error {
  override readonly name = 'QmpError';
  constructor(
    /** The command that failed. */
    readonly command: string,
    /** QMP's error class (`GenericError`, `CommandNotFound`, ...). */
    readonly errorClass: string,
    /** QMP's description, as qemu wrote it (may end in a newline). */
    readonly desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc.trimEnd()}`);
  }
}

/** Options of `QmpClient.connect`. */
export interface QmpConnectOptions {
  /** Deadline of the connect, greeting and capabilities negotiation, in ms. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * A QMP client over a Unix socket: JSON lines, the greeting and `qmp_capabilities` handled on
 * connect, one request id per command so replies are matched even when several are in flight,
 * asynchronous events ignored (qemu may send them before the reply they belong to).
 */
export class QmpClient {
  private readonly pending = new Map<string, Pending>();
  private buffer = '';
  private nextId = 1;
  private closedError: Error | undefined;
  private greeting: ((line: Record<string, unknown>) => void) | undefined;

  private constructor(
    private readonly socket: Socket,
    /** Where the client is connected, for messages. */
    readonly path: string,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (error) => this.fail(new Error(`QMP connection to ${path} lost: ${error.message}`, { cause: error })));
    socket.on('close', () => this.fail(new Error(`QMP connection to ${path} closed`)));
  }

  /** Connect to the QMP socket at `path`, read the greeting and leave capabilities negotiation mode. */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS;
    const socket = connect({ path });
    const client = new QmpClient(socket, path);
    const greeted = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new BerthError('TIMEOUT', `no QMP greeting from ${path} within ${timeoutMs} ms`)), timeoutMs);
      const onAbort = (): void => reject(options.signal?.reason ?? new Error('aborted'));
      options.signal?.addEventListener('abort', onAbort, { once: true });
      const done = (): void => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
      };
      client.greeting = (line) => {
        done();
        if ('QMP' in line) resolve();
        else reject(new BerthError('INTERNAL', `${path} did not greet like a QMP server: ${JSON.stringify(line).slice(0, 200)}`));
      };
      socket.once('error', (error) => {
        done();
        reject(error);
      });
      socket.once('close', () => {
        done();
        reject(new Error(`QMP connection to ${path} closed before the greeting`));
      });
    });
    try {
      if (options.signal?.aborted) throw options.signal.reason ?? new Error('aborted');
      await greeted;
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  /** Run one QMP command and return its `return` value; throws `QmpError` on an error reply. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `berth-${this.nextId++}`;
    const timeoutMs = options.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new BerthError('TIMEOUT', `QMP ${command} on ${this.path} got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject, timer });
      const request = { execute: command, ...(args === undefined ? {} : { arguments: args }), id };
      this.socket.write(`${JSON.stringify(request)}\n`);
    });
  }

  /** True once the connection is gone (closed by either side or failed). */
  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** Close the connection; commands still waiting are rejected. Idempotent. */
  close(): void {
    this.fail(new Error(`QMP connection to ${this.path} closed by the client`));
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    for (let nl = this.buffer.indexOf('\n'); nl >= 0; nl = this.buffer.indexOf('\n')) {
      const text = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (text !== '') this.onLine(text);
    }
  }

  private onLine(text: string): void {
    let line: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return;
      line = parsed as Record<string, unknown>;
    } catch {
      return; // not JSON: QMP never sends that; ignore rather than break the stream
    }
    if (this.greeting) {
      const greet = this.greeting;
      this.greeting = undefined;
      greet(line);
      return;
    }
    if ('event' in line) return; // asynchronous events are not replies
    const id = typeof line.id === 'string' ? line.id : undefined;
    // A reply without our id (qemu drops it only for malformed requests) goes to the oldest command.
    const key = id ?? this.pending.keys().next().value;
    if (key === undefined) return;
    const pending = this.pending.get(key);
    if (!pending) return;
    this.pending.delete(key);
    clearTimeout(pending.timer);
    if ('return' in line) {
      pending.resolve(line.return);
      return;
    }
    const error = (line.error ?? {}) as { class?: unknown; desc?: unknown };
    pending.reject(
      new QmpError(pending.command, typeof error.class === 'string' ? error.class : 'Unknown', typeof error.desc === 'string' ? error.desc : JSON.stringify(line)),
    );
  }

  private fail(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      this.pending.delete(id);
      pending.reject(error);
    }
  }
}
