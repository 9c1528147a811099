import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { HOST_STEP_SCHEMAS, WORK_DONE_CHANNEL, hostChannel, zHostStepName } from './agent-protocol.js';
import { zWorkItemStep } from './work-item.js';

describe('agent protocol', () => {
  it('names channels the store accepts (lower-case, at most 63 characters)', () => {
    const channel = hostChannel(randomUUID());
    expect(channel).toHaveLength(37);
    for (const name of [channel, WORK_DONE_CHANNEL]) expect(name).toMatch(/^[a-z_][a-z0-9_]{0,62}$/);
  });

  it('has a payload and a result schema for every host step, and every step name fits a work item', () => {
    expect(Object.keys(HOST_STEP_SCHEMAS).sort()).toEqual([...zHostStepName.options].sort());
    for (const step of zHostStepName.options) expect(zWorkItemStep.safeParse(step).success).toBe(true);
  });
});
