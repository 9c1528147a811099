import { describe, expect, it } from 'vitest';
import { parseIscsiadmMessages, summarizeIscsiadmStderr } from './iscsiadm-messages.js';
import { fixtureNames, readFixture } from '@berth/testkit/fixtures';

describe('parseIscsiadmMessages (recorded stderr)', () => {
  it('finds the daemon-reported error of a failed login and keeps other programs\' lines apart', () => {
    const parsed = parseIscsiadmMessages(readFixture('iscsiadm-login.txt').stderr);
    expect(parsed.reported).toEqual({ exitCode: 20, message: 'could not connect to iscsid' });
    expect(parsed.messages).toEqual([
      'can not connect to iSCSI daemon (111)!',
      'Could not login to [iface: default, target: iqn.2026-01.test.berth:vol1, portal: 127.0.0.1,3260].',
      'initiator reported error (20 - could not connect to iscsid)',
      'Could not log into all portals',
    ]);
    expect(parsed.other).toEqual([
      'System has not been booted with systemd as init system (PID 1). Can\'t operate.',
      'Failed to connect to bus: Host is down',
    ]);
  });

  it('reads the one-line answers for absence', () => {
    expect(parseIscsiadmMessages(readFixture('iscsiadm-session-none.txt').stderr).messages).toEqual(['No active sessions.']);
    expect(parseIscsiadmMessages(readFixture('iscsiadm-node-show-missing.txt').stderr).messages).toEqual(['No records found']);
    expect(parseIscsiadmMessages(readFixture('iscsiadm-logout.txt').stderr).messages).toEqual(['No matching sessions found']);
    expect(parseIscsiadmMessages(readFixture('iscsiadm-discoverydb-delete-missing.txt').stderr).messages).toEqual([
      'Discovery record [127.0.0.1,3260] not found.',
    ]);
  });

  it('summarizes the last iscsiadm lines, or the idbm line when iscsiadm printed none of its own', () => {
    expect(summarizeIscsiadmStderr(readFixture('iscsiadm-node-update-bad-key.txt').stderr)).toBe(
      'Cannot modify node.session.no_such_key. Invalid param name. | Could not execute operation on all records: invalid parameter',
    );
    expect(summarizeIscsiadmStderr(readFixture('iscsiadm-discovery-sendtargets.txt').stderr, 1)).toBe(
      'Could not perform SendTargets discovery: iSCSI driver not found. Please make sure it is loaded, and retry the operation',
    );
    expect(summarizeIscsiadmStderr(readFixture('iscsiadm-iface-missing.txt').stderr)).toMatch(/^iSCSI ERROR: Failed to open \/etc\/iscsi\/ifaces\/no-such-iface/);
  });

  it('gives every recorded failing iscsiadm run a non-empty summary, and no successful one a reported error', () => {
    for (const name of fixtureNames('iscsiadm-')) {
      const recorded = readFixture(name);
      const parsed = parseIscsiadmMessages(recorded.stderr);
      if (recorded.rc === 0) expect(parsed.reported, name).toBeUndefined();
      // `-m discoverydb` with no records fails silently (rc 21, nothing printed): the only exception.
      else if (name !== 'iscsiadm-discoverydb-list-empty.txt') expect(summarizeIscsiadmStderr(recorded.stderr), name).not.toBe('');
    }
  });
});
