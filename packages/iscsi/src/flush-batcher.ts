import type { CommandRunner } from '@berth/host';

interface FlushRequest {
  node: string;
  signal: AbortSignal | undefined;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * `blockdev --flushbufs` for many disks at once, as a group commit: a flush asked while another
 * runs waits for it to end, then every waiting disk is flushed by one `blockdev --flushbufs A B …`
 * (blockdev takes several devices). A single detach runs exactly what it did; 32 LUNs detached
 * together start two processes instead of 32. When a batch fails (or is stopped), each disk is
 * flushed again on its own, so every caller gets its own disk's outcome and error.
 */
export class FlushBatcher {
  private running = false;
  private waiting: FlushRequest[] = [];

  constructor(
    private readonly runner: CommandRunner,
    private readonly timeoutMs: number,
  ) {}

  /** Flush `node` (`/dev/sdX`, `/dev/dm-N`); rejects with the runner's error for this disk. */
  flush(node: string, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ node, signal, resolve, reject });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.waiting.length > 0) {
        const batch = this.waiting;
        this.waiting = [];
        await this.runBatch(batch);
      }
    } finally {
      this.running = false;
    }
  }

  private async runBatch(batch: FlushRequest[]): Promise<void> {
    if (batch.length === 1) {
      await this.one(batch[0]!);
      return;
    }
    const nodes = [...new Set(batch.map((r) => r.node))];
    const signals = batch.flatMap((r) => (r.signal === undefined ? [] : [r.signal]));
    try {
      await this.runner.run('blockdev', ['--flushbufs', ...nodes], {
        timeoutMs: this.timeoutMs,
        ...(signals.length === 0 ? {} : { signal: AbortSignal.any(signals) }),
      });
      for (const r of batch) r.resolve();
    } catch {
      // Which disk failed (or whose deadline stopped the batch) is for each caller to learn alone.
      await Promise.all(batch.map((r) => this.one(r)));
    }
  }

  private async one(request: FlushRequest): Promise<void> {
    try {
      await this.runner.run('blockdev', ['--flushbufs', request.node], {
        timeoutMs: this.timeoutMs,
        ...(request.signal === undefined ? {} : { signal: request.signal }),
      });
      request.resolve();
    } catch (error) {
      request.reject(error);
    }
  }
}
