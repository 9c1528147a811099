import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { IscsiadmError } from './iscsiadm-error.js';
import { backoffDelay, withRetry, type RetryEvent } from './with-retry.js';

function iscsiadmFailure(exitCode: number, exitClass: 'retryable' | 'fatal' | 'retryable-within-deadline'): IscsiadmError {
  return new IscsiadmError('COMMAND_FAILED', `rc ${exitCode}`, { op: 'login', iscsiadmExitCode: exitCode, errorName: 'X', exitClass, command: 'iscsiadm' });
}

describe('backoffDelay', () => {
  it('doubles from the base, is capped, and keeps half of it fixed', () => {
    const policy = { attempts: 10, baseDelayMs: 100, maxDelayMs: 1_000 };
    expect([1, 2, 3, 4, 5].map((n) => backoffDelay(n, policy, () => 0))).toEqual([50, 100, 200, 400, 500]);
    expect([1, 2, 3, 4, 5].map((n) => backoffDelay(n, policy, () => 0.999999))).toEqual([
      expect.closeTo(100, 3),
      expect.closeTo(200, 3),
      expect.closeTo(400, 3),
      expect.closeTo(800, 3),
      expect.closeTo(1_000, 3),
    ]);
  });
});

describe('withRetry', () => {
  it('retries a retryable failure up to the bound, waiting longer each time, then throws the last failure', async () => {
    const events: RetryEvent[] = [];
    let calls = 0;
    const failure = iscsiadmFailure(6, 'retryable');
    await expect(
      withRetry(
        async () => {
          calls++;
          throw failure;
        },
        { attempts: 4, baseDelayMs: 2, maxDelayMs: 100, random: () => 0.5, onRetry: (e) => events.push(e) },
      ),
    ).rejects.toBe(failure);
    expect(calls).toBe(4);
    expect(events.map((e) => [e.attempt, e.delayMs])).toEqual([
      [1, 1.5],
      [2, 3],
      [3, 6],
    ]);
  });

  it('returns the first success', async () => {
    let calls = 0;
    const value = await withRetry(
      async (attempt) => {
        calls++;
        if (attempt < 3) throw iscsiadmFailure(8, 'retryable-within-deadline');
        return 'ok';
      },
      { attempts: 5, baseDelayMs: 1, maxDelayMs: 2 },
    );
    expect(value).toBe('ok');
    expect(calls).toBe(3);
  });

  it('never retries a fatal class or an error that is not an iscsiadm failure', async () => {
    for (const failure of [iscsiadmFailure(24, 'fatal'), new Error('boom'), new BerthError('VALIDATION', 'bad')]) {
      let calls = 0;
      await expect(
        withRetry(
          async () => {
            calls++;
            throw failure;
          },
          { attempts: 5, baseDelayMs: 1, maxDelayMs: 1 },
        ),
      ).rejects.toBe(failure);
      expect(calls).toBe(1);
    }
  });

  it('stops waiting and retrying when the signal fires, throwing the failure it was retrying', async () => {
    const controller = new AbortController();
    const failure = iscsiadmFailure(20, 'retryable');
    let calls = 0;
    const started = Date.now();
    await expect(
      withRetry(
        async () => {
          calls++;
          throw failure;
        },
        // A 10-minute backoff that the abort must cut short.
        { attempts: 5, baseDelayMs: 600_000, maxDelayMs: 600_000, signal: controller.signal, onRetry: () => controller.abort() },
      ),
    ).rejects.toBe(failure);
    expect(calls).toBe(1);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('does not start when the signal has already fired', async () => {
    const controller = new AbortController();
    const reason = new BerthError('TIMEOUT', 'deadline');
    controller.abort(reason);
    let calls = 0;
    await expect(
      withRetry(
        async () => {
          calls++;
        },
        { attempts: 3, baseDelayMs: 1, maxDelayMs: 1, signal: controller.signal },
      ),
    ).rejects.toBe(reason);
    expect(calls).toBe(0);
  });

  it('refuses a policy without a first attempt', async () => {
    await expect(withRetry(async () => 1, { attempts: 0, baseDelayMs: 1, maxDelayMs: 1 })).rejects.toMatchObject({ code: 'VALIDATION' });
  });
});
