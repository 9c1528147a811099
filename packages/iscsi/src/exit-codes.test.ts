import { describe, expect, it } from 'vitest';
import type { CommandResult } from '@berth/host';
import { classify, classifyResult, ISCSI_ERRORS, iscsiErrorName, type ExitClass, type IscsiadmOp } from './exit-codes.js';
import { berthCodeFor, IscsiadmError, toIscsiadmError } from './iscsiadm-error.js';
import { readFixture } from '@berth/testkit/fixtures';

function resultOf(name: string): CommandResult {
  const recorded = readFixture(name);
  return { command: recorded.cmd, exitCode: recorded.rc, stdout: recorded.stdout, stderr: recorded.stderr, durationMs: 1, timedOut: false, aborted: false };
}

describe('classify (issue 3\'s classes)', () => {
  it('takes 15 as benign on login only, 21 on logout and delete, or where absence is asked for', () => {
    expect(classify('login', 15)).toBe('benign');
    expect(classify('node-delete', 15)).toBe('fatal');
    expect(classify('logout', 21)).toBe('benign');
    expect(classify('node-delete', 21)).toBe('benign');
    expect(classify('login', 21)).toBe('fatal');
    expect(classify('node-update', 21)).toBe('fatal');
    expect(classify('node-show', 21)).toBe('fatal');
    expect(classify('node-show', 21, { absenceOk: true })).toBe('benign');
  });

  it('never retries 19 (target missing or ACL) or 24 (authentication)', () => {
    for (const op of ['login', 'discovery'] as IscsiadmOp[]) {
      expect(classify(op, 19)).toBe('fatal');
      expect(classify(op, 24)).toBe('fatal');
    }
  });

  it('retries 6 (database), 20 (no iscsid) and timeouts; 4, 5, 8 within the deadline', () => {
    expect(classify('node-new', 6)).toBe('retryable');
    expect(classify('login', 20)).toBe('retryable');
    for (const code of [4, 5, 8]) expect(classify('login', code)).toBe('retryable-within-deadline');
    const killed = { exitCode: -1, timedOut: true, aborted: false };
    expect(classifyResult('login', killed)).toBe('retryable');
    expect(classifyResult('login', { exitCode: -1, timedOut: false, aborted: true })).toBe('cancelled');
    expect(classifyResult('login', { exitCode: -1, timedOut: false, aborted: false, notFound: true })).toBe('fatal');
    expect(classify('version', 0)).toBe('success');
  });

  it('names every code open-iscsi 2.1.8 has, and an unknown one as such', () => {
    expect(Object.keys(ISCSI_ERRORS)).toHaveLength(34);
    expect(iscsiErrorName(24)).toBe('LOGIN_AUTH_FAILED');
    expect(iscsiErrorName(19)).toBe('FATAL_LOGIN');
    expect(iscsiErrorName(20)).toBe('ISCSID_NOTCONN');
    expect(iscsiErrorName(255)).toBe('UNKNOWN(255)');
  });
});

describe('berthCodeFor (the BerthError a user sees)', () => {
  it('maps the login failures to codes with a next step', () => {
    expect(berthCodeFor(24, 'login')).toMatchObject({ code: 'AUTH_FAILED', hint: expect.stringMatching(/CHAP user name and password/) });
    expect(berthCodeFor(19, 'login')).toMatchObject({ code: 'UNPROCESSABLE', hint: expect.stringMatching(/ACL/) });
    expect(berthCodeFor(8, 'login').code).toBe('TIMEOUT');
    expect(berthCodeFor(4, 'login').code).toBe('DRIVER_ERROR');
    expect(berthCodeFor(5, 'login').code).toBe('DRIVER_ERROR');
    expect(berthCodeFor(20, 'login')).toMatchObject({ code: 'HOST_UNSUPPORTED', hint: expect.stringMatching(/start iscsid/) });
    expect(berthCodeFor(12, 'discovery')).toMatchObject({ code: 'HOST_UNSUPPORTED', hint: expect.stringMatching(/iscsi_tcp/) });
  });
});

/** What each recorded failure (and success) of a command the client runs means. */
const RECORDED: Array<[fixture: string, op: IscsiadmOp, absenceOk: boolean, exitClass: ExitClass, code?: string]> = [
  ['iscsiadm-login.txt', 'login', false, 'retryable', 'HOST_UNSUPPORTED'],
  ['iscsiadm-login-missing-record.txt', 'login', false, 'fatal', 'NOT_FOUND'],
  ['iscsiadm-logout.txt', 'logout', false, 'benign'],
  ['iscsiadm-node-delete.txt', 'node-delete', false, 'success'],
  ['iscsiadm-node-delete-by-target.txt', 'node-delete', false, 'success'],
  ['iscsiadm-node-delete-missing.txt', 'node-delete', false, 'benign'],
  ['iscsiadm-node-show-missing.txt', 'node-show', true, 'benign'],
  ['iscsiadm-node-list-empty.txt', 'node-list', true, 'benign'],
  ['iscsiadm-node-list-empty-after-delete.txt', 'node-list', true, 'benign'],
  ['iscsiadm-session-none.txt', 'session-list', true, 'benign'],
  ['iscsiadm-node-new.txt', 'node-new', false, 'success'],
  ['iscsiadm-node-new-duplicate.txt', 'node-new', false, 'success'],
  ['iscsiadm-node-update-missing.txt', 'node-update', false, 'fatal', 'NOT_FOUND'],
  ['iscsiadm-node-update-bad-key.txt', 'node-update', false, 'fatal', 'DRIVER_ERROR'],
  ['iscsiadm-node-update-bad-value.txt', 'node-update', false, 'fatal', 'DRIVER_ERROR'],
  ['iscsiadm-node-update-readonly-key.txt', 'node-update', false, 'fatal', 'DRIVER_ERROR'],
  ['iscsiadm-discovery-sendtargets.txt', 'discovery', true, 'fatal', 'HOST_UNSUPPORTED'],
  ['iscsiadm-discovery-unreachable-portal.txt', 'discovery', true, 'fatal', 'HOST_UNSUPPORTED'],
  ['iscsiadm-discoverydb-delete.txt', 'discoverydb-delete', false, 'success'],
  ['iscsiadm-discoverydb-delete-unreachable.txt', 'discoverydb-delete', false, 'success'],
  ['iscsiadm-session-sid-missing.txt', 'rescan', false, 'fatal', 'NOT_FOUND'],
];

describe('the recorded iscsiadm runs, classified', () => {
  it.each(RECORDED)('%s (%s)', (fixture, op, absenceOk, exitClass, code) => {
    const result = resultOf(fixture);
    expect(classifyResult(op, result, { absenceOk })).toBe(exitClass);
    if (code === undefined) return;
    const error = toIscsiadmError(result, { op, what: `${op} test`, absenceOk });
    expect(error.code).toBe(code);
    expect(error.iscsiadmExitCode).toBe(result.exitCode);
    expect(error.errorName).toBe(iscsiErrorName(result.exitCode));
    expect(error.exitClass).toBe(exitClass);
    expect(error.details).toMatchObject({ iscsiadmExitCode: result.exitCode, class: exitClass });
    expect(IscsiadmError.isIscsiadmError(error)).toBe(true);
  });

  it('puts the reported reason in the message of the recorded rc 20 login', () => {
    const error = toIscsiadmError(resultOf('iscsiadm-login.txt'), { op: 'login', what: 'log in to vol1' });
    expect(error.message).toMatch(/^log in to vol1: iscsiadm exit 20 \(ISCSID_NOTCONN: could not connect to iscsid\): /);
    expect(error.message).toContain('initiator reported error (20 - could not connect to iscsid)');
    expect(error.hint).toMatch(/start iscsid/);
    expect(error.toJSON().code).toBe('HOST_UNSUPPORTED');
  });

  it('masks secrets that a command echoed on stderr', () => {
    const result = { ...resultOf('iscsiadm-node-update-bad-value.txt'), stderr: "iscsiadm: unknown value format 'hunter2' for parameter name 'x'\n" };
    const error = toIscsiadmError(result, { op: 'node-update', what: 'set x', secrets: ['hunter2'] });
    expect(error.message).not.toContain('hunter2');
    expect(error.message).toContain('***');
  });

  it('reports a timeout, a deadline abort and a missing iscsiadm with their own codes', () => {
    const base = { command: 'iscsiadm -m session', stdout: '', stderr: '', durationMs: 30_000 };
    expect(toIscsiadmError({ ...base, exitCode: -1, timedOut: true, aborted: false }, { op: 'session-list', what: 'list', timeoutMs: 30_000 })).toMatchObject({
      code: 'TIMEOUT',
      errorName: 'TIMEOUT',
      exitClass: 'retryable',
    });
    const controller = new AbortController();
    controller.abort(new (class extends Error {})('x'));
    expect(toIscsiadmError({ ...base, exitCode: -1, timedOut: false, aborted: true }, { op: 'login', what: 'log in', signal: controller.signal }).code).toBe('CANCELLED');
    expect(toIscsiadmError({ ...base, exitCode: -1, timedOut: false, aborted: false, notFound: true }, { op: 'login', what: 'log in' })).toMatchObject({
      code: 'HOST_UNSUPPORTED',
      hint: expect.stringMatching(/apt-get install -y open-iscsi/),
    });
  });
});
