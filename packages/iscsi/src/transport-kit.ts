import type { FaultPoints, Logger } from '@berth/core';
import type { HostServices } from '@berth/host';
import { IscsiadmClient } from './iscsiadm-client.js';
import { LunLifecycle, type LunLifecycleOptions } from './lun-lifecycle.js';
import { messageOf } from './node-session.js';
import type { RetryPolicy } from './with-retry.js';

/** Backoff of retried iscsiadm runs: 250 ms doubling, at most 4 s, with jitter. */
export const ISCSIADM_BACKOFF = { baseDelayMs: 250, maxDelayMs: 4_000 } as const;

/** What an iSCSI transport is built from: its iscsiadm clients and its LUN lifecycle. */
export interface IscsiTransportKit {
  /** The client of the lifecycle: retryable failures retried `loginRetries` times with backoff. */
  iscsiadm: IscsiadmClient;
  /** A client that never retries, for `check()` (it must answer quickly). */
  probe: IscsiadmClient;
  lifecycle: LunLifecycle;
}

/**
 * The iscsiadm clients and the LUN lifecycle of an iSCSI transport, built the same way for the
 * single-path and the multipath transport: retries logged as warnings, no secret in them.
 */
export function iscsiTransportKit(
  host: Pick<HostServices, 'runner' | 'fs' | 'waiter'>,
  logger: Logger,
  options: LunLifecycleOptions & { loginRetries: number },
  faults?: FaultPoints,
): IscsiTransportKit {
  const retry: RetryPolicy = { attempts: options.loginRetries + 1, ...ISCSIADM_BACKOFF };
  const iscsiadm = new IscsiadmClient({
    runner: host.runner,
    timeoutMs: options.commandTimeoutMs,
    retry,
    onRetry: (event) => logger.warn({ op: event.op, attempt: event.attempt, delayMs: Math.round(event.delayMs), error: messageOf(event.error) }, 'iscsiadm failed; retrying'),
  });
  const probe = new IscsiadmClient({ runner: host.runner, timeoutMs: options.commandTimeoutMs, retry: { attempts: 1, ...ISCSIADM_BACKOFF } });
  const lifecycle = new LunLifecycle({ fs: host.fs, waiter: host.waiter, runner: host.runner, iscsiadm, logger, ...(faults === undefined ? {} : { faults }) }, options);
  return { iscsiadm, probe, lifecycle };
}
