import { describe, expect, it } from 'vitest';
import type { Host, OperationStep } from '@berth/core';
import { renderTable } from './table.js';
import { agentStateOf, hostColumns, journalColumns } from './views.js';

const NOW = Date.parse('2026-12-03T10:00:00.000Z');
const base: Host = {
  id: '00000000-0000-4000-8000-000000000001',
  name: 'h1',
  connector: { host: 'h1', initiator: 'iqn.2004-10.com.ubuntu:01:h1' },
  agent: null,
  createdAt: '2026-12-03T09:00:00.000Z',
  updatedAt: '2026-12-03T09:00:00.000Z',
};
const agent = (lastSeenAt: string) => ({ instance: 'i-1', version: '0.1.0', transports: ['loop'], consumers: ['host'], lastSeenAt });

describe('berth host list', () => {
  it('online within offlineAfterMs of the last contact, offline after, - without an agent', () => {
    expect(agentStateOf({ ...base, agent: agent('2026-12-03T09:59:30.000Z') }, 45_000, NOW)).toBe('online');
    expect(agentStateOf({ ...base, agent: agent('2026-12-03T09:59:00.000Z') }, 45_000, NOW)).toBe('offline');
    expect(agentStateOf(base, 45_000, NOW)).toBe('-');
  });

  it('takes the API\'s own state when the answer carries one', () => {
    const fromApi = { ...base, agent: { ...agent('2026-12-03T09:00:00.000Z'), state: 'online' } } as Host;
    expect(agentStateOf(fromApi, 45_000, NOW)).toBe('online');
  });

  it('shows name, agent state, last seen, version and initiator', () => {
    const table = renderTable(hostColumns(45_000), [{ ...base, agent: agent('2026-12-03T09:00:00.000Z') }]);
    const [header, row] = table.split('\n');
    expect(header).toMatch(/^NAME\s+AGENT\s+LAST SEEN\s+VERSION\s+INITIATOR\s*$/i);
    expect(row).toMatch(/^h1\s+offline\s+2026-12-03T09:00:00.000Z\s+0.1.0\s+iqn.2004-10.com.ubuntu:01:h1\s*$/);
  });
});

describe('berth operation show', () => {
  it('shows a forced detach\'s step that was gone past as such, not as a plain done', () => {
    const step = { seq: 3, name: 'unpublish', phase: 'do', state: 'done', durationMs: 20_000, error: null, data: { stillShared: false, forcedPast: "unpublish: host h1's agent did not finish step unpublish" } } as unknown as OperationStep;
    const error = journalColumns.find((c) => c.header === 'error')!;
    expect(error.get(step)).toBe("gone past (--force): unpublish: host h1's agent did not finish step unpublish");
  });
});
