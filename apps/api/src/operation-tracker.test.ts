import { describe, expect, it } from 'vitest';
import { BerthError, type BerthService, type Operation, type OperationOutcome } from '@berth/core';
import { ApiMetrics } from './metrics.js';
import { OperationTracker } from './operation-tracker.js';

const silent = { warn: () => undefined };

function operation(state: Operation['state']): Operation {
  return { id: 'op-1', kind: 'attach', state } as Operation;
}

/** A service whose `getOperation` answers from `states` in turn (the last one repeats). */
function serviceAnswering(states: Array<Operation['state']>): { service: BerthService; reads: () => number } {
  let reads = 0;
  const service = {
    getOperation: async () => operation(states[Math.min(reads++, states.length - 1)] ?? 'running'),
  } as unknown as BerthService;
  return { service, reads: () => reads };
}

describe('OperationTracker', () => {
  it('a run fenced because another replica took the operation over is followed in the store, not reported as a failure', async () => {
    const { service, reads } = serviceAnswering(['running', 'running', 'succeeded']);
    const tracker = new OperationTracker(service, new ApiMetrics({ defaultMetrics: false }), silent);
    let fence!: (error: unknown) => void;
    const done = new Promise<OperationOutcome>((_resolve, reject) => (fence = reject));
    tracker.track({ operation: operation('running'), done });
    const waited = tracker.waitFor('op-1', 10_000, new AbortController().signal);
    fence(new BerthError('CONFLICT', 'operation op-1 was taken over by another replica', { details: { operationId: 'op-1', takenOver: true } }));
    await waited;
    expect(tracker.settlement('op-1')).toBeUndefined();
    expect(reads()).toBe(3);
    expect(tracker.inFlight()).toBe(0);
  });

  it('any other failure of a run here is its settlement', async () => {
    const { service, reads } = serviceAnswering(['rolled_back']);
    const tracker = new OperationTracker(service, new ApiMetrics({ defaultMetrics: false }), silent);
    const done = Promise.reject(new BerthError('TIMEOUT', 'too slow'));
    tracker.track({ operation: operation('running'), done });
    await tracker.waitFor('op-1', 10_000, new AbortController().signal);
    const settled = tracker.settlement('op-1');
    expect(settled?.ok).toBe(false);
    expect(settled?.ok === false && settled.error.code).toBe('TIMEOUT');
    // Only the metrics' read of how it ended; the waiter did not poll the store.
    expect(reads()).toBe(1);
  });
});
