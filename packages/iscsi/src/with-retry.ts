import { z } from '@berth/core/zod';
import { BerthError, lazySchema, parseWith } from '@berth/core';
import { isRetryableClass } from './exit-codes.js';
import { IscsiadmError } from './iscsiadm-error.js';

/** How often and how patiently to retry. */
export interface RetryPolicy {
  /** Tries in all, the first included (1 = no retry). */
  attempts: number;
  /** The delay before the first retry, in ms; it doubles with each retry. */
  baseDelayMs: number;
  /** No delay is longer than this, in ms. */
  maxDelayMs: number;
}

/** The schema of a `RetryPolicy`. */
export const zRetryPolicy = lazySchema(() => z.object({
  attempts: z.number().int().min(1).max(100),
  baseDelayMs: z.number().min(0).max(600_000),
  maxDelayMs: z.number().min(0).max(600_000),
}));

/** What `withRetry` reports before each retry. */
export interface RetryEvent {
  /** The attempt that just failed (1-based). */
  attempt: number;
  /** How long it waits before the next one. */
  delayMs: number;
  error: unknown;
}

/** Options of `withRetry`. */
export interface WithRetryOptions extends RetryPolicy {
  /** Stop retrying (and stop waiting) when this fires. */
  signal?: AbortSignal;
  /** Whether an error is worth another try (default: an IscsiadmError of a retryable class). */
  isRetryable?: (error: unknown) => boolean;
  /** Called before each wait, for logs and metrics. */
  onRetry?: (event: RetryEvent) => void;
  /** A number in [0, 1) for the jitter (default Math.random). */
  random?: () => number;
}

/** Retry only what an iscsiadm exit class says may pass: never fatal, benign or cancelled runs. */
export function isRetryableIscsiadmError(error: unknown): boolean {
  return IscsiadmError.isIscsiadmError(error) && isRetryableClass(error.exitClass);
}

/**
 * The wait before retry number `retry` (1-based): exponential, capped, with "equal jitter" (half
 * fixed, half random) so that many callers failing together do not retry in step.
 */
export function backoffDelay(retry: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const cap = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (retry - 1));
  return cap / 2 + (random() * cap) / 2;
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason instanceof Error ? signal.reason : new BerthError('CANCELLED', 'the operation was cancelled');
}

/** Resolve after `ms`, or early when `signal` fires. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Run `fn` until it succeeds, it throws something not retryable, `attempts` tries are spent, or
 * `signal` fires. The error thrown is the last attempt's: when the signal stops the retries, the
 * failure that was being retried says more than "cancelled" does.
 */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, options: WithRetryOptions): Promise<T> {
  const policy = parseWith(zRetryPolicy, { attempts: options.attempts, baseDelayMs: options.baseDelayMs, maxDelayMs: options.maxDelayMs }, 'retry policy');
  const isRetryable = options.isRetryable ?? isRetryableIscsiadmError;
  const { signal } = options;
  if (signal?.aborted) throw abortError(signal);
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (error) {
      if (attempt >= policy.attempts || !isRetryable(error) || signal?.aborted) throw error;
      const delayMs = backoffDelay(attempt, policy, options.random);
      options.onRetry?.({ attempt, delayMs, error });
      await pause(delayMs, signal);
      if (signal?.aborted) throw error;
    }
  }
}
