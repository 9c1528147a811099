import { describe, expect, it } from 'vitest';
import { parsePortalTargets } from './portal-list-parser.js';
import { parseSessionList } from './session-list-parser.js';
import { readFixture } from '@berth/testkit/fixtures';

const VOL1 = 'iqn.2026-01.test.berth:vol1';
const VOL2 = 'iqn.2026-01.test.berth:vol2';

describe('parsePortalTargets (recorded `iscsiadm -m node`)', () => {
  it('reads three records; the unset tag 4294967295 reads as -1', () => {
    const recorded = readFixture('iscsiadm-node-list-3.txt');
    expect(recorded.cmd).toBe('iscsiadm -m node');
    expect(parsePortalTargets(recorded.stdout)).toEqual([
      { iqn: VOL1, portal: { host: '127.0.0.1', port: 3260, tpgt: -1 } },
      { iqn: VOL1, portal: { host: '127.0.0.2', port: 3260, tpgt: -1 } },
      { iqn: VOL2, portal: { host: '127.0.0.1', port: 3260, tpgt: 1 } },
    ]);
  });

  it('reads -P 0 like the flat list, and the two-record and after-discovery lists', () => {
    expect(parsePortalTargets(readFixture('iscsiadm-node-list-P0.txt').stdout)).toEqual(
      parsePortalTargets(readFixture('iscsiadm-node-list-3.txt').stdout),
    );
    expect(parsePortalTargets(readFixture('iscsiadm-node-list-2.txt').stdout)).toHaveLength(2);
    expect(parsePortalTargets(readFixture('iscsiadm-node-list-after-discovery.txt').stdout).map((t) => t.portal.host)).toEqual([
      '127.0.0.1',
      '127.0.0.2',
    ]);
  });

  it('finds no target lines in the -P 1 tree, the discovery-record list or an empty answer', () => {
    expect(parsePortalTargets(readFixture('iscsiadm-node-list-P1.txt').stdout)).toEqual([]);
    expect(parsePortalTargets(readFixture('iscsiadm-discovery-list.txt').stdout)).toEqual([]);
    expect(parsePortalTargets(readFixture('iscsiadm-node-list-empty.txt').stdout)).toEqual([]);
  });

  it('reads sendtargets output (KERNEL-MODEL §2.4 shape; this machine cannot run discovery) with IPv6 and stray lines', () => {
    // Synthesized: discovery needs iscsi_tcp, which the recording machine lacks (rc 12 fixtures).
    const stdout = [
      '127.0.0.1:3260,1 iqn.2026-01.test.berth:vol1',
      'iscsiadm: some informational line',
      '[2001:db8::5]:3260,1 iqn.2026-01.test.berth:vol2',
      '',
    ].join('\n');
    expect(parsePortalTargets(stdout)).toEqual([
      { iqn: VOL1, portal: { host: '127.0.0.1', port: 3260, tpgt: 1 } },
      { iqn: VOL2, portal: { host: '2001:db8::5', port: 3260, tpgt: 1 } },
    ]);
  });
});

describe('parseSessionList (`iscsiadm -m session`, KERNEL-MODEL §2.1 shape)', () => {
  it('reads nothing from the recorded "No active sessions." run', () => {
    const recorded = readFixture('iscsiadm-session-none.txt');
    expect(recorded.rc).toBe(21);
    expect(parseSessionList(recorded.stdout)).toEqual([]);
  });

  it('reads sid, portal, tag, IQN and flash; session10 sorts before session2 as iscsiadm prints them', () => {
    // Synthesized: no session can be made on the recording machine (no iscsi_tcp).
    const stdout = [
      'tcp: [10] 127.0.0.1:3260,1 iqn.2026-01.test.berth:vol1 (non-flash)',
      'tcp: [2] [fe80::1]:3260,1 iqn.2026-01.test.berth:vol2 (non-flash)',
      'qla4xxx: [3] 10.0.0.1:3260,2 iqn.2026-01.test.berth:boot (flash)',
      '',
    ].join('\n');
    expect(parseSessionList(stdout)).toEqual([
      { transport: 'tcp', sid: 10, portal: { host: '127.0.0.1', port: 3260, tpgt: 1 }, iqn: VOL1, flash: false },
      { transport: 'tcp', sid: 2, portal: { host: 'fe80::1', port: 3260, tpgt: 1 }, iqn: VOL2, flash: false },
      { transport: 'qla4xxx', sid: 3, portal: { host: '10.0.0.1', port: 3260, tpgt: 2 }, iqn: 'iqn.2026-01.test.berth:boot', flash: true },
    ]);
  });
});
