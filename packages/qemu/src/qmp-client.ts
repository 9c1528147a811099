import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import type { z } from '@berth/core/zod';
import { BerthError } from '@berth/core';
import { zQmpErrorReply, zQmpEvent, zQmpGreeting, zQmpReturn, type QmpEvent, type QmpGreeting } from './qmp-schemas.js';

/** How long a QMP exchange may take when the caller names no timeout, in ms. */
export const DEFAULT_QMP_TIMEOUT_MS = 10_000;

/** Deadline and cancellation of one QMP call. */
export interface QmpCallOptions {
  /** Give up after this many ms (TIMEOUT); default `DEFAULT_QMP_TIMEOUT_MS`. */
  timeoutMs?: number;
  /** Give up when it fires (CANCELLED); the command may still run inside QEMU. */
  signal?: AbortSignal;
}

/** What a failed QMP command said: the command, QMP's error class and its description. */
export interface QmpFailure {
  command: string;
  errorClass: string;
  desc: string;
}

/** Called with every event the server sends. */
export type QmpEventListener = (event: QmpEvent) => void;

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(error: Error): void;
  cleanup(): void;
}

/**
 * The QMP error inside a BerthError thrown by `QmpClient.execute`, or undefined for any other
 * error (a timeout, a lost connection, something else entirely).
 */
export function qmpFailureOf(error: unknown): QmpFailure | undefined {
  if (!BerthError.is(error)) return undefined;
  const qmp = error.details.qmp as Partial<QmpFailure> | undefined;
  if (typeof qmp?.command !== 'string' || typeof qmp.errorClass !== 'string' || typeof qmp.desc !== 'string') return undefined;
  return { command: qmp.command, errorClass: qmp.errorClass, desc: qmp.desc };
}

/** Whether `error` is a QMP error reply whose description matches `pattern`. */
export function isQmpFailure(error: unknown, pattern: RegExp): boolean {
  const failure = qmpFailureOf(error);
  return failure !== undefined && pattern.test(failure.desc);
}

/** Whether `error` says the QMP connection is gone (the QEMU process exited or closed it). */
export function isQmpConnectionLost(error: unknown): boolean {
  return BerthError.is(error) && error.details.qmpClosed === true;
}

/**
 * A client of one QMP server (qemu-storage-daemon, qemu-system-*) over a Unix socket. `connect`
 * reads and validates the greeting and leaves capabilities negotiation (`qmp_capabilities`).
 * Commands carry ids, so several may be in flight and replies are matched to them even when QEMU
 * sends events in between; every command has a deadline and may be cancelled. Events go to
 * listeners, async iterators and `waitForEvent`. Errors are BerthErrors: a QMP error reply is
 * `DRIVER_ERROR` with `details.qmp` (read it with `qmpFailureOf`), a deadline `TIMEOUT`, a lost
 * connection `DRIVER_ERROR` with `details.qmpClosed`. Arguments are never logged or put in errors
 * (they may name secret objects); pass secrets only through `secret` objects fed from files.
 *
 * A QMP monitor serves one client at a time: a second `connect` to the same socket waits (its
 * greeting comes when the first client leaves), so keep connections short or share one.
 */
export class QmpClient {
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Set<QmpEventListener>();
  // Every call still waiting (commands, greeting, events): rejected when the connection goes.
  private readonly waiters = new Set<Pending>();
  private buffer = '';
  private nextId = 1;
  // Ids unique to this connection: a reply QEMU still sends for a command of an earlier connection
  // (it finishes a command whose client left, and answers the next client) never matches one here.
  private readonly idPrefix = `berth-${randomBytes(4).toString('hex')}-`;
  private closedWith: BerthError | undefined;
  private onGreeting: ((line: unknown) => void) | undefined;
  private resolveClosed!: (reason: BerthError) => void;
  /** Resolves with the reason once the connection is gone (closed by either side, or failed). */
  readonly closed: Promise<BerthError>;
  /** The server's greeting (its QEMU version), once connected. */
  greeting: QmpGreeting | undefined;

  private constructor(
    private readonly socket: Socket,
    /** The socket path, for messages. */
    readonly path: string,
  ) {
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (error) => this.fail(lost(path, error.message, error)));
    socket.on('close', () => this.fail(lost(path, 'the server closed it')));
  }

  /**
   * Connect to the QMP socket at `path`, check the greeting and leave negotiation mode. A handshake
   * whose `qmp_capabilities` QEMU answers with a JSON parse error (this client writes whole, valid
   * lines: only qemu 7.2's start-up race, two threads reading one connection, splits them — see
   * the package README) is closed and made again, within the same deadline, up to 3 times.
   */
  static async connect(path: string, options: QmpCallOptions = {}): Promise<QmpClient> {
    const deadline = Date.now() + (options.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS);
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await QmpClient.connectOnce(path, { ...options, timeoutMs: Math.max(1, deadline - Date.now()) });
      } catch (error) {
        const failure = qmpFailureOf(error);
        const garbled = failure?.command === 'qmp_capabilities' && /^JSON parse error/.test(failure.desc);
        if (!garbled || attempt >= 3 || Date.now() >= deadline) throw error;
      }
    }
  }

  private static async connectOnce(path: string, options: QmpCallOptions): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS;
    const client = new QmpClient(connect({ path }), path);
    try {
      const greeting = await client.track<unknown>(
        'greeting',
        (pending) => {
          client.onGreeting = (line) => pending.resolve(line);
        },
        { timeoutMs, ...(options.signal ? { signal: options.signal } : {}) },
      );
      const parsed = zQmpGreeting.safeParse(greeting);
      if (!parsed.success) {
        throw new BerthError('DRIVER_ERROR', `${path} did not greet like a QMP server`, {
          hint: 'check that the socket belongs to a QEMU monitor in control mode (--monitor chardev=...,mode=control)',
          details: { socket: path },
        });
      }
      client.greeting = parsed.data;
      await client.execute('qmp_capabilities', undefined, options);
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  /** Run `command` and resolve with its `return` value (unchecked; prefer `request`). */
  execute(command: string, args?: Record<string, unknown>, options: QmpCallOptions = {}): Promise<unknown> {
    const id = `${this.idPrefix}${this.nextId++}`;
    return this.track(
      command,
      (pending) => {
        this.pending.set(id, pending);
        this.socket.write(`${JSON.stringify({ execute: command, ...(args === undefined ? {} : { arguments: args }), id })}\n`);
      },
      options,
      () => this.pending.delete(id),
    );
  }

  /** Run `command` and resolve with its `return` value checked against `schema` (DRIVER_ERROR when it does not fit). */
  async request<S extends z.ZodType>(command: string, args: Record<string, unknown> | undefined, schema: S, options: QmpCallOptions = {}): Promise<z.output<S>> {
    const value = await this.execute(command, args, options);
    const parsed = schema.safeParse(value);
    if (!parsed.success) {
      throw new BerthError('DRIVER_ERROR', `QMP ${command} on ${this.path} returned an unexpected shape: ${parsed.error.issues[0]?.message ?? 'invalid'}`, {
        details: { command, socket: this.path },
      });
    }
    return parsed.data;
  }

  /**
   * Resolve with the first event named `name` that passes `predicate`, from now on. Call it before
   * the command that causes the event (QEMU may send the event before the reply), and attach a
   * handler before awaiting anything else.
   */
  waitForEvent(name: string, predicate: (event: QmpEvent) => boolean = () => true, options: QmpCallOptions = {}): Promise<QmpEvent> {
    let unsubscribe: (() => void) | undefined;
    return this.track<QmpEvent>(
      `event ${name}`,
      (pending) => {
        unsubscribe = this.onEvent((event) => {
          if (event.event === name && predicate(event)) pending.resolve(event);
        });
      },
      options,
      () => unsubscribe?.(),
    );
  }

  /** Call `listener` with every event from now on; returns the function that stops it. */
  onEvent(listener: QmpEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Every event from now on, until the connection closes (then the iteration ends). */
  async *events(): AsyncGenerator<QmpEvent, void, undefined> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    const stop = this.onEvent((event) => {
      queue.push(event);
      wake?.();
    });
    const closed = this.closed.then(() => wake?.());
    try {
      for (;;) {
        const next = queue.shift();
        if (next) {
          yield next;
          continue;
        }
        if (this.closedWith) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
    } finally {
      stop();
      void closed;
    }
  }

  /** True once the connection is gone. */
  get isClosed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Let the process exit while this connection is idle (commands in flight still hold it). */
  unref(): void {
    this.socket.unref();
  }

  /** Close the connection; calls still waiting are rejected. Idempotent. */
  close(): void {
    this.fail(lost(this.path, 'closed by this client'));
    this.socket.destroy();
  }

  /** Register `start`'s pending call with a deadline and an abort, cleaned up however it ends. */
  private track<T>(what: string, start: (pending: Pending) => void, options: QmpCallOptions, cleanup: () => void = () => undefined): Promise<T> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const timeoutMs = options.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS;
    const signal = options.signal;
    return new Promise<T>((resolve, reject) => {
      if (signal?.aborted) {
        reject(cancelled(what, this.path, signal));
        return;
      }
      const onAbort = (): void => pending.reject(cancelled(what, this.path, signal));
      const timer = setTimeout(
        () =>
          pending.reject(
            new BerthError('TIMEOUT', `QMP ${what} on ${this.path}: no answer within ${timeoutMs} ms`, {
              hint: 'QEMU is busy or hung (a blocking iSCSI login holds its main loop): see its log, and stop it if it stays so',
              details: { command: what, socket: this.path, timeoutMs },
            }),
          ),
        timeoutMs,
      );
      let settled = false;
      const finish = (): boolean => {
        if (settled) return false;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.waiters.delete(pending);
        cleanup();
        return true;
      };
      const pending: Pending = {
        command: what,
        resolve: (value) => {
          if (finish()) resolve(value as T);
        },
        reject: (error) => {
          if (finish()) reject(error);
        },
        cleanup: finish,
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.add(pending);
      start(pending);
    });
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
    let line: unknown;
    try {
      line = JSON.parse(text);
    } catch {
      return; // QMP sends JSON only; a stray line is dropped rather than breaking the stream
    }
    if (this.onGreeting) {
      const greet = this.onGreeting;
      this.onGreeting = undefined;
      greet(line);
      return;
    }
    // A greeting is never a reply: qemu 7.2 sends a second one when its start-up race (see
    // StorageDaemon's settleMonitor) has both of its threads take the same connection.
    if (typeof line === 'object' && line !== null && 'QMP' in line) return;
    const event = zQmpEvent.safeParse(line);
    if (event.success) {
      for (const listener of [...this.listeners]) listener(event.data);
      return;
    }
    // `return` may hold any value, `undefined` aside: only a line that has the key is a success.
    const ok = typeof line === 'object' && line !== null && 'return' in line ? zQmpReturn.safeParse(line) : zQmpReturn.safeParse(undefined);
    const failed = ok.success ? undefined : zQmpErrorReply.safeParse(line);
    const id = ok.success ? ok.data.id : failed?.success ? failed.data.id : undefined;
    // A reply without an id (QEMU drops it only for requests it could not parse) goes to the oldest.
    const key = typeof id === 'string' ? id : this.pending.keys().next().value;
    const pending = key === undefined ? undefined : this.pending.get(key);
    if (!pending) return;
    if (ok.success) {
      pending.resolve(ok.data.return);
      return;
    }
    const error = failed?.success ? failed.data.error : { class: 'Unknown', desc: 'an unreadable reply' };
    pending.reject(
      new BerthError('DRIVER_ERROR', `QMP ${pending.command} failed: ${error.desc.trimEnd()}`, {
        details: { qmp: { command: pending.command, errorClass: error.class, desc: error.desc } satisfies QmpFailure },
      }),
    );
  }

  private fail(error: BerthError): void {
    if (this.closedWith) return;
    this.closedWith = error;
    this.onGreeting = undefined;
    for (const waiter of [...this.waiters]) waiter.reject(error);
    this.pending.clear();
    this.resolveClosed(error);
  }
}

function lost(path: string, why: string, cause?: unknown): BerthError {
  return new BerthError('DRIVER_ERROR', `QMP connection to ${path} lost: ${why}`, {
    hint: 'the QEMU process may have exited: see its log',
    details: { socket: path, qmpClosed: true },
    ...(cause === undefined ? {} : { cause }),
  });
}

function cancelled(what: string, path: string, signal: AbortSignal | undefined): Error {
  const reason: unknown = signal?.reason;
  if (BerthError.is(reason)) return reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') {
    return new BerthError('TIMEOUT', `QMP ${what} on ${path}: the operation passed its deadline`, { cause: reason });
  }
  return new BerthError('CANCELLED', `QMP ${what} on ${path} was cancelled`, { ...(reason instanceof Error ? { cause: reason } : {}) });
}
