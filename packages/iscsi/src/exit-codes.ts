/** One iscsiadm exit code: its name in open-iscsi's include/iscsi_err.h and its message. */
export interface IscsiErrorInfo {
  name: string;
  message: string;
}

/** open-iscsi 2.1.8's exit codes (include/iscsi_err.h, usr/iscsi_err.c). */
export const ISCSI_ERRORS: Readonly<Record<number, IscsiErrorInfo>> = {
  0: { name: 'SUCCESS', message: '' },
  1: { name: 'ERR', message: 'unknown error' },
  2: { name: 'SESS_NOT_FOUND', message: 'session not found' },
  3: { name: 'NOMEM', message: 'no available memory' },
  4: { name: 'TRANS', message: 'encountered connection failure' },
  5: { name: 'LOGIN', message: 'encountered iSCSI login failure' },
  6: { name: 'IDBM', message: 'encountered iSCSI database failure' },
  7: { name: 'INVAL', message: 'invalid parameter' },
  8: { name: 'TRANS_TIMEOUT', message: 'connection timed out' },
  9: { name: 'INTERNAL', message: 'internal error' },
  10: { name: 'LOGOUT', message: 'encountered iSCSI logout failure' },
  11: { name: 'PDU_TIMEOUT', message: 'iSCSI PDU timed out' },
  12: {
    name: 'TRANS_NOT_FOUND',
    message: 'iSCSI driver not found. Please make sure it is loaded, and retry the operation',
  },
  13: { name: 'ACCESS', message: 'daemon access denied' },
  14: { name: 'TRANS_CAPS', message: 'iSCSI driver does not support requested capability.' },
  15: { name: 'SESS_EXISTS', message: 'session exists' },
  16: { name: 'INVALID_MGMT_REQ', message: 'Unknown request' },
  17: { name: 'ISNS_UNAVAILABLE', message: 'iSNS service not supported' },
  18: { name: 'ISCSID_COMM_ERR', message: 'could not communicate to iscsid' },
  19: { name: 'FATAL_LOGIN', message: 'encountered non-retryable iSCSI login failure' },
  20: { name: 'ISCSID_NOTCONN', message: 'could not connect to iscsid' },
  21: { name: 'NO_OBJS_FOUND', message: 'no objects found' },
  22: { name: 'SYSFS_LOOKUP', message: 'sysfs lookup failure' },
  23: { name: 'HOST_NOT_FOUND', message: 'host not found' },
  24: { name: 'LOGIN_AUTH_FAILED', message: 'iSCSI login failed due to authorization failure' },
  25: { name: 'ISNS_QUERY', message: 'iSNS query failed' },
  26: { name: 'ISNS_REG_FAILED', message: 'iSNS registration failed' },
  27: { name: 'OP_NOT_SUPP', message: 'operation not supported' },
  28: { name: 'BUSY', message: 'device or resource in use' },
  29: { name: 'AGAIN', message: 'operation failed but retry may succeed' },
  30: { name: 'UNKNOWN_DISCOVERY_TYPE', message: 'unknown discovery type' },
  31: { name: 'CHILD_TERMINATED', message: 'child process terminated' },
  32: { name: 'SESSION_NOT_CONNECTED', message: 'target likely not connected' },
  33: { name: 'REQ_TIMEDOUT', message: 'iscsid request timed out' },
};

/** The name of an exit code (`LOGIN_AUTH_FAILED` for 24), `UNKNOWN(<n>)` for one 2.1.8 lacks. */
export function iscsiErrorName(exitCode: number): string {
  return ISCSI_ERRORS[exitCode]?.name ?? `UNKNOWN(${exitCode})`;
}

/** The iscsiadm operations the client runs; the class of an exit code depends on the operation. */
export type IscsiadmOp =
  | 'node-show'
  | 'node-new'
  | 'node-update'
  | 'node-delete'
  | 'node-list'
  | 'session-list'
  | 'login'
  | 'logout'
  | 'discovery'
  | 'discoverydb-new'
  | 'discoverydb-update'
  | 'discoverydb-delete'
  | 'rescan'
  | 'version';

/**
 * What an exit code means for the caller:
 * - `success`: rc 0;
 * - `benign`: the state the operation wanted already holds (15 on login, 21 on logout/delete or
 *   where the caller asked for absence);
 * - `retryable`: retry with backoff (6 database failure, 18/20 iscsid unreachable, 29 again,
 *   command timeouts);
 * - `retryable-within-deadline`: connection failures and protocol timeouts (4, 5, 8, 11, 33):
 *   a retry may succeed, but only while the operation's deadline lasts;
 * - `fatal`: never retried (19 target missing or ACL, 24 authentication, and every other code);
 * - `cancelled`: the command was aborted by its signal.
 */
export type ExitClass = 'success' | 'benign' | 'retryable' | 'retryable-within-deadline' | 'fatal' | 'cancelled';

/** Options of `classify`. */
export interface ClassifyOptions {
  /** 21 ("no objects found") means the wanted absence: listing nothing, showing a missing record. */
  absenceOk?: boolean;
}

// 21 is the answer a removal hopes for: there is nothing left to remove.
const ABSENCE_OPS: ReadonlySet<IscsiadmOp> = new Set(['logout', 'node-delete']);

const RETRYABLE: ReadonlySet<number> = new Set([6, 18, 20, 29]);
const RETRYABLE_WITHIN_DEADLINE: ReadonlySet<number> = new Set([4, 5, 8, 11, 33]);

/** The class of `exitCode` returned by `op` (see `ExitClass`). */
export function classify(op: IscsiadmOp, exitCode: number, options: ClassifyOptions = {}): ExitClass {
  if (exitCode === 0) return 'success';
  if (exitCode === 15 && op === 'login') return 'benign';
  if (exitCode === 21 && (ABSENCE_OPS.has(op) || options.absenceOk === true)) return 'benign';
  if (RETRYABLE.has(exitCode)) return 'retryable';
  if (RETRYABLE_WITHIN_DEADLINE.has(exitCode)) return 'retryable-within-deadline';
  return 'fatal';
}

/** The slice of a command result that `classifyResult` reads. */
export interface ClassifiableResult {
  exitCode: number;
  timedOut: boolean;
  aborted: boolean;
  notFound?: boolean;
}

/** `classify` for a whole command result: a timeout is retryable, an abort is `cancelled`. */
export function classifyResult(op: IscsiadmOp, result: ClassifiableResult, options: ClassifyOptions = {}): ExitClass {
  if (result.aborted) return 'cancelled';
  if (result.timedOut) return 'retryable';
  // No iscsiadm on PATH: retrying cannot install it.
  if (result.notFound === true) return 'fatal';
  return classify(op, result.exitCode, options);
}

/** Whether a class is worth another attempt. */
export function isRetryableClass(exitClass: ExitClass): boolean {
  return exitClass === 'retryable' || exitClass === 'retryable-within-deadline';
}
