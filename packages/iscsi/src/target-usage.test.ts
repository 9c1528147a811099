import { describe, expect, it } from 'vitest';
import { TargetUsage } from './target-usage.js';

describe('TargetUsage', () => {
  it('counts connects in flight and forgets a target with nothing left', () => {
    const usage = new TargetUsage();
    usage.enter('t');
    usage.enter('t');
    expect(usage.peek('t').inflight).toBe(2);
    usage.leave('t', true);
    usage.leave('t', true);
    expect(usage.peek('t')).toEqual({ inflight: 0 });
    expect(usage.size).toBe(0);
  });

  it('keeps a login pending until a connect of the target succeeds', () => {
    const usage = new TargetUsage();
    usage.enter('t', { createdRecord: true });
    usage.enter('t');
    usage.leave('t', false);
    expect(usage.peek('t').pendingLogin).toEqual({ createdRecord: true });
    usage.leave('t', false);
    // Every connect failed: the session is still this driver's to close.
    expect(usage.peek('t')).toEqual({ inflight: 0, pendingLogin: { createdRecord: true } });
    usage.clearLogin('t');
    expect(usage.size).toBe(0);
    usage.enter('t', { createdRecord: false });
    usage.leave('t', true);
    expect(usage.peek('t').pendingLogin).toBeUndefined();
  });
});
