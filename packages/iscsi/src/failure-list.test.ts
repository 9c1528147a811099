import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { FailureList } from './failure-list.js';

describe('FailureList', () => {
  it('without force throws the first failure at once, naming its step', async () => {
    const list = new FailureList(false);
    await expect(
      list.attempt('flush /dev/sdb', async () => {
        throw new BerthError('COMMAND_FAILED', 'blockdev: exit 1', { hint: 'look at it' });
      }),
    ).rejects.toMatchObject({ code: 'COMMAND_FAILED', message: 'flush /dev/sdb: blockdev: exit 1', hint: 'look at it' });
    expect(list.size).toBe(0);
  });

  it('with force goes on and throws one error listing every failure', async () => {
    const list = new FailureList(true);
    expect(await list.attempt('flush', async () => Promise.reject(new BerthError('COMMAND_FAILED', 'flush failed')))).toBeUndefined();
    expect(await list.attempt('delete', async () => 'deleted')).toBe('deleted');
    await list.attempt('log out', async () => Promise.reject(new Error('iscsiadm gone')));
    expect(list.size).toBe(2);
    let thrown: unknown;
    try {
      list.throwIfAny('disconnecting LUN 1');
    } catch (error) {
      thrown = error;
    }
    expect(BerthError.is(thrown)).toBe(true);
    const error = thrown as BerthError;
    expect(error.code).toBe('COMMAND_FAILED');
    expect(error.message).toBe('disconnecting LUN 1 finished with 2 error(s): flush: flush failed; log out: iscsiadm gone');
    expect((error.details.errors as unknown[]).length).toBe(2);
  });

  it('throws nothing when nothing failed', () => {
    expect(() => new FailureList(true).throwIfAny('x')).not.toThrow();
  });
});
