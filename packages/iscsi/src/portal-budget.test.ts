import { describe, expect, it } from 'vitest';
import { portalBudget } from './portal-budget.js';

describe('portalBudget', () => {
  it('fires at its limit with a TIMEOUT naming the portal and the limit', async () => {
    const budget = portalBudget(new AbortController().signal, '127.0.0.9:3260', { timeoutMs: 20 });
    await new Promise((resolve) => budget.signal.addEventListener('abort', resolve, { once: true }));
    expect(budget.overran()).toBe(true);
    expect(budget.reason(undefined).message).toBe('127.0.0.9:3260 did not answer within 20 ms (portalTimeoutMs)');
    budget.dispose();
  });

  it('a cut ends it early and says so; the operation\'s own abort is not an overrun', () => {
    const cut = new AbortController();
    const budget = portalBudget(new AbortController().signal, '127.0.0.9:3260', { timeoutMs: undefined, cut: cut.signal });
    cut.abort();
    expect(budget.signal.aborted).toBe(true);
    expect(budget.overran()).toBe(true);
    expect(budget.reason(undefined).message).toMatch(/stragglerGraceMs/);
    const parent = new AbortController();
    const other = portalBudget(parent.signal, '127.0.0.9:3260', { timeoutMs: 10_000 });
    parent.abort(new Error('deadline'));
    expect(other.signal.aborted).toBe(true);
    expect(other.overran()).toBe(false);
    other.dispose();
    budget.dispose();
  });
});
