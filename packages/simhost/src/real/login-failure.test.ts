import { describe, expect, it } from 'vitest';
import { classifyLoginFailure } from './login-failure.js';
import { readFixture } from '@berth/testkit/fixtures';

function outcomeOf(name: string): { exitCode: number; stdout: string; stderr: string; timedOut: boolean } {
  const f = readFixture(name);
  return { exitCode: f.rc, stdout: f.stdout, stderr: f.stderr, timedOut: false };
}

describe('classifyLoginFailure on recorded libiscsi 1.19 outputs against tgtd 1.0.85', () => {
  it.each([
    // Wrong or missing CHAP: target status 02/01 → iscsiadm 24.
    ['iscsi-ls-chap-wrong-password.txt', 24],
    ['iscsi-ls-noauth-on-chap-target.txt', 24],
    ['iscsi-readcapacity16-chap-wrong-password.txt', 24],
    ['iscsi-readcapacity16-noauth-on-chap-target.txt', 24],
    // Mutual CHAP: libiscsi rejects the target's answer itself (no target status).
    ['iscsi-readcapacity16-mutual-chap-wrong-target-password.txt', 24],
    // Unknown target: status 02/03 → 19.
    ['iscsi-readcapacity16-missing-target.txt', 19],
    ['iscsi-readcapacity16-chap-missing-target.txt', 19],
    ['iscsi-inq-missing-target.txt', 19],
    ['iscsi-inq-vpd83-missing-target.txt', 19],
    // Nothing listening: connection refused (and libiscsi's misleading reconnect text) → 8.
    ['iscsi-ls-unreachable-portal.txt', 8],
    ['iscsi-ls-no-target-daemon.txt', 8],
    ['iscsi-readcapacity16-unreachable-portal.txt', 8],
  ] as const)('%s → iscsiadm exit %i', (name, exitCode) => {
    const outcome = outcomeOf(name);
    expect(outcome.exitCode).toBe(10);
    const failure = classifyLoginFailure(outcome);
    expect(failure?.exitCode).toBe(exitCode);
    expect(failure?.message).toMatch(/\(libiscsi: .+\)$/);
  });

  it.each([
    'iscsi-ls-chap.txt',
    'iscsi-ls-noauth.txt',
    'iscsi-ls-noauth-initiator-name.txt',
    'iscsi-inq-std-noauth.txt',
    'iscsi-inq-vpd83-chap.txt',
    'iscsi-readcapacity16-chap-env.txt',
    'iscsi-readcapacity16-mutual-chap.txt',
    // A missing LUN fails after the login worked: the session is fine.
    'iscsi-readcapacity16-missing-lun.txt',
    'iscsi-inq-missing-lun.txt',
  ])('%s → logged in', (name) => {
    expect(classifyLoginFailure(outcomeOf(name))).toBeUndefined();
  });

  // Observed on this machine (tgtd 1.0.85, libiscsi 1.19) while writing RealTargetAccess, not recorded as fixtures.
  it.each([
    // An initiator the ACL does not name is refused with the same 02/03 as an unknown target.
    ['Login Failed. Failed to log in to target. Status: Target not found(515)\n', 19],
    // Mutual CHAP with a wrong target user name, and a discovery session that has no outgoing account.
    ['Login Failed. Failed to log in to target. Wrong CHAP targetname received: chaptarget\n', 24],
    ['Login failed. Failed to log in to target. It did not return CHAP_N during SECNEG.\n', 24],
    // Status 02/02 (authorization failure) is also 24 for iscsid; other class-2 details are 19.
    ['Login Failed. Failed to log in to target. Status: Authorization failure(514)\n', 24],
    ['Login Failed. Failed to log in to target. Status: Target removed(516)\n', 19],
    // Class 3 (target error) is retried by iscsid and ends as a plain login failure.
    ['Login Failed. Failed to log in to target. Status: Service unavailable(770)\n', 5],
  ] as const)('%j → %i', (stderr, exitCode) => {
    expect(classifyLoginFailure({ exitCode: 10, stdout: '', stderr, timedOut: false })?.exitCode).toBe(exitCode);
  });

  it('treats a tool killed at its deadline as a connection timeout (8), and an unknown failure as 5', () => {
    expect(classifyLoginFailure({ exitCode: -1, stdout: '', stderr: '', timedOut: true })?.exitCode).toBe(8);
    expect(classifyLoginFailure({ exitCode: 10, stdout: '', stderr: 'something new\n', timedOut: false })).toEqual({
      exitCode: 5,
      message: 'encountered iSCSI login failure (libiscsi: something new)',
    });
  });
});
