import { constants, promises as fsp, openSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { CommandRunner } from '@berth/host';

/** An open sysfs write entry: a FIFO the kernel model reads, once per write. */
export interface FifoHandle {
  /** Where the FIFO is now (it moves with the directory it was put in). */
  readonly path: string;
  /** Stop reading (the FIFO file itself is removed with its directory). */
  close(): void;
}

const BATCH = 64;

/**
 * Makes the FIFOs that stand for sysfs write entries (`scan`, `delete`, `rescan`). `mkfifo` is
 * a process start, so FIFOs are made in batches in a pool directory and renamed into place; each
 * is opened O_RDWR|O_NONBLOCK first, so writers never block and the reader never sees EOF.
 */
export class FifoPool {
  private free: string[] = [];
  private refill: Promise<void> | undefined;
  private counter = 0;
  private readonly open = new Set<FifoHandle>();

  constructor(
    private readonly poolDir: string,
    private readonly runner: CommandRunner,
  ) {}

  /**
   * Put a FIFO at `target` (its directory must exist) and call `onWrite` with each chunk of text
   * written to it. Writes that arrive together come in one chunk: the caller splits them.
   */
  async place(target: string, onWrite: (text: string) => void): Promise<FifoHandle> {
    const fifo = await this.takeOne();
    const fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    const socket = new net.Socket({ fd, readable: true, writable: false });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => onWrite(chunk));
    socket.on('error', () => socket.destroy());
    await fsp.rename(fifo, target);
    const handle: FifoHandle = {
      path: target,
      close: () => {
        this.open.delete(handle);
        socket.destroy();
      },
    };
    this.open.add(handle);
    return handle;
  }

  /** Make a batch ahead of time, so the first scan does not wait for `mkfifo`. */
  prefill(): void {
    this.refill ??= this.makeBatch().finally(() => (this.refill = undefined));
    this.refill.catch(() => undefined);
  }

  /** Stop reading every FIFO and remove the pool. */
  async close(): Promise<void> {
    for (const handle of [...this.open]) handle.close();
    await this.refill?.catch(() => undefined);
    await fsp.rm(this.poolDir, { recursive: true, force: true });
  }

  private async takeOne(): Promise<string> {
    for (;;) {
      const next = this.free.pop();
      if (next !== undefined) {
        if (this.free.length < BATCH / 4 && !this.refill) this.refill = this.makeBatch().finally(() => (this.refill = undefined));
        return next;
      }
      this.refill ??= this.makeBatch().finally(() => (this.refill = undefined));
      await this.refill;
    }
  }

  private async makeBatch(): Promise<void> {
    await fsp.mkdir(this.poolDir, { recursive: true, mode: 0o700 });
    const names = Array.from({ length: BATCH }, () => path.join(this.poolDir, `fifo-${++this.counter}`));
    // sysfs write entries are --w------- for root; a non-root run must be able to read its own.
    const mode = process.getuid?.() === 0 ? '0200' : '0600';
    await this.runner.run('mkfifo', ['-m', mode, ...names], { timeoutMs: 10_000 });
    this.free.push(...names);
  }
}

/**
 * Split what arrived on a `scan` FIFO into the writes it holds. sysfs sees each write alone;
 * a FIFO joins concurrent ones (`0 0 1` + `0 0 2` → `0 0 10 0 2`). Lines are split first; a
 * line with more than three fields is cut at every second space, taking the channel (`0` or
 * `-`, one character for iSCSI) as the last character of the field that holds the join.
 */
export function splitScanWrites(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(/\s+/).filter((f) => f !== '');
    if (fields.length === 0) continue;
    if (fields.length <= 3) {
      out.push(fields.join(' '));
      continue;
    }
    const writes: string[][] = [[]];
    for (let i = 0; i < fields.length; i++) {
      const current = writes[writes.length - 1]!;
      const field = fields[i]!;
      if (current.length === 2 && i < fields.length - 1 && field.length > 1) {
        current.push(field.slice(0, -1));
        writes.push([field.slice(-1)]);
      } else {
        current.push(field);
      }
    }
    for (const w of writes) out.push(w.join(' '));
  }
  return out;
}
