/**
 * How a failed libiscsi login maps to the exit code iscsiadm would give for the same target answer
 * (KERNEL-MODEL §1: iscsid turns login status 02/01 and 02/02 into 24, any other 02/xx into 19, and
 * a transport that never comes up into 8). libiscsi's tools exit 10 for every failure, so the class
 * is read from their message; every message relied on is in a recorded fixture or the unit test.
 */

/** The iscsiadm exit codes a login can end with (target-access.ts `LoginResult`). */
export type LoginExitCode = 8 | 19 | 24 | 4 | 5;

/** A classified login failure. */
export interface LoginFailure {
  exitCode: LoginExitCode;
  /** What went wrong, in iscsiadm's words, followed by libiscsi's own line. */
  message: string;
}

/** The part of a finished libiscsi command the classifier reads. */
export interface LibiscsiOutcome {
  exitCode: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** iscsiadm's text for each code (open-iscsi usr/iscsi_err.c). */
export const ISCSI_ERR_TEXT: Record<LoginExitCode, string> = {
  4: 'encountered connection failure',
  5: 'encountered iSCSI login failure',
  8: 'connection timed out',
  19: 'encountered non-retryable iSCSI login failure',
  24: 'iSCSI login failed due to authorization failure',
};

// Mutual CHAP failures are detected by libiscsi itself, not reported by the target with a status.
const MUTUAL_CHAP_FAILURE = /Invalid CHAP_R response|Wrong CHAP targetname|did not return CHAP_N|CHAP_[A-Z] .*(missing|invalid)/i;
// The transport never came up: refused, unroutable, or libiscsi's misleading reconnect message.
const UNREACHABLE = /connection failed|Connection refused|socket error|No route to host|Network is unreachable|Connection timed out|iscsi_service_reconnect_if_loggedin|Can not reconnect/i;
// A SCSI error after the login worked (LUN 0 missing, not ready): the session itself was fine.
const AFTER_LOGIN = /SENSE KEY:/;

function libiscsiLine(outcome: LibiscsiOutcome): string {
  const lines = `${outcome.stderr}\n${outcome.stdout}`
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('Target:') && !l.startsWith('Lun:'));
  return (lines.find((l) => /fail|error|refused|reconnect/i.test(l)) ?? lines[0] ?? `exit ${outcome.exitCode}`).replace(/^list_luns:\s*/, '');
}

function failure(exitCode: LoginExitCode, outcome: LibiscsiOutcome): LoginFailure {
  return { exitCode, message: `${ISCSI_ERR_TEXT[exitCode]} (libiscsi: ${libiscsiLine(outcome)})` };
}

/**
 * Classify a libiscsi login attempt. Returns undefined when the login itself worked (exit 0, or a
 * SCSI sense error raised after the login, such as a missing LUN 0).
 */
export function classifyLoginFailure(outcome: LibiscsiOutcome): LoginFailure | undefined {
  if (outcome.timedOut) return { exitCode: 8, message: `${ISCSI_ERR_TEXT[8]} (libiscsi gave no answer before the deadline)` };
  const text = `${outcome.stderr}\n${outcome.stdout}`;
  // The target's login status: `Status: Authentication failure(513)`, i.e. class << 8 | detail.
  const status = /Status: [^(\n]*\((\d+)\)/.exec(text);
  if (status) {
    const code = Number(status[1]);
    const cls = code >> 8;
    const detail = code & 0xff;
    if (cls === 2 && (detail === 1 || detail === 2)) return failure(24, outcome);
    if (cls === 2) return failure(19, outcome);
    // Class 3 (target error) is retried by iscsid until its retries run out.
    return failure(5, outcome);
  }
  if (MUTUAL_CHAP_FAILURE.test(text)) return failure(24, outcome);
  if (UNREACHABLE.test(text)) return failure(8, outcome);
  if (outcome.exitCode === 0) return undefined;
  if (AFTER_LOGIN.test(text)) return undefined;
  return failure(5, outcome);
}
